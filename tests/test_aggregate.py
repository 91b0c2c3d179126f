"""Tests of scripts/aggregate.py and run_all.sh on fake run folders (no training; a few seconds)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import aggregate  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(seed_dir, env_id, seed, value, suite, exit_code=0, interrupted=False, curve=None, results=True):
    """One variant of one seed, in run_all.sh's layout: seed_dir/{cmd.txt, log.txt, exit_code, runs/<run>/...}."""
    run_dir = os.path.join(seed_dir, "runs", f"{env_id}__bcvlr__{seed}__1700000000")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(seed_dir, "cmd.txt"), "w") as f:
        f.write(f"cd {seed_dir} && python {ROOT}/bcvlr.py --env-id {env_id} --seed {seed}\n")
    with open(os.path.join(seed_dir, "log.txt"), "w") as f:
        f.write("Traceback (most recent call last):\nRuntimeError: boom\n" if exit_code else "ok\n")
    if exit_code is not None:
        with open(os.path.join(seed_dir, "exit_code"), "w") as f:
            f.write(f"{exit_code}\n")
    if not results:
        return
    budget = 50_000 if suite != "dmc" else 100_000
    res = {"env_id": env_id, "seed": seed, "episodic_return_mean": value if suite != "metaworld" else 1000.0 * value,
           "episodic_return_std": 1.0, "eval_episodes": 8, "video_return": None, "video_normalized_score": None,
           "env_steps": budget, "wall_clock_s": {"ssl": 10.0, "lam": 20.0, "bc": 5.0, "online": 100.0, "eval": 3.0},
           "interrupted": interrupted, "args": {"total_timesteps": budget, "env_id": env_id, "seed": seed}}
    if suite == "metaworld":
        res["success_rate"] = value
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    if curve is not None:
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(run_dir)
        for step, y in curve:
            if suite == "procgen":
                w.add_scalar("charts/episodic_return", y, step)
            else:
                w.add_scalar("eval/episodic_return", y if suite == "dmc" else 1000 * y, step)
                if suite == "metaworld":
                    w.add_scalar("eval/success_rate", y, step)
        w.close()


def write_info(data_dir, env_id, **fields):
    os.makedirs(os.path.join(data_dir, env_id), exist_ok=True)
    with open(os.path.join(data_dir, env_id, "info.json"), "w") as f:
        json.dump({"env_id": env_id, **fields}, f)


BIGFISH = {"bcvlr": [30.0, 34.5, 36.0], "no_finetune": [20.0, 22.0, 27.5], "true_action_bc": [33.0, 34.0, 35.0]}
REACH = [0.6, 0.9, 0.3]
REACH_CEILING = [0.9, 0.8, 1.0]
REACHER = [900.0, 850.0]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agg")
    runs, data, out = str(tmp / "runs_all" / "cpu"), str(tmp / "expert_data"), str(tmp / "results" / "cpu")
    for v, values in BIGFISH.items():  # 3 ok seeds, all three variants
        for seed, value in enumerate(values, 1):
            curve = [(s, value * s / 50_000) for s in range(1000, 50_001, 1000)]
            write_run(os.path.join(runs, "procgen", "bigfish", v, f"seed{seed}"), "bigfish", seed, value, "procgen",
                      curve=curve)
    chaser = os.path.join(runs, "procgen", "chaser")
    write_run(os.path.join(chaser, "bcvlr", "seed1"), "chaser", 1, 3.0, "procgen", curve=[(800, 1.0), (40_000, 2.0)])
    # seed 2: missing (no folder); seed 3: failed (exit 1, log without results.json)
    write_run(os.path.join(chaser, "bcvlr", "seed3"), "chaser", 3, None, "procgen", exit_code=1, results=False)
    write_run(os.path.join(chaser, "no_finetune", "seed1"), "chaser", 1, 1.5, "procgen")
    write_run(os.path.join(chaser, "no_finetune", "seed2"), "chaser", 2, 0.7, "procgen", interrupted=True)
    os.makedirs(os.path.join(chaser, "no_finetune", "seed3"))
    with open(os.path.join(chaser, "no_finetune", "seed3", "skipped"), "w") as f:
        f.write("the bcvlr variant did not finish, so there is no offline pre-training to share\n")
    for v in ("bcvlr", "no_finetune"):
        for seed, value in enumerate(REACH, 1):
            write_run(os.path.join(runs, "metaworld", "reach-v3", v, f"seed{seed}"), "reach-v3", seed,
                      value if v == "bcvlr" else value / 2, "metaworld", curve=[(1000, 0.0), (5000, value)])
        for seed, value in enumerate(REACHER, 1):
            write_run(os.path.join(runs, "dmc", "reacher_hard", v, f"seed{seed}"), "reacher_hard", seed, value, "dmc",
                      curve=[(2000, 10.0), (100_000, value)])
    for seed, value in enumerate(REACH_CEILING, 1):  # the ceiling: one evaluation, no online curve
        write_run(os.path.join(runs, "metaworld", "reach-v3", "true_action_bc", f"seed{seed}"), "reach-v3", seed, value,
                  "metaworld", curve=[(0, value)])
    write_info(data, "bigfish", suite="procgen", random_return_mean=0.5, ep_return_mean=35.0)
    write_info(data, "chaser", suite="procgen", random_return_mean=0.6, ep_return_mean=8.0)
    write_info(data, "reach-v3", suite="metaworld", random_return_mean=850.0, random_success_rate=0.0,
               success_rate=0.95, ep_return_mean=4800.0)
    write_info(data, "reacher_hard", suite="dmc", random_return_mean=8.3, ep_return_mean=953.15)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "aggregate.py"), runs, "--scale", "cpu", "--seeds", "1", "2", "3",
         "--tasks", "bigfish", "chaser", "reach-v3", "reacher_hard", "--data-dir", data, "--out", out],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return dict(runs=runs, data=data, out=out)


def read(out, name):
    with open(os.path.join(out, name)) as f:
        return f.read()


def row(md, task):
    rows = [line for line in md.splitlines() if line.startswith(f"| {task} |")]
    assert len(rows) == 1, md
    return [c.strip() for c in rows[0].strip("|").split("|")]


def pm(values, decimals):
    return f"{np.mean(values):.{decimals}f} ± {np.std(values):.{decimals}f}"


def test_procgen_means_and_paper_columns(fake):
    md = read(fake["out"], "procgen.md")
    cells = row(md, "bigfish")
    assert cells[1] == f"{pm(BIGFISH['bcvlr'], 2)} (n=3/3)"
    assert cells[2] == f"{pm(BIGFISH['no_finetune'], 2)} (n=3/3)"
    assert cells[3] == f"{pm(BIGFISH['true_action_bc'], 2)} (n=3/3)"
    assert cells[4] == "0.50" and cells[5] == "35.00"  # uniform random, demonstrator from info.json
    ceiling = np.mean(BIGFISH["true_action_bc"])
    assert cells[6] == f"{(ceiling - 0.5) / (35.0 - 0.5):.2f}"  # ceiling normalised
    assert cells[7] == f"{(np.mean(BIGFISH['bcvlr']) - 0.5) / (ceiling - 0.5):.2f}"  # BCV-LR's share of the ceiling
    assert cells[8] == f"{np.mean(BIGFISH['bcvlr']) / 35.0:.2f}"
    assert cells[9] == "35.9 ± 2.0" and cells[10] == "36.3"  # the poster's BCV-LR and expert-video columns
    assert "paper BCV-LR" in md and "paper expert videos" in md


def test_failed_missing_interrupted_listed_by_seed(fake):
    md = read(fake["out"], "procgen.md")
    cells = row(md, "chaser")
    assert cells[1].startswith("3.00 ± 0.00 (n=1/3)") and "[note" in cells[1]
    assert cells[2].startswith("1.50 ± 0.00 (n=1/3)") and "[note" in cells[2]
    assert cells[3].startswith("— (n=0/3)") and cells[6] == "—" and cells[7] == "—"  # no ceiling runs: no share
    assert cells[9] == "3.1 ± 0.5" and cells[10] == "10.0"
    notes = md.split("## Notes")[1]
    assert "seed 2: missing" in notes
    assert "seed 3: failed (exit 1)" in notes
    assert "seed 2: interrupted" in notes
    assert "seed 3: skipped (the bcvlr variant did not finish" in notes
    assert "| **mean of these 2 tasks** |" in md


def test_metaworld_success_rate(fake):
    md = read(fake["out"], "metaworld.md")
    assert "success rate" in md.splitlines()[0]
    cells = row(md, "reach-v3")
    assert cells[1] == f"{pm(REACH, 2)} (n=3/3)"
    assert cells[2] == f"{pm([v / 2 for v in REACH], 2)} (n=3/3)"
    assert cells[3] == f"{pm(REACH_CEILING, 2)} (n=3/3)"
    assert cells[4] == "0.00" and cells[5] == "0.95"  # random / demonstrator success rates
    assert cells[6] == f"{np.mean(REACH_CEILING) / 0.95:.2f}" and cells[7] == f"{np.mean(REACH) / np.mean(REACH_CEILING):.2f}"
    assert cells[8] == f"{np.mean(REACH) / 0.95:.2f}"
    assert cells[9] == "0.63 ± 0.25" and cells[10] == "1.00"


def test_dmc_paper_expert_only(fake):
    md = read(fake["out"], "dmc.md")
    cells = row(md, "reacher_hard")
    assert cells[1].startswith(f"{pm(REACHER, 1)} (n=2/3)") and "[note" in cells[1]
    assert cells[9] == "—" and cells[10] == "967.0"
    assert "seed 3: missing" in md.split("## Notes")[1]


def test_summary_json(fake):
    with open(os.path.join(fake["out"], "summary.json")) as f:
        summary = json.load(f)
    assert set(summary) == {"procgen", "dmc", "metaworld"}
    bigfish = summary["procgen"]["bigfish"]
    assert bigfish["random"] == 0.5 and bigfish["demonstrator"] == 35.0
    for v, values in BIGFISH.items():
        got = bigfish["variants"][v]
        assert got["n"] == 3 and got["mean"] == pytest.approx(np.mean(values)) and got["std"] == pytest.approx(np.std(values))
    chaser = summary["procgen"]["chaser"]["variants"]
    assert chaser["bcvlr"]["n"] == 1 and chaser["true_action_bc"] == {"mean": None, "std": None, "n": 0, "not_ok": [
        "seed 1: missing", "seed 2: missing", "seed 3: missing"]}
    assert "seed 3: failed (exit 1)" in chaser["bcvlr"]["not_ok"]
    reach = summary["metaworld"]["reach-v3"]
    assert reach["random"] == 0.0 and reach["demonstrator"] == 0.95  # success rates for Metaworld
    assert reach["variants"]["true_action_bc"]["mean"] == pytest.approx(np.mean(REACH_CEILING))


def test_plots_and_summary(fake):
    for task in ("bigfish", "chaser", "reach-v3", "reacher_hard"):
        path = os.path.join(fake["out"], f"{task}.png")
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        import matplotlib.image

        assert matplotlib.image.imread(path).ndim == 3
    summary = read(fake["out"], "README.md")
    for link in ("(procgen.md)", "(dmc.md)", "(metaworld.md)", "(bigfish.png)", "(reach-v3.png)"):
        assert link in summary
    assert "Seeds: 1, 2, 3" in summary
    assert "| procgen | bigfish | bcvlr | 1 | ok | 10 | 20 | 5 | 100 | 3 | 138 | 50000 |" in summary
    assert "| procgen | chaser | bcvlr | 3 | failed (exit 1) |" in summary
    assert ROOT + "/" not in summary and fake["runs"] not in summary  # commands: relative paths, $OUT
    assert "cd $OUT/procgen/bigfish/bcvlr/seed1 && python bcvlr.py --env-id bigfish --seed 1" in summary


def test_curve_binning(fake):
    run_dir = os.path.dirname(next(
        os.path.join(d, f) for d, _, fs in os.walk(os.path.join(fake["runs"], "procgen", "chaser", "bcvlr", "seed1"))
        for f in fs if f == "results.json"))
    x, y = aggregate.seed_curve("procgen", run_dir, 50_000)
    assert list(x) == [2500.0, 42500.0] and list(y) == [1.0, 2.0]  # bins of 5% of the budget, x = bin end


def test_output_is_deterministic(fake, tmp_path):
    args = [fake["runs"], "--scale", "cpu", "--seeds", "1", "2", "3", "--data-dir", fake["data"], "--no-plots"]
    aggregate.main(args + ["--out", str(tmp_path / "a"), "--tasks", "chaser", "bigfish", "reach-v3", "reacher_hard"])
    for name in ("procgen.md", "dmc.md", "metaworld.md", "README.md"):
        assert read(str(tmp_path / "a"), name) == read(fake["out"], name)


def test_missing_runs_folder(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        aggregate.main([str(tmp_path / "nope")])


# ---------------------------------------------------------------------------------------------------------------
# run_all.sh
# ---------------------------------------------------------------------------------------------------------------
def run_all(*args, env=None, cwd=None):
    return subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def test_run_all_help():
    r = run_all("--help")
    assert r.returncode == 0
    for word in ("usage: bash run_all.sh <scale>", "WORKERS", "SEEDS", "DATA_DIR", "OUT", "no_finetune", "exit_code"):
        assert word in r.stdout


def test_run_all_unknown_task(tmp_path):
    r = run_all("cpu", "bigfish", "not_a_task", env=dict(os.environ, OUT=str(tmp_path / "out")), cwd=tmp_path)
    assert r.returncode != 0
    assert "unknown task(s): not_a_task" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing ran
    assert run_all("gpu").returncode != 0


FAKE_LEARNER = r'''
import json, os, sys
argv = sys.argv[1:]
def val(flag):
    return argv[argv.index(flag) + 1] if flag in argv else None
env_id, seed = val("--env-id"), int(val("--seed"))
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"cwd": os.getcwd(), "argv": argv}) + "\n")
if f"{env_id}:{seed}" in os.environ.get("FAKE_FAIL", "").split():
    sys.exit("error: fake failure")
run = f"runs/{env_id}__fake__{seed}__{len(os.listdir('runs')) if os.path.isdir('runs') else 0}"
os.makedirs(run)
if val("--offline-checkpoint") is None:
    open(f"{run}/offline.pt", "w").close()
if "--true-action-bc" in argv:
    open(f"{run}/bcvlr.cleanrl_model", "w").close()
with open(f"{run}/results.json", "w") as f:
    json.dump({"env_id": env_id, "seed": seed, "episodic_return_mean": 1.0 + seed, "episodic_return_std": 0.0,
               "env_steps": 100, "wall_clock_s": {"ssl": 1.0}, "interrupted": False,
               "args": {"total_timesteps": 100}}, f, indent=2)
'''
FAKE_EXPERT = r'''
import json, os, sys
argv = sys.argv[1:]
env_id, out_dir = argv[argv.index("--env-id") + 1], argv[argv.index("--out-dir") + 1]
script = argv[argv.index("--fake-script") + 1]
if env_id in os.environ.get("FAKE_EXPERT_FAIL", "").split():
    sys.exit("error: fake expert failure")
if os.environ.get("FAKE_EXPERT_LOG"):
    with open(os.environ["FAKE_EXPERT_LOG"], "a") as f:
        f.write(json.dumps({"cwd": os.getcwd(), "argv": argv, "expert": script}) + "\n")
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "info.json"), "w") as f:
    json.dump({"env_id": env_id, "random_return_mean": 0.1, "ep_return_mean": 9.0}, f)
'''
FAKE_PYTHON = '''#!/usr/bin/env bash
case "$1" in
    */bcvlr.py|*/bcvlr_continuous.py) shift; exec "{py}" "{learner}" "$@" ;;
    */experts/*_expert.py) e="$1"; shift; exec "{py}" "{expert}" "$@" --fake-script "$e" ;;
    *) exec "{py}" "$@" ;;
esac
'''


def make_fake_python(tmp_path):
    """A `python` stand-in for run_all.sh (PYTHON=...): the learners and experts become FAKE_LEARNER / FAKE_EXPERT."""
    (tmp_path / "fake_learner.py").write_text(FAKE_LEARNER)
    (tmp_path / "fake_expert.py").write_text(FAKE_EXPERT)
    fake_python = tmp_path / "python"
    fake_python.write_text(FAKE_PYTHON.format(py=sys.executable, learner=tmp_path / "fake_learner.py",
                                              expert=tmp_path / "fake_expert.py"))
    fake_python.chmod(0o755)
    return fake_python


def test_run_all_pipeline_with_fake_learner(tmp_path):
    """run_all.sh end to end with a stand-in learner: folders, shared offline.pt, failure, skip and re-run."""
    fake_python = make_fake_python(tmp_path)
    data = tmp_path / "data"
    write_info(str(data), "bigfish", random_return_mean=0.5, ep_return_mean=30.0)
    write_info(str(data), "reacher_easy", random_return_mean=5.0, ep_return_mean=900.0)
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PYTHON=str(fake_python), DATA_DIR=str(data), OUT=str(tmp_path / "out"), SEEDS="1 2",
               RESULTS=str(tmp_path / "res"), FAKE_LOG=str(log), FAKE_FAIL="bigfish:2", FAKE_EXPERT_FAIL="chaser",
               WORKERS="2")
    r = run_all("cpu", "bigfish", "reacher_easy", "chaser", env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr  # bigfish seed 2 failed, chaser's expert failed
    assert "[expert done ] chaser: FAILED (exit 1" in r.stdout
    assert (tmp_path / "out" / "experts" / "chaser" / "log.txt").read_text().strip() == "error: fake expert failure"
    assert "[end  ] procgen/bigfish seed2: bcvlr: FAILED (exit 1" in r.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 10  # 2 tasks x 2 seeds x 3 variants, minus the two that need the failed bcvlr's offline.pt
    seed_dir = tmp_path / "out" / "procgen" / "bigfish" / "bcvlr" / "seed1"
    assert (seed_dir / "exit_code").read_text().strip() == "0"
    assert "--video-dir" in (seed_dir / "cmd.txt").read_text()
    argv = calls[0]["argv"]  # the cpu scale is the learners' preset; each of the 2 workers gets 1 of the 2 cores' threads
    assert "--scale" in argv and argv[argv.index("--scale") + 1] == "cpu"
    assert argv[argv.index("--num-threads") + 1] == str(max(1, len(os.sched_getaffinity(0)) // 2))  # nproc / WORKERS
    nf = [c for c in calls if "--no-finetune-latent-actions" in c["argv"] and c["cwd"].endswith("bigfish/no_finetune/seed1")]
    assert len(nf) == 1
    ckpt = nf[0]["argv"][nf[0]["argv"].index("--offline-checkpoint") + 1]
    assert ckpt.startswith(str(seed_dir / "runs")) and ckpt.endswith("offline.pt")
    ceiling = [c for c in calls if "--true-action-bc" in c["argv"] and c["cwd"].endswith("bigfish/true_action_bc/seed1")]
    assert len(ceiling) == 1 and ceiling[0]["argv"][ceiling[0]["argv"].index("--offline-checkpoint") + 1] == ckpt
    assert nf[0]["argv"][nf[0]["argv"].index("--video-dir") + 1] == f"{data}/{{env_id}}"
    failed = tmp_path / "out" / "procgen" / "bigfish" / "bcvlr" / "seed2"
    assert (failed / "exit_code").read_text().strip() == "1"
    assert (tmp_path / "out" / "procgen" / "bigfish" / "no_finetune" / "seed2" / "skipped").exists()
    assert (tmp_path / "out" / "procgen" / "bigfish" / "true_action_bc" / "seed2" / "skipped").exists()
    md = (tmp_path / "res" / "procgen.md").read_text()
    assert "seed 2: failed (exit 1)" in md and "seed 2: skipped" in md
    assert "seed 1: skipped (expert videos failed" in md  # chaser
    assert (tmp_path / "res" / "dmc.md").exists()

    # second invocation: the expert of chaser, chaser's runs, and bigfish seed 2 (both variants) run; nothing else
    env["FAKE_FAIL"], env["FAKE_EXPERT_FAIL"] = "", ""
    r = run_all("cpu", "bigfish", "reacher_easy", "chaser", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()][10:]
    assert sorted(c["cwd"].split("/out/")[1] for c in calls) == sorted(
        f"procgen/{task}/{v}/seed{s}" for task, s in (("bigfish", 2), ("chaser", 1), ("chaser", 2))
        for v in ("bcvlr", "no_finetune", "true_action_bc"))
    md = (tmp_path / "res" / "procgen.md").read_text()
    assert md.count("(n=2/2)") == 6 and "## Notes" not in md


def test_run_all_cpu_distils_the_planner_for_coinrun(tmp_path):
    """run_all.sh cpu coinrun (CPU_DISTILLED_TASKS): planner videos, then bcvlr.py --true-action-bc on them, then
    experts/policy_expert.py records that model into DATA_DIR/coinrun; a second run reuses all three."""
    log, expert_log = tmp_path / "calls.jsonl", tmp_path / "experts.jsonl"
    data = tmp_path / "data"
    env = dict(os.environ, PYTHON=str(make_fake_python(tmp_path)), OUT=str(tmp_path / "out"), DATA_DIR=str(data),
               RESULTS=str(tmp_path / "res"), FAKE_LOG=str(log), FAKE_EXPERT_LOG=str(expert_log), SEEDS="1",
               VARIANTS="true_action_bc", WORKERS="1")
    r = run_all("cpu", "coinrun", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    planner, policy = (json.loads(line) for line in expert_log.read_text().splitlines())
    distil = calls[0]
    assert planner["expert"].endswith("procgen_expert.py") and planner["argv"][planner["argv"].index("--out-dir") + 1] == str(data / "coinrun_planner")
    assert "--true-action-bc" in distil["argv"] and distil["argv"][distil["argv"].index("--video-dir") + 1] == str(data / "coinrun_planner")
    assert "--scale" in distil["argv"] and distil["cwd"] == str(tmp_path / "out" / "experts" / "coinrun" / "distill")
    model = policy["argv"][policy["argv"].index("--model") + 1]
    assert policy["expert"].endswith("policy_expert.py") and model.endswith("bcvlr.cleanrl_model") and os.path.exists(model)
    assert policy["argv"][policy["argv"].index("--out-dir") + 1] == str(data / "coinrun")
    assert (data / "coinrun" / "info.json").exists() and "--num-transitions" in policy["argv"]
    # the learner runs read the distilled policy's videos
    runs = calls[1:]
    assert runs and all(c["argv"][c["argv"].index("--video-dir") + 1] == str(data / "{env_id}") for c in runs)
    # a second invocation finds the videos and the finished run: nothing is called again
    r = run_all("cpu", "coinrun", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(log.read_text().splitlines()) == len(calls) and len(expert_log.read_text().splitlines()) == 2


def test_run_all_per_task_expert_flags(tmp_path):
    """CPU_EXPERT_TASK_FLAGS appends a task's own expert flags to its suite's: finger_spin's cpu videos are DART-style
    (--deterministic --action-noise 0.2), reacher_easy's (same suite) are not; an override from the environment wins."""
    expert_log = tmp_path / "experts.jsonl"
    env = dict(os.environ, PYTHON=str(make_fake_python(tmp_path)), OUT=str(tmp_path / "out"), DATA_DIR=str(tmp_path / "data"),
               RESULTS=str(tmp_path / "res"), FAKE_LOG=str(tmp_path / "calls.jsonl"), FAKE_EXPERT_LOG=str(expert_log),
               SEEDS="1", VARIANTS="bcvlr", WORKERS="1")
    r = run_all("cpu", "finger_spin", "reacher_easy", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = {c["argv"][c["argv"].index("--env-id") + 1]: c["argv"] for c in map(json.loads, expert_log.read_text().splitlines())}
    fs, re_ = calls["finger_spin"], calls["reacher_easy"]
    assert fs[fs.index("--num-transitions") + 1] == "10000" and re_[re_.index("--num-transitions") + 1] == "10000"
    assert "--deterministic" in fs and fs[fs.index("--action-noise") + 1] == "0.2"
    assert "--deterministic" not in re_ and "--action-noise" not in re_
    assert "--action-noise 0.2" in (tmp_path / "out" / "experts" / "finger_spin" / "cmd.txt").read_text()
    # an override: a different noise for finger_spin, an entry for reacher_easy; fresh data folder so both re-record
    env.update(DATA_DIR=str(tmp_path / "data2"), OUT=str(tmp_path / "out2"),
               CPU_EXPERT_TASK_FLAGS="finger_spin=--action-noise 0.3; reacher_easy=--num-transitions 500")
    r = run_all("cpu", "finger_spin", "reacher_easy", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = {c["argv"][c["argv"].index("--env-id") + 1]: c["argv"] for c in map(json.loads, expert_log.read_text().splitlines()[2:])}
    fs, re_ = calls["finger_spin"], calls["reacher_easy"]
    assert fs[fs.index("--action-noise") + 1] == "0.3" and "--deterministic" not in fs
    assert re_[len(re_) - 1 - re_[::-1].index("--num-transitions") + 1] == "500"  # the task's entry comes last: it wins
    # a third run finds both folders: nothing is recorded, and each task's own flags (both have an entry now) are named
    r = run_all("cpu", "finger_spin", "reacher_easy", env=env, cwd=tmp_path)
    assert r.returncode == 0 and len(expert_log.read_text().splitlines()) == 4, r.stdout + r.stderr
    assert "note: finger_spin: using the videos already in" in r.stdout and "--action-noise 0.3" in r.stdout
    assert "note: reacher_easy: using the videos already" in r.stdout  # the override gave it an entry too
    env["CPU_EXPERT_TASK_FLAGS"] = ""
    assert "note:" not in run_all("cpu", "finger_spin", "reacher_easy", env=env, cwd=tmp_path).stdout
