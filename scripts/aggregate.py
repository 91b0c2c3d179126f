# Tables and learning curves from the run folders that run_all.sh writes.
"""Aggregate the runs of run_all.sh into markdown tables and learning-curve plots.

Reads   <runs>/<suite>/<task>/<variant>/seed<k>/{runs/*/results.json, runs/*/events.out.tfevents.*, exit_code,
        log.txt, skipped}  and  <data-dir>/<task>/info.json  (uniform-random and demonstrator numbers).
Writes  <out>/<suite>.md (one table per suite), <out>/<task>.png (learning curves), <out>/README.md (summary) and
        <out>/summary.json (the tables' numbers, machine-readable).

    python scripts/aggregate.py runs_all/cpu --scale cpu --seeds 1 2 3 --data-dir expert_data --out results/cpu

Every expected (task, variant, seed) appears: seeds that failed, were interrupted, skipped or are missing are listed
by seed in the table's notes, never dropped silently. Means and stds are over seeds (population std, ddof=0).
"""
import argparse
import glob
import json
import math
import os
import sys

import numpy as np

PROCGEN_GAMES = ("bigfish bossfight caveflyer chaser climber coinrun dodgeball fruitbot heist jumper leaper maze "
                 "miner ninja plunder starpilot").split()
SUITES = ("procgen", "dmc", "metaworld")
SUITE_TITLES = {"procgen": "Procgen", "dmc": "DMControl", "metaworld": "Metaworld"}
VARIANTS = ("bcvlr", "no_finetune", "true_action_bc")
VARIANT_LABELS = {"bcvlr": "BCV-LR (ours)", "no_finetune": "no-finetune ablation (ours)",
                  "true_action_bc": "true-action ceiling (ours)"}
DECIMALS = {"procgen": 2, "dmc": 1, "metaworld": 2}
CURVE_BINS = 20  # Procgen training episodes are averaged per 5% of the online budget

# Paper numbers: ../shared/paper/bcvlr-poster.md (NeurIPS 2025 poster). Procgen table at 100k env steps
# (BCV-LR mean, std, "Expert Videos"); Metaworld-50k table (success rate).
PAPER_PROCGEN = {
    "bigfish": (35.9, 2.0, 36.3), "maze": (9.9, 0.1, 10.0), "heist": (9.3, 0.1, 9.7), "coinrun": (8.9, 0.0, 9.9),
    "plunder": (4.4, 0.2, 11.5), "dodgeball": (12.4, 0.8, 13.5), "jumper": (7.5, 0.3, 8.5),
    "climber": (9.4, 0.6, 10.2), "fruitbot": (27.5, 1.5, 29.9), "starpilot": (54.8, 1.4, 67.0),
    "ninja": (7.2, 0.3, 9.5), "miner": (11.6, 0.2, 11.9), "caveflyer": (4.6, 0.2, 9.2), "leaper": (4.0, 0.2, 7.4),
    "chaser": (3.1, 0.5, 10.0), "bossfight": (10.3, 0.3, 11.6),
}
PAPER_METAWORLD = {
    "faucet-open-v3": (0.82, 0.20, 1.00), "reach-v3": (0.63, 0.25, 1.00), "drawer-open-v3": (0.92, 0.12, 1.00),
    "faucet-close-v3": (0.98, 0.04, 1.00),
}
# The poster has no DMC table. Expert-video returns from shared/spec/algorithm.md section 7.2 (the paper's text).
PAPER_DMC_EXPERT = {"reacher_hard": 967.0, "finger_spin": 981.0}
# Not in the poster, only in the authors' rebuttal (shared/spec/algorithm.md section 8.2): mentioned in a note only.
REBUTTAL_DMC_BCVLR = {"reacher_hard": "900 ± 31", "finger_spin": "942 ± 48", "point_mass_easy": "800 ± 25"}
PAPER_NOTE = "Paper columns: the BCV-LR NeurIPS 2025 poster (`shared/paper/bcvlr-poster.md`), not measured here."


def suite_of(task):
    if task in PROCGEN_GAMES:
        return "procgen"
    return "metaworld" if task.endswith("-v3") else "dmc"


def metric_of(suite):
    return "success_rate" if suite == "metaworld" else "episodic_return_mean"


def metric_label(suite):
    return "success rate" if suite == "metaworld" else "return"


def finite(x):
    return x is not None and isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x, decimals):
    return f"{x:.{decimals}f}" if finite(x) else "—"


def fmt_pm(mean, std, decimals):
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------
# run folders
# ---------------------------------------------------------------------------------------------------------------
def pick_results(seed_dir):
    """(results dict, its run folder) of a variant folder: the newest results.json with "interrupted": false,
    else the newest one at all; (None, None) if there is none."""
    found = []
    for path in glob.glob(os.path.join(seed_dir, "runs", "*", "results.json")):
        res = read_json(path)
        if isinstance(res, dict):
            found.append((not res.get("interrupted", False), os.path.getmtime(path), path, res))
    if not found:
        return None, None
    found.sort(key=lambda x: (x[0], x[1], x[2]))
    _, _, path, res = found[-1]
    return res, os.path.dirname(path)


def run_status(seed_dir, suite):
    """One variant of one seed: dict(status, value, results, run_dir, reason). status is one of
    ok | failed | interrupted | skipped | incomplete | missing; value is the final metric for ok runs."""
    out = dict(status="missing", value=None, results=None, run_dir=None, reason="missing")
    if not os.path.isdir(seed_dir):
        return out
    res, run_dir = pick_results(seed_dir)
    out.update(results=res, run_dir=run_dir)
    exit_code = None
    if os.path.isfile(os.path.join(seed_dir, "exit_code")):
        with open(os.path.join(seed_dir, "exit_code")) as f:
            text = f.read().strip()
        exit_code = int(text) if text.lstrip("-").isdigit() else text
    if os.path.isfile(os.path.join(seed_dir, "skipped")):
        with open(os.path.join(seed_dir, "skipped")) as f:
            why = f.read().strip()
        out.update(status="skipped", reason=f"skipped ({why})" if why else "skipped")
    elif exit_code not in (None, 0):
        out.update(status="failed", reason=f"failed (exit {exit_code})")
    elif res is None:
        if exit_code == 0:
            out.update(status="failed", reason="failed (exit 0 but no results.json)")
        elif os.path.isfile(os.path.join(seed_dir, "log.txt")):
            out.update(status="incomplete", reason="incomplete (log.txt but no exit_code: still running or killed)")
    elif res.get("interrupted", False):
        out.update(status="interrupted", reason="interrupted")
    elif not finite(res.get(metric_of(suite))):
        out.update(status="failed", reason=f"failed (results.json has no {metric_of(suite)})")
    else:
        out.update(status="ok", value=float(res[metric_of(suite)]), reason="ok")
    return out


def collect(runs_dir, tasks, seeds):
    """{task: {variant: {seed: run_status}}}"""
    table = {}
    for task in tasks:
        suite = suite_of(task)
        table[task] = {
            v: {s: run_status(os.path.join(runs_dir, suite, task, v, f"seed{s}"), suite) for s in seeds} for v in VARIANTS
        }
    return table


def discover(runs_dir):
    """Tasks and seeds present under runs_dir (used when --tasks / --seeds are not given)."""
    tasks, seeds = set(), set()
    for suite in SUITES:
        for task_dir in glob.glob(os.path.join(runs_dir, suite, "*")):
            if os.path.isdir(task_dir):
                tasks.add(os.path.basename(task_dir))
                for seed_dir in glob.glob(os.path.join(task_dir, "*", "seed*")):
                    name = os.path.basename(seed_dir)[4:]
                    if name.isdigit():
                        seeds.add(int(name))
    return sorted(tasks), sorted(seeds)


def load_info(data_dir, task):
    info = read_json(os.path.join(data_dir, task, "info.json")) if data_dir else None
    return info if isinstance(info, dict) else {}


def random_and_demo(suite, info):
    if suite == "metaworld":
        return info.get("random_success_rate"), info.get("success_rate")
    return info.get("random_return_mean"), info.get("ep_return_mean")


def paper_numbers(suite, task):
    """(paper BCV-LR mean, its std, paper expert-videos value); None where the paper has no number"""
    if suite == "procgen" and task in PAPER_PROCGEN:
        return PAPER_PROCGEN[task]
    if suite == "metaworld" and task in PAPER_METAWORLD:
        return PAPER_METAWORLD[task]
    return None, None, PAPER_DMC_EXPERT.get(task) if suite == "dmc" else None


# ---------------------------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------------------------
def summarize(runs):
    """runs: {seed: run_status} -> (values of ok seeds, problem strings by seed)"""
    values = [runs[s]["value"] for s in sorted(runs) if runs[s]["status"] == "ok"]
    problems = [f"seed {s}: {runs[s]['reason']}" for s in sorted(runs) if runs[s]["status"] != "ok"]
    return values, problems


def share_of(x, low, high):
    """(x - low) / (high - low), or None where a number is missing or high == low."""
    if not (finite(x) and finite(low) and finite(high)) or high == low:
        return None
    return (x - low) / (high - low)


def summary_json(tasks, table, infos):
    """The tables' numbers: {suite: {task: {random, demonstrator, variants: {v: {mean, std, n, not_ok}}}}}."""
    out = {}
    for task in tasks:
        suite = suite_of(task)
        rand, demo = random_and_demo(suite, infos[task])
        variants = {}
        for v in VARIANTS:
            values, problems = summarize(table[task][v])
            variants[v] = {"mean": float(np.mean(values)) if values else None,
                           "std": float(np.std(values)) if values else None, "n": len(values), "not_ok": problems}
        out.setdefault(suite, {})[task] = {"random": rand if finite(rand) else None,
                                           "demonstrator": demo if finite(demo) else None, "variants": variants}
    return out


def suite_table(suite, tasks, table, infos, seeds, runs_dir):
    d = DECIMALS[suite]
    what = "final-evaluation success rate" if suite == "metaworld" else "final-evaluation episodic return"
    lines = [
        f"# {SUITE_TITLES[suite]}: {what}",
        "",
        f"Mean ± std over seeds {', '.join(map(str, seeds))} (population std); `n=ok/expected` seeds. "
        "\"ours\" = measured by this repository; \"measured\" = the uniform-random policy and the demonstrator "
        f"videos as recorded in the expert-data `info.json`. {PAPER_NOTE}",
        "",
    ]
    unit = ", success rate" if suite == "metaworld" else ""
    header = ["task", f"BCV-LR (ours{unit})", f"no-finetune ablation (ours{unit})", f"true-action ceiling (ours{unit})",
              "uniform random (measured)", "demonstrator videos (measured)", "ceiling normalised (ours)",
              "BCV-LR share of the ceiling (ours)", "BCV-LR video-normalised (ours)", "paper BCV-LR",
              "paper expert videos"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    notes, col_values = [], {k: [] for k in VARIANTS + ("ceiling_norm", "share", "norm", "paper", "paper_expert")}
    for task in tasks:
        rand, demo = random_and_demo(suite, infos[task])
        cells, means = [task], {}
        for v in VARIANTS:
            values, problems = summarize(table[task][v])
            n = f"n={len(values)}/{len(seeds)}"
            if values:
                mean, std = float(np.mean(values)), float(np.std(values))
                cell = f"{fmt_pm(mean, std, d)} ({n})"
                col_values[v].append(mean)
                means[v] = mean
            else:
                cell = f"— ({n})"
                col_values[v].append(None)
            if problems:
                notes.append(f"{task}, {VARIANT_LABELS[v]}: " + "; ".join(problems)
                             + f" (folder `{os.path.join(suite, task, v)}/seed<k>/`)")
                cell += f" [note {len(notes)}]"
            cells.append(cell)
        bcvlr_mean, ceiling = means.get("bcvlr"), means.get("true_action_bc")
        norm = bcvlr_mean / demo if (bcvlr_mean is not None and finite(demo) and demo != 0) else None
        ceiling_norm, share = share_of(ceiling, rand, demo), share_of(bcvlr_mean, rand, ceiling)
        for key, x in (("norm", norm), ("ceiling_norm", ceiling_norm), ("share", share)):
            col_values[key].append(x)
        paper_mean, paper_std, paper_expert = paper_numbers(suite, task)
        paper_decimals = 2 if suite == "metaworld" else 1
        paper_bcvlr = fmt_pm(paper_mean, paper_std, paper_decimals) if paper_mean is not None else "—"
        col_values["paper"].append(paper_mean)
        col_values["paper_expert"].append(paper_expert)
        cells += [fmt(rand, d), fmt(demo, d), fmt(ceiling_norm, 2), fmt(share, 2), fmt(norm, 2), paper_bcvlr,
                  fmt(paper_expert, paper_decimals)]
        lines.append("| " + " | ".join(cells) + " |")
    if len(tasks) > 1:  # a mean row only for the columns with a number for every task of this table
        def mean_of(key, decimals):
            vals = col_values[key]
            return f"**{np.mean(vals):.{decimals}f}**" if all(x is not None for x in vals) else "—"
        lines.append(f"| **mean of these {len(tasks)} tasks** | {mean_of('bcvlr', d)} | {mean_of('no_finetune', d)} | "
                     f"{mean_of('true_action_bc', d)} | | | {mean_of('ceiling_norm', 2)} | {mean_of('share', 2)} | "
                     f"{mean_of('norm', 2)} | {mean_of('paper', d)} | {mean_of('paper_expert', d)} |")
    lines.append("")
    lines.append("\"—\" = no number (no successful seed, no `info.json` field, or not in the paper's poster). "
                 "The true-action ceiling is behaviour cloning of the same pi and d on the videos' true actions "
                 "(`--true-action-bc`, same frozen f as `bcvlr`): a control, not BCV-LR. Ceiling normalised = (ceiling "
                 "- random) / (demonstrator - random); BCV-LR share of the ceiling = (BCV-LR - random) / (ceiling - "
                 "random), both from the means. Video-normalised = BCV-LR (ours) mean / demonstrator videos (measured)"
                 + (", all success rates." if suite == "metaworld" else "."))
    if suite == "dmc":
        lines.append("")
        lines.append("The poster has no DMControl table, so \"paper BCV-LR\" is empty; the paper's expert-video returns of "
                     "reacher_hard (967) and finger_spin (981) are from the paper's text (`shared/spec/algorithm.md` "
                     "section 7.2). The authors' rebuttal (section 8.2 there, not the poster) reports BCV-LR "
                     + ", ".join(f"{k} {v}" for k, v in sorted(REBUTTAL_DMC_BCVLR.items())) + " at 100k frames.")
    if suite == "procgen":
        lines.append("")
        lines.append("The paper's expert videos are LAPO's PPO dataset; the measured demonstrator here is whatever "
                     "made the videos in the data folder (see `demonstrator` in its `info.json`).")
    if notes:
        lines += ["", "## Notes: seeds not in the means", ""]
        lines += [f"{i}. {note}" for i, note in enumerate(notes, 1)]
    lines += ["", "## Learning curves", ""]
    lines += [f"![{task}]({task}.png)" for task in tasks]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# learning curves
# ---------------------------------------------------------------------------------------------------------------
def read_scalars(run_dir, tag):
    """[(step, value)] of one TensorBoard tag in a run folder (all event files), sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return []
    return sorted((e.step, e.value) for e in acc.Scalars(tag))


def seed_curve(suite, run_dir, budget):
    """(x, y) of one seed: Procgen training episodes averaged per 5% of the budget; continuous eval points."""
    if suite == "procgen":
        pts = read_scalars(run_dir, "charts/episodic_return")
        if not pts or not budget:
            return None
        width = budget / CURVE_BINS
        bins = {}
        for step, value in pts:
            bins.setdefault(min(int(step // width), CURVE_BINS - 1), []).append(value)
        keys = sorted(bins)
        return np.array([(k + 1) * width for k in keys]), np.array([np.mean(bins[k]) for k in keys])
    pts = read_scalars(run_dir, "eval/success_rate" if suite == "metaworld" else "eval/episodic_return")
    if not pts:
        return None
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts])


def plot_task(path, suite, task, runs, rand, demo, paper):
    """runs: {variant: {seed: run_status}}; only the seeds counted in the table (status ok) are drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {"bcvlr": "tab:blue", "no_finetune": "tab:orange", "true_action_bc": "tab:purple"}
    for v in VARIANTS:
        ceiling = [r["value"] for r in runs[v].values() if r["status"] == "ok"] if v == "true_action_bc" else []
        if ceiling:  # a control with no online stage: one line at its mean final evaluation
            ax.axhline(np.mean(ceiling), color=colors[v], linestyle="-.",
                       label=f"true-action ceiling (ours), {len(ceiling)} seed(s)")
        if v == "true_action_bc":
            continue
        curves, finals = [], []
        for s in sorted(runs[v]):
            r = runs[v][s]
            if r["status"] != "ok":
                continue
            res = r["results"]
            budget = (res.get("args") or {}).get("total_timesteps") or res.get("env_steps")
            c = seed_curve(suite, r["run_dir"], budget)
            if c is not None:
                curves.append(c)
            finals.append((res.get("env_steps") or 0, r["value"]))
        short = VARIANT_LABELS[v].split(" (")[0]
        if curves:
            xs = np.array(sorted({float(x) for c, _ in curves for x in c}))
            per_x = [[y[np.flatnonzero(np.isclose(x, xv))[0]] for x, y in curves if np.isclose(x, xv).any()] for xv in xs]
            mean = np.array([np.mean(p) for p in per_x])
            std = np.array([np.std(p) for p in per_x])
            ax.plot(xs, mean, color=colors[v], label=f"{short} (ours), mean ± std of {len(curves)} seed(s)")
            ax.fill_between(xs, mean - std, mean + std, color=colors[v], alpha=0.2, linewidth=0)
        if finals:
            x = float(np.mean([f[0] for f in finals]))
            vals = [f[1] for f in finals]
            ax.errorbar([x], [np.mean(vals)], yerr=[np.std(vals)], fmt="*", markersize=12, capsize=4, color=colors[v],
                        label=f"{short} (ours), final evaluation")
    if finite(rand):
        ax.axhline(rand, color="gray", linestyle="--", label="uniform random (measured)")
    if finite(demo):
        ax.axhline(demo, color="green", linestyle="--", label="demonstrator videos (measured)")
    if finite(paper):
        ax.axhline(paper, color="black", linestyle=":", label="paper BCV-LR (poster)")
    ax.set_xlabel("env steps" + (" (frames)" if suite == "dmc" else ""))
    if suite == "procgen":
        ax.set_ylabel("training episodic return (mean per 5% of budget)")
    else:
        ax.set_ylabel("eval success rate" if suite == "metaworld" else "eval episodic return")
    ax.set_title(f"{task} ({SUITE_TITLES[suite]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------------------------
def command_of(seed_dir, repo, runs_dir, data_dir):
    """cmd.txt of a run, with the absolute folders written as $OUT, $DATA_DIR and paths relative to the repo."""
    path = os.path.join(seed_dir, "cmd.txt")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        cmd = f.read().strip()
    for folder, name in ((os.path.abspath(runs_dir), "$OUT"), (os.path.abspath(data_dir), "$DATA_DIR"), (repo, "")):
        cmd = cmd.replace(folder + os.sep, f"{name}/" if name else "").replace(folder + " ", f"{name} ")
    return cmd


def summary(args, tasks, seeds, table, runs_dir, repo):
    suites = [s for s in SUITES if any(suite_of(t) == s for t in tasks)]
    counts = {}
    for task in tasks:
        for v in VARIANTS:
            for s in seeds:
                st = table[task][v][s]["status"]
                counts[st] = counts.get(st, 0) + 1
    total = len(tasks) * len(VARIANTS) * len(seeds)
    lines = [
        f"# BCV-LR results, scale `{args.scale}`",
        "",
        f"Made by `scripts/aggregate.py` from the run folders of `run_all.sh {args.scale}`. Seeds: "
        f"{', '.join(map(str, seeds))}. Variants: `bcvlr` (the full method), `no_finetune` "
        "(`--no-finetune-latent-actions`) and `true_action_bc` (`--true-action-bc`, the ceiling: pi and d cloned on the "
        "videos' true actions, a control that is not BCV-LR); the last two load `bcvlr`'s `offline.pt` (the same f).",
        "",
        f"Runs: {total} expected; " + ", ".join(f"{counts[k]} {k}" for k in sorted(counts)) + ".",
        "",
        "## Tables",
        "",
    ]
    lines += [f"- [{SUITE_TITLES[s]}]({s}.md)" for s in suites]
    lines += ["", "## Learning curves", ""]
    lines += [f"- [{t}]({t}.png)" for t in tasks]
    lines += ["", "## Commands (the first seed, as run; $OUT and $DATA_DIR as given to run_all.sh)", ""]
    for s in suites:
        for v in VARIANTS:
            first = next((t for t in tasks if suite_of(t) == s), None)
            cmd = command_of(os.path.join(runs_dir, s, first, v, f"seed{seeds[0]}"), repo, runs_dir, args.data_dir)
            if cmd:
                lines += [f"{SUITE_TITLES[s]}, `{v}` ({first}, seed {seeds[0]}):", "", "```bash", cmd, "```", ""]
    lines += ["## Wall-clock per run (seconds, from results.json `wall_clock_s`)", "",
              "| suite | task | variant | seed | status | ssl | lam | bc | online | eval | total | env steps |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for task in tasks:
        for v in VARIANTS:
            for s in seeds:
                r = table[task][v][s]
                res = r["results"] or {}
                wall = res.get("wall_clock_s") or {}
                parts = [wall.get(k) for k in ("ssl", "lam", "bc", "online", "eval")]
                tot = sum(p for p in parts if finite(p)) if any(finite(p) for p in parts) else None
                steps = res.get("env_steps")
                status = r["status"] if r["status"] in ("ok", "missing") else r["reason"]
                lines.append(f"| {suite_of(task)} | {task} | {v} | {s} | {status} | "
                             + " | ".join(fmt(p, 0) for p in parts) + f" | {fmt(tot, 0)} | "
                             + (str(steps) if steps is not None else "—") + " |")
    lines += ["", "`no_finetune` and `true_action_bc` load the offline stages from `bcvlr`'s `offline.pt`, so their "
              "ssl/lam times are ~0 (the ceiling's cloning time is under bc).",
              "", PAPER_NOTE]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", help="the OUT folder of run_all.sh (e.g. runs_all/cpu)")
    parser.add_argument("--scale", default="cpu", help="scale name shown in the summary (cpu or full)")
    parser.add_argument("--seeds", type=int, nargs="+", help="expected seeds (default: the seed folders found)")
    parser.add_argument("--tasks", nargs="+", help="expected tasks (default: the task folders found)")
    parser.add_argument("--data-dir", default="expert_data", help="expert videos with <task>/info.json")
    parser.add_argument("--out", help="output folder (default: results/<scale>)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs_dir):
        raise SystemExit(f"error: run folder {args.runs_dir} does not exist; make it with `bash run_all.sh {args.scale}` "
                         "(or pass the OUT folder that run_all.sh used)")
    found_tasks, found_seeds = discover(args.runs_dir)
    tasks = sorted(set(args.tasks) if args.tasks else found_tasks, key=lambda t: (SUITES.index(suite_of(t)), t))
    seeds = sorted(set(args.seeds)) if args.seeds else found_seeds
    if not tasks:
        raise SystemExit(f"error: no task folders under {args.runs_dir} (expected <suite>/<task>/<variant>/seed<k>/)")
    if not seeds:
        raise SystemExit(f"error: no seed folders under {args.runs_dir}; pass --seeds")
    out = args.out or os.path.join("results", args.scale)
    os.makedirs(out, exist_ok=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    table = collect(args.runs_dir, tasks, seeds)
    infos = {t: load_info(args.data_dir, t) for t in tasks}
    written = []
    for suite in SUITES:
        suite_tasks = sorted(t for t in tasks if suite_of(t) == suite)
        if not suite_tasks:
            continue
        path = os.path.join(out, f"{suite}.md")
        with open(path, "w") as f:
            f.write(suite_table(suite, suite_tasks, table, infos, seeds, args.runs_dir))
        written.append(path)
        for task in suite_tasks if not args.no_plots else ():
            rand, demo = random_and_demo(suite, infos[task])
            png = os.path.join(out, f"{task}.png")
            plot_task(png, suite, task, table[task], rand, demo, paper_numbers(suite, task)[0])
            written.append(png)
    path = os.path.join(out, "README.md")
    with open(path, "w") as f:
        f.write(summary(args, tasks, seeds, table, args.runs_dir, repo))
    written.append(path)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary_json(tasks, table, infos), f, indent=2)
    not_ok = sum(r["status"] != "ok" for t in tasks for v in VARIANTS for r in table[t][v].values())
    print(f"wrote {len(written)} files to {out}: README.md, " + ", ".join(sorted(os.path.basename(p) for p in written
                                                                             if p.endswith(".md") and "README" not in p)))
    if not_ok:
        print(f"{not_ok} of {len(tasks) * len(VARIANTS) * len(seeds)} runs are not ok (listed in the tables' notes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
