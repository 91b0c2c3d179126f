#!/usr/bin/env bash
# scripts/gpu_check.sh: BCV-LR at the paper's sizes on one GPU node, end to end, in under 10 minutes (issue 13).
#
#   bash scripts/gpu_check.sh OUT_DIR            # on the GPU node (offline is fine: README "Offline GPU node")
#   TINY=1 bash scripts/gpu_check.sh OUT_DIR     # the same pipeline at tiny sizes, on CPU in about a minute (tested)
#
# 1. expert videos of GAME with all CPU cores: experts/procgen_expert.py is one process (its planner steps a vector of
#    simulators with procgen's 4 threads), so it runs max(1, nproc/4) of them, each with its own seed, output folder
#    and a share of the frames, under a time cap (EXPERT_SECONDS), then merges their chunks into one folder;
# 2. scripts/bench.py at the paper's shapes on the GPU (both learners; the continuous one is skipped if dm_control
#    does not load) -> OUT_DIR/bench_bcvlr.json, OUT_DIR/bench_bcvlr_continuous.json;
# 3. one Procgen game with bcvlr.py at the paper's sizes and budgets, or, when the bench predicts that they do not fit
#    in what is left of TIME_BUDGET, every update count (stages 1-3, L_ft and re-cloning updates) scaled by the same
#    fraction (the 100k online env steps and all network sizes and batch sizes stay), then the no-finetune ablation from
#    its offline.pt. The fraction and the flags are printed and written to OUT_DIR/results.json;
#    TensorBoard events and the learners' results.json are under OUT_DIR/run/runs/*/.
#
# Environment: GAME (bigfish), SEED (1), TIME_BUDGET (570 s, the whole script), EXPERT_SECONDS (180),
# EXPERT_FRAMES (50000, the expert script's default), EXPERT_PROCS (nproc/4), ABLATION (1), PYTHON (python), TINY (0).
set -u
OUT_DIR="${1:?usage: bash scripts/gpu_check.sh OUT_DIR}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
GAME="${GAME:-bigfish}"
SEED="${SEED:-1}"
TINY="${TINY:-0}"
ABLATION="${ABLATION:-1}"
T0=$(date +%s)
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
NPROC=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc alone honours OMP_NUM_THREADS
if [ "$TINY" = 1 ]; then
    TIME_BUDGET="${TIME_BUDGET:-300}"; EXPERT_SECONDS="${EXPERT_SECONDS:-60}"; EXPERT_FRAMES="${EXPERT_FRAMES:-300}"
    EXPERT_PROCS="${EXPERT_PROCS:-1}"
    EXPERT_FLAGS=(--num-envs 2 --num-candidates 16 --horizon 8 --chunk-size 100)
    BENCH_FLAGS=(--device cpu --scale cpu --set encoder_channels=4 impala_scale=1 wm_scale=4 --batch-size 4 --warmup 0
                 --iters 1 --bench-frames 256)
    BENCH_ENV_STEPS=(64 64)  # bcvlr (env steps over 64 envs), bcvlr_continuous (rendered agent steps)
    # tiny networks and budgets; TINY_BASE = the budgets the fraction scales (the paper's in a real run)
    LEARNER_FLAGS=(--scale cpu --encoder-channels 4 --impala-scale 1 --wm-scale 4 --ssl-batch-size 8 --lam-batch-size 8
                   --bc-batch-size 8 --ft-batch-size 8 --num-envs 4 --num-steps 16 --warmup-steps 16 --total-timesteps 256
                   --eval-episodes 2 --probe-every 1000 --probe-windows 64 --buffer-size 1000)
    BASE="ssl_steps=4 lam_steps=4 bc_steps=4 ft_updates=2 online_bc_updates=2"
    DEVICE=cpu
else
    TIME_BUDGET="${TIME_BUDGET:-570}"; EXPERT_SECONDS="${EXPERT_SECONDS:-180}"; EXPERT_FRAMES="${EXPERT_FRAMES:-50000}"
    EXPERT_PROCS="${EXPERT_PROCS:-$(( NPROC / 4 > 0 ? NPROC / 4 : 1 ))}"
    EXPERT_FLAGS=(--chunk-size 2500)
    BENCH_FLAGS=(--device cuda --scale paper --threads 0 --warmup 5 --iters 20 --channels-last)  # the learners: channels_last on CUDA
    BENCH_ENV_STEPS=(4096 200)
    LEARNER_FLAGS=()
    BASE=""  # the learner's defaults (the paper's)
    DEVICE=cuda
fi
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[gpu_check $(elapsed)s] $*" | tee -a "$OUT_DIR/gpu_check.log"; }
: > "$OUT_DIR/gpu_check.log"
log "OUT_DIR=$OUT_DIR GAME=$GAME TINY=$TINY TIME_BUDGET=${TIME_BUDGET}s nproc=$NPROC"
"$PYTHON" - <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
import numpy, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, GPU: {gpu}")
EOF
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    log "error: no CUDA device visible to torch (TINY=1 runs the pipeline on CPU)"; exit 1
fi

# ---- 1. expert videos, all cores ----
DATA="$OUT_DIR/expert_data/$GAME"
PARTS="$OUT_DIR/expert_parts"
if [ -f "$DATA/info.json" ]; then
    log "expert videos: $DATA already there (delete it to record again)"
else
    rm -rf "$PARTS" "$DATA"
    per=$(( (EXPERT_FRAMES + EXPERT_PROCS - 1) / EXPERT_PROCS ))
    log "expert videos: $EXPERT_PROCS planner process(es) x $per frames, cap ${EXPERT_SECONDS}s"
    pids=()
    for i in $(seq 0 $((EXPERT_PROCS - 1))); do
        mkdir -p "$PARTS/p$i"
        (cd "$REPO" && exec timeout -s INT "$EXPERT_SECONDS" "$PYTHON" experts/procgen_expert.py --env-id "$GAME" \
            --seed $((SEED * 1000 + i)) --out-dir "$PARTS/p$i" --num-transitions "$per" --test-fraction 0 \
            --num-previews 0 --random-episodes 0 "${EXPERT_FLAGS[@]}") > "$PARTS/p$i/log.txt" 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    # merge: the complete chunks of every part (written atomically, so a part stopped by the cap leaves whole files)
    "$PYTHON" - "$PARTS" "$DATA" "$GAME" <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
import glob, json, os, shutil, sys
import numpy as np
parts, data, game = sys.argv[1:]
os.makedirs(f"{data}/train", exist_ok=True)
k, frames, rets = 0, 0, []
for f in sorted(glob.glob(f"{parts}/p*/train/*.npz"), key=lambda p: (p.split("/")[-3], int(os.path.basename(p)[:-4]))):
    d = np.load(f)
    frames += len(d["done"])
    rets += list(d["ep_returns"][d["done"]])
    shutil.move(f, f"{data}/train/{k}.npz")
    k += 1
if k == 0:
    logs = sorted(glob.glob(f"{parts}/p*/log.txt"))
    last = open(logs[0]).read().replace("\r", "\n").strip().splitlines()[-1:] if logs else []
    sys.exit(f"error: no expert chunk was written in time (see {parts}/p*/log.txt; the last line of the first: "
             f"{last[0] if last else 'empty'}); if the planners ran, raise EXPERT_SECONDS")
info = dict(env_id=game, suite="procgen", num_transitions=frames, num_episodes=len(rets), ep_return_mean=float(np.mean(rets)),
            ep_return_std=float(np.std(rets)), demonstrator="experts/procgen_expert.py, merged parts (scripts/gpu_check.sh)")
json.dump(info, open(f"{data}/info.json", "w"), indent=2)
print(f"expert videos: {frames} frames, {len(rets)} episodes, return {np.mean(rets):.2f} +- {np.std(rets):.2f} in {k} chunks")
EOF
    [ -f "$DATA/info.json" ] || { log "error: expert videos failed"; exit 1; }
fi
log "expert videos done"

# ---- 2. bench at the paper's shapes ----
for f in bcvlr bcvlr_continuous; do
    extra=(--env-steps "${BENCH_ENV_STEPS[1]}"); [ "$f" = bcvlr ] && extra=(--env-id "$GAME" --env-steps "${BENCH_ENV_STEPS[0]}")
    if (cd "$REPO" && "$PYTHON" scripts/bench.py --file "$f" "${extra[@]}" "${BENCH_FLAGS[@]}" --out "$OUT_DIR/bench_$f.json") \
        >> "$OUT_DIR/gpu_check.log" 2>&1; then
        log "bench $f: $OUT_DIR/bench_$f.json"
    elif [ "$f" = bcvlr ]; then
        log "error: bench of bcvlr failed (see $OUT_DIR/gpu_check.log)"; exit 1
    else
        log "bench $f: failed (dm_control/mujoco missing or no EGL?), skipped; see $OUT_DIR/gpu_check.log"
    fi
done

# ---- 3. the budget that fits, from the bench ----
REMAINING=$(( TIME_BUDGET - $(elapsed) ))
PLAN="$(cd "$REPO" && "$PYTHON" - "$OUT_DIR/bench_bcvlr.json" "$REMAINING" "$ABLATION" "$BASE" "${LEARNER_FLAGS[@]}" <<'EOF'
import json, math, sys
sys.path.insert(0, ".")
import bcvlr
bench, remaining, ablation, base_kv, flags = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5:]
a = bcvlr.Args(scale="cpu", **bcvlr.CPU_SCALE) if "--scale" in flags and flags[flags.index("--scale") + 1] == "cpu" else bcvlr.Args()
for i, f in enumerate(flags):  # the learner flags given (tiny sizes), as the learner will see them
    key = f[2:].replace("-", "_") if f.startswith("--") else None
    if key and hasattr(a, key) and i + 1 < len(flags) and not flags[i + 1].startswith("--"):
        setattr(a, key, type(getattr(a, key))(flags[i + 1]))
base = dict(ssl_steps=a.ssl_steps, lam_steps=a.lam_steps, bc_steps=a.bc_steps, ft_updates=a.ft_updates,
            online_bc_updates=a.online_bc_updates)
base.update({k: int(v) for k, v in (kv.split("=") for kv in base_kv.split())})
ms = {r["update"]: r["ms_per_sample"] / 1e3 for r in bench["updates"] if r.get("run_path", True)}
sps = next((e["steps_per_s"] for e in bench["env"] if "acting" in e["env"]), None) or 5000.0
vector_steps = -(-a.total_timesteps // a.num_envs)
iters = 1 + -(-(vector_steps - min(a.warmup_steps, vector_steps)) // a.num_steps)
runs = 2 if ablation else 1
fixed = runs * (a.total_timesteps / sps + 20)  # env steps + evaluation, cache, probes, start-up (7 s per run measured on an H200)
updates = (base["ssl_steps"] * a.ssl_batch_size * ms["ssl"] + base["lam_steps"] * a.lam_batch_size * ms["lam"]
           + base["bc_steps"] * a.bc_batch_size * ms["bc"]
           + runs * iters * (base["ft_updates"] * a.ft_batch_size * ms["ft"] + base["online_bc_updates"] * a.bc_batch_size * ms["reclone"]))
frac = max(0.0, min(1.0, (remaining - fixed) / updates)) if updates > 0 else 1.0
scaled = {k: (max(1, round(v * frac)) if k in ("ft_updates", "lam_steps", "bc_steps") else round(v * frac)) for k, v in base.items()}
print(json.dumps(dict(fraction=frac, predicted_full_budget_s=fixed + updates, remaining_s=remaining, base=base,
                      scaled=scaled, online_iterations=iters, acting_steps_per_s=sps)))
EOF
)" || { log "error: budget computation failed"; exit 1; }
echo "$PLAN" > "$OUT_DIR/plan.json"
read -r -a SCALED < <("$PYTHON" -c "import json,sys; p=json.load(open(sys.argv[1])); print(' '.join(f'--{k.replace(\"_\",\"-\")} {v}' for k,v in p['scaled'].items()))" "$OUT_DIR/plan.json")
FRACTION=$("$PYTHON" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['fraction'], 4))" "$OUT_DIR/plan.json")
log "budget: fraction $FRACTION of the update counts ($( [ "$TINY" = 1 ] && echo "of the tiny budgets" || echo "of the paper's budgets")): ${SCALED[*]}; env steps, sizes and batch sizes unchanged"

# ---- 4. one game: BCV-LR, then the no-finetune ablation from the same offline pre-training ----
mkdir -p "$OUT_DIR/run"
CMD=("$PYTHON" "$REPO/bcvlr.py" --env-id "$GAME" --seed "$SEED" --video-dir "$OUT_DIR/expert_data/{env_id}" "${LEARNER_FLAGS[@]}" "${SCALED[@]}")
[ "$DEVICE" = cpu ] && CMD+=(--no-cuda)
log "bcvlr: ${CMD[*]}"
(cd "$OUT_DIR/run" && "${CMD[@]}") > "$OUT_DIR/run/bcvlr.log" 2>&1 || { log "error: bcvlr.py failed, see $OUT_DIR/run/bcvlr.log"; tail -5 "$OUT_DIR/run/bcvlr.log"; exit 1; }
RES_B="$(ls -t "$OUT_DIR"/run/runs/*/results.json | head -1)"
log "bcvlr done: $RES_B"
RES_A=""
if [ "$ABLATION" = 1 ]; then
    (cd "$OUT_DIR/run" && "${CMD[@]}" --no-finetune-latent-actions --offline-checkpoint "$(dirname "$RES_B")/offline.pt") \
        > "$OUT_DIR/run/no_finetune.log" 2>&1 || { log "error: the ablation failed, see $OUT_DIR/run/no_finetune.log"; exit 1; }
    RES_A="$(ls -t "$OUT_DIR"/run/runs/*/results.json | head -1)"
    log "no_finetune done: $RES_A"
fi

# ---- 5. OUT_DIR/results.json ----
"$PYTHON" - "$OUT_DIR" "$RES_B" "$RES_A" "$(elapsed)" "$TIME_BUDGET" "$TINY" "${CMD[*]}" <<'EOF' 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
import glob, json, os, sys
import torch
out, res_b, res_a, elapsed, budget, tiny, cmd = sys.argv[1:]
b = json.load(open(res_b))
a = json.load(open(res_a)) if res_a else None
plan = json.load(open(f"{out}/plan.json"))
def summary(r):
    return None if r is None else {k: r[k] for k in ("variant", "episodic_return_mean", "episodic_return_std", "eval_episodes",
                                                     "video_normalized_score", "env_steps", "wall_clock_s")}
results = dict(
    game=b["env_id"], seed=b["seed"], tiny=tiny == "1",
    device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch=torch.__version__,
    budget=dict(fraction=plan["fraction"], paper_budget=tiny != "1" and plan["fraction"] >= 1.0, update_counts=plan["scaled"],
                full_counts=plan["base"], predicted_full_budget_s=plan["predicted_full_budget_s"],
                note="every update count (stages 1-3, L_ft and re-cloning updates per online iteration) times the fraction; "
                     "env steps, network sizes and batch sizes as given"),
    command=cmd, bcvlr=summary(b), no_finetune=summary(a), random_return=b["random_return"], video_return=b["video_return"],
    paper_video_return=b["paper_video_return"], stage_seconds=b["wall_clock_s"],
    bench=sorted(glob.glob(f"{out}/bench_*.json")), tensorboard=sorted(os.path.dirname(p) for p in glob.glob(f"{out}/run/runs/*/events.out.tfevents.*")),
    learner_results=[p for p in (res_b, res_a) if p], total_seconds=int(elapsed), time_budget_s=int(budget),
)
json.dump(results, open(f"{out}/results.json", "w"), indent=2)
ab = f", no_finetune {a['episodic_return_mean']:.2f}" if a else ""
print(f"{results['game']} on {results['device']}: bcvlr {b['episodic_return_mean']:.2f} +- {b['episodic_return_std']:.2f}{ab}, "
      f"random {b['random_return']}, videos {b['video_return']}; budget fraction {plan['fraction']:.3f}; "
      f"stages {b['wall_clock_s']}; total {elapsed}s; {out}/results.json")
EOF
[ -f "$OUT_DIR/results.json" ] || exit 1
log "done in $(elapsed)s"
