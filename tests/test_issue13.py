"""Issue 13: scripts/bench.py at tiny shapes, scripts/gpu_check.sh end to end on CPU (TINY=1), and run_all.sh's SLURM
array submission with a fake sbatch. About a minute and a half in all on the 2-core CPU."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_aggregate import make_fake_python, write_info  # noqa: E402

TINY_BENCH = ["--scale", "cpu", "--set", "encoder_channels=4", "impala_scale=1", "wm_scale=4", "--batch-size", "4",
              "--warmup", "1", "--iters", "2", "--bench-frames", "256", "--threads", "1"]


def check_rows(result, uncached):
    names = [r["update"] for r in result["updates"]]
    for u in ("ssl", "lam", "bc", "ft", "reclone"):
        assert u in names
        run_rows = [r for r in result["updates"] if r["update"] == u and r.get("run_path", True)]
        assert len(run_rows) == 1  # exactly one row is the path the run takes
    if uncached:  # lam, bc, ft, reclone also on the other data path
        assert len(names) == 9 and {r["cached"] for r in result["updates"] if r["update"] == "lam"} == {True, False}
    for r in result["updates"]:
        assert r["batch_size"] == 4
        for k in ("ms_per_update", "ms_per_sample", "samples_per_s"):
            assert math.isfinite(r[k]) and r[k] > 0, (r, k)
        # BC rows: plus p's labelling of every window, amortised, where the run stores the labels (label_windows)
        assert r["ms_per_sample"] == pytest.approx(r["ms_per_update"] / 4 + 1e3 * r.get("label_seconds_per_sample", 0.0))
        assert (r.get("label_seconds_per_sample", 0.0) > 0) == bool(r.get("stored_labels"))
    bc_rows = [r for r in result["updates"] if r["update"] in ("bc", "reclone")]
    assert all("stored_labels" in r for r in bc_rows)
    for e in result["env"]:
        assert math.isfinite(e["steps_per_s"]) and e["steps_per_s"] > 0 and e["env_steps"] > 0


def test_bench_procgen_tiny(tmp_path):
    import bench

    out = tmp_path / "b.json"
    res = bench.main(TINY_BENCH + ["--file", "bcvlr", "--uncached", "--env-steps", "64", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["file"] == "bcvlr" and saved["device"] == "cpu" and saved["threads"] == 1
    assert saved["feature_shape"] == [4, 16, 16]  # --scale cpu pools by 4; --set changed the channels
    assert saved["video_cache"] is True  # 50k frames x 4x16x16 floats fit the 4 GB cap: the run uses the cache
    stored = {r["update"]: r["stored_labels"] for r in saved["updates"] if r.get("run_path", True) and "stored_labels" in r}
    assert stored == {"bc": True, "reclone": False}  # 2 000 x 64 BC samples >= 2 x 50k windows; 100 x 64 re-clone samples are fewer
    check_rows(saved, uncached=True)
    assert [e["env"].split("(")[-1] for e in saved["env"]] == ["random)", "acting)"]
    assert saved["updates"] == res["updates"]
    # the paper-shape decision: 50k frames of 16x64x64 floats do not fit 4 GB, so the run encodes frames per batch
    _, la = bench.load_learner(bench.Args(file="bcvlr"))
    assert not bench.uses_cache(la, 50_000, 16 * 64 * 64) and bench.uses_cache(la, 10_000, 16 * 64 * 64)


def test_bench_continuous_tiny_by_env_id(tmp_path):
    import bench

    out = tmp_path / "c.json"
    bench.main(TINY_BENCH + ["--env-id", "reacher_easy", "--env-steps", "3", "--updates", "ssl", "lam", "bc", "ft",
                             "reclone", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["file"] == "bcvlr_continuous" and saved["env_id"] == "reacher_easy"
    check_rows(saved, uncached=False)
    assert len(saved["env"]) == 2 and saved["env"][0]["env_frames_per_s"] == pytest.approx(2 * saved["env"][0]["steps_per_s"])


def test_bench_bad_arguments():
    import bench

    with pytest.raises(SystemExit, match="no field 'not_a_field'"):
        bench.main(["--set", "not_a_field=1", "--env-steps", "0"])
    with pytest.raises(SystemExit, match="unknown update type"):
        bench.main(["--updates", "ssl", "nope", "--env-steps", "0"])


def test_bench_official_needs_a_checkout(tmp_path):
    import bench_official

    with pytest.raises(SystemExit, match="no models.py there"):
        bench_official.main(["--official-dir", str(tmp_path)])


@pytest.mark.skipif(not os.path.isfile(os.path.join(os.environ.get("BCVLR_OFFICIAL_DIR", "/nonexistent"), "models.py")),
                    reason="needs a checkout of liuxin0824/BCV-LR-discrete in $BCVLR_OFFICIAL_DIR")
def test_bench_official_side_by_side_tiny(tmp_path):
    # the paper's shapes at batch 2, one round: every update type has an official and our figure, JSON as returned
    import bench_official

    rows = bench_official.main(["--official-dir", os.environ["BCVLR_OFFICIAL_DIR"], "--batch-size", "2", "--rounds", "1",
                                "--iters", "1", "--out", str(tmp_path / "o.json")])
    assert [r["update"] for r in rows] == ["ssl", "lam", "bc", "ft", "reclone"]
    for r in rows:
        assert r["official_ms"] > 0 and r["ours_ms"] > 0 and (r["ours_cached_ms"] is None) == (r["update"] == "ssl")
    assert json.loads((tmp_path / "o.json").read_text())["rows"] == rows


def test_gpu_check_tiny_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "gpu check"  # a space in the path on purpose
    env = dict(os.environ, TINY="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHON=sys.executable)
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), str(out)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    for key in ("game", "device", "budget", "bcvlr", "no_finetune", "random_return", "video_return", "stage_seconds",
                "bench", "tensorboard", "total_seconds", "command"):
        assert key in res, key
    assert res["tiny"] is True and res["game"] == "bigfish"
    assert 0 < res["budget"]["fraction"] <= 1 and set(res["budget"]["update_counts"]) >= {"ssl_steps", "lam_steps", "bc_steps"}
    assert res["bcvlr"]["variant"] == "bcvlr" and res["no_finetune"]["variant"] == "no_finetune"
    assert math.isfinite(res["bcvlr"]["episodic_return_mean"]) and res["bcvlr"]["env_steps"] >= 256
    assert str(out / "bench_bcvlr.json") in res["bench"]
    assert json.loads((out / "bench_bcvlr.json").read_text())["updates"]
    assert len(res["tensorboard"]) == 2  # bcvlr and the ablation
    for d in res["tensorboard"]:
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(d))
    assert json.loads((out / "expert_data" / "bigfish" / "info.json").read_text())["num_transitions"] >= 300
    assert "budget: fraction" in (out / "gpu_check.log").read_text()


FAKE_SBATCH = '''#!/usr/bin/env bash
n=$(( $(ls "$FAKE_SBATCH_DIR" | wc -l) + 100 ))
mkdir -p "$FAKE_SBATCH_DIR/$n"
printf '%s\\n' "$@" > "$FAKE_SBATCH_DIR/$n/args"
cp "${@: -1}" "$FAKE_SBATCH_DIR/$n/script"
echo "$n"
'''


def submissions(d):
    subs = []
    for n in sorted(os.listdir(d), key=int):
        args = (d / n / "args").read_text().splitlines()
        opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--") and not args[i + 1].startswith("--")}
        subs.append(dict(id=n, args=args, opt=opt, script=str(d / n / "script")))
    return subs


def array_size(spec):
    n = 0
    for part in spec.split("%")[0].split(","):
        a, _, b = part.partition("-")
        n += int(b or a) - int(a) + 1
    return n


def test_run_all_slurm_array_with_fake_sbatch(tmp_path):
    bin_dir, sub_dir = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    sub_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    fake_python = make_fake_python(tmp_path)
    data = tmp_path / "data"
    write_info(str(data), "bigfish", random_return_mean=0.5, ep_return_mean=30.0)
    write_info(str(data), "reacher_easy", random_return_mean=5.0, ep_return_mean=900.0)
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM="1", PYTHON=str(fake_python), DATA_DIR=str(data),
               OUT=str(tmp_path / "out"), RESULTS=str(tmp_path / "res"), SEEDS="1 2", FAKE_SBATCH_DIR=str(sub_dir),
               FAKE_LOG=str(log), SLURM_PARTITION="gpu", SLURM_TIME="02:00:00", SLURM_GPUS="1", SLURM_MAX_PARALLEL="4")
    tasks = ["bigfish", "reacher_easy", "chaser"]  # chaser has no videos yet: an expert array of one element
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "full", *tasks], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not log.exists()  # nothing ran on the submitting node
    subs = submissions(sub_dir)
    by_name = {s["opt"]["--job-name"]: s for s in subs}
    assert set(by_name) == {"bcvlr-full-experts", "bcvlr-full-bcvlr", "bcvlr-full-no_finetune", "bcvlr-full-true_action_bc",
                            "bcvlr-full-aggregate"}
    variants = [by_name[f"bcvlr-full-{v}"] for v in ("bcvlr", "no_finetune", "true_action_bc")]
    assert sum(array_size(s["opt"]["--array"]) for s in variants) == len(tasks) * 2 * 3  # tasks x seeds x variants
    assert all(s["opt"]["--array"].endswith("%4") for s in variants)
    assert array_size(by_name["bcvlr-full-experts"]["opt"]["--array"]) == 1
    for s in variants:
        assert s["opt"]["--partition"] == "gpu" and s["opt"]["--time"] == "02:00:00" and s["opt"]["--gpus"] == "1"
    exp_id, b_id = by_name["bcvlr-full-experts"]["id"], variants[0]["id"]
    assert variants[0]["opt"]["--dependency"] == f"afterany:{exp_id}"
    assert variants[1]["opt"]["--dependency"] == variants[2]["opt"]["--dependency"] == f"aftercorr:{b_id}"
    assert by_name["bcvlr-full-aggregate"]["opt"]["--dependency"] == "afterany:" + ":".join(
        s["id"] for s in [by_name["bcvlr-full-experts"]] + variants)
    pairs = (tmp_path / "out" / "slurm" / "pairs.txt").read_text().split("\n")
    assert pairs[:6] == ["bigfish 1", "bigfish 2", "reacher_easy 1", "reacher_easy 2", "chaser 1", "chaser 2"]

    def element(sub, task_id, **extra):
        e = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task_id), FAKE_LOG=str(log), SLURM_CPUS_PER_TASK="3", **extra)
        return subprocess.run(["bash", sub["script"]], capture_output=True, text=True, timeout=60, env=e, cwd=tmp_path)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    # the ceiling of bigfish seed 2 before its bcvlr element: no offline.pt yet, so it is skipped and fails
    r = element(variants[2], 1)
    assert r.returncode == 1 and "SKIPPED" in r.stdout and not calls()
    # element 1 of the bcvlr array = bigfish seed 2, the full scale's learner flags (none), threads from SLURM
    r = element(variants[0], 1)
    assert r.returncode == 0, r.stdout + r.stderr
    (c,) = calls()
    assert c["cwd"].endswith("out/procgen/bigfish/bcvlr/seed2")
    argv = c["argv"]
    assert argv[argv.index("--env-id") + 1] == "bigfish" and argv[argv.index("--seed") + 1] == "2"
    assert argv[argv.index("--num-threads") + 1] == "3" and "--scale" not in argv
    # element 1 of the no_finetune array: the same pair, from bcvlr's offline.pt
    r = element(variants[1], 1)
    assert r.returncode == 0, r.stdout + r.stderr
    c = calls()[-1]
    assert c["cwd"].endswith("out/procgen/bigfish/no_finetune/seed2") and "--no-finetune-latent-actions" in c["argv"]
    ckpt = c["argv"][c["argv"].index("--offline-checkpoint") + 1]
    assert ckpt.startswith(str(tmp_path / "out" / "procgen" / "bigfish" / "bcvlr" / "seed2" / "runs"))
    # a done element exits at once without running the learner
    r = element(variants[0], 1)
    assert r.returncode == 0 and "done before" in r.stdout and len(calls()) == 2
    # element 3 = reacher_easy seed 2 on bcvlr_continuous
    assert element(variants[0], 3).returncode == 0
    assert calls()[-1]["cwd"].endswith("out/dmc/reacher_easy/bcvlr/seed2")
    # the expert element records chaser's videos
    assert element(by_name["bcvlr-full-experts"], 0).returncode == 0
    assert (data / "chaser" / "info.json").exists()

    # re-submitting continues: no expert array, the three done elements are left out
    shutil.rmtree(sub_dir)
    sub_dir.mkdir()
    r = subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), "full", *tasks], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    by_name = {s["opt"]["--job-name"]: s for s in submissions(sub_dir)}
    assert "bcvlr-full-experts" not in by_name
    sizes = {v: array_size(by_name[f"bcvlr-full-{v}"]["opt"]["--array"]) for v in ("bcvlr", "no_finetune", "true_action_bc")}
    assert sizes == {"bcvlr": 6, "no_finetune": 5, "true_action_bc": 6}  # bcvlr keeps every pair (done ones exit at once)
    assert by_name["bcvlr-full-no_finetune"]["opt"]["--array"] == "0,2-5%4"
    assert "--dependency" not in by_name["bcvlr-full-bcvlr"]["opt"]
