# docs: README.md ("bcvlr.py") and the specification ../shared/spec/algorithm.md (sections 1-3, 6-7)
"""BCV-LR: Behavior Cloning from Videos via Latent Representations (single file, Procgen, discrete actions).

Offline, from action-free and reward-free expert videos:
  stage 1  a self-supervised visual encoder f (CURL contrastive + 0.1 x reconstruction, poster L_lf),
  stage 2  a latent action model: inverse model p + VQ + latent world model w on f-features (poster L_la),
  stage 3  latent behaviour cloning of the policy pi onto p's latent actions (poster L_bc).
Online, with 100k reward-free env steps: fine-tune p and the latent-to-real action decoder d on the agent's own
transitions (poster L_ft), re-clone pi on the videos, collect with a ~ Categorical(d(pi(o))), repeat.
No reward is ever used for learning.

    $ python bcvlr.py --env-id fruitbot
    $ python bcvlr.py --env-id coinrun --scale cpu --num-threads 1      # smaller, pooled, cached: CPU_SCALE below
    $ python bcvlr.py --env-id bigfish --video-env-ids bigfish maze starpilot   # multi-task pre-training (BCV-LR-M)
"""
import contextlib
import copy
import glob
import io
import json
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import trange

# uniform-random and expert-video returns per game, from LAPO's env_utils.py
# (https://github.com/schmidtdominik/LAPO/blob/main/lapo/env_utils.py); used only for reporting
PROCGEN_RETURNS = {
    "bigfish": (0.874, 36.34), "bossfight": (0.046, 11.63), "caveflyer": (2.60, 9.18), "chaser": (0.663, 9.96),
    "climber": (2.22, 10.23), "coinrun": (2.70, 9.93), "dodgeball": (0.613, 13.49), "fruitbot": (-2.53, 29.93),
    "heist": (3.08, 9.69), "jumper": (3.41, 8.46), "leaper": (2.51, 7.41), "maze": (4.27, 9.97),
    "miner": (1.25, 11.89), "ninja": (2.56, 9.47), "plunder": (4.32, 11.46), "starpilot": (1.53, 66.99),
}
NUM_ACTIONS = 15
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi")


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    tf32: bool = True
    """TF32 matmuls and convolutions on CUDA (Ampere or newer: 10-bit-mantissa products, fp32 accumulation);
    --no-tf32 for full fp32. No effect on CPU"""
    bf16: bool = False
    """bfloat16 autocast of the forward pass of every update (weights, optimizer state and the losses' reductions
    stay fp32; the VQ's nearest-code search then runs on bf16 distances). Pays on GPUs and on CPUs with bf16
    arithmetic (AVX512-BF16, AMX); on other CPUs it is emulated and slower"""
    channels_last: bool = True
    """channels_last memory format for the conv networks on CUDA (tensor-core NHWC kernels): the same function, another
    summation order. No effect on CPU (there it measured 1.0-1.4x per update, README "Throughput")"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "bcvlr"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """whether to save mp4 videos of the final evaluation episodes of env 0 to `videos/{run_name}-eval`"""
    scale: Literal["paper", "cpu"] = "paper"
    """paper: the official sizes and budgets (the defaults below). cpu: CPU_SCALE's smaller networks, pooled feature
    maps and budgets for one CPU core, every loss, stage and schedule kept (`--scale cpu --help` shows its values)"""
    num_threads: int = 0
    """torch CPU threads (1 for each of several runs sharing a machine); 0 = torch's default (all cores)"""
    save_model: bool = True
    """whether to save checkpoints into the `runs/{run_name}` folder"""

    # Algorithm specific arguments
    env_id: str = "fruitbot"
    """the Procgen game (one of the 16) on which the policy acts online"""
    total_timesteps: int = 100_000
    """online budget in env steps, summed over all envs, random warm-up included"""
    num_envs: int = 64
    """the number of parallel Procgen environments"""
    num_steps: int = 64
    """vector steps collected per online iteration (num_envs x num_steps env steps)"""
    video_dir: str = "expert_data/{env_id}"
    """folder of expert videos: LAPO npz chunks in train/ (and test/), or video files (.mp4 .gif .webm .avi)"""
    video_env_ids: Tuple[str, ...] = ()
    """multi-task pre-training (BCV-LR-M): pretrain stages 1-3 on the videos of these games (default: env-id only)"""
    num_video_transitions: int = 0
    """use only the first N video frames per game (0 = all; the amount-of-video ablation, poster Figure 5)"""
    max_video_memory_gb: float = 8.0
    """memory cap for the video frames held in RAM (LAPO's full dataset is ~32 GB); extra chunks are skipped"""
    videos_on_gpu: bool = True
    """on CUDA, keep the video frames, their window starts and true actions in GPU memory (at most
    --max-video-memory-gb): batches are sampled and gathered on the GPU, with no host-to-device copy per update"""
    offline_checkpoint: Optional[str] = None
    """path to an `offline.pt`: resume or skip the offline stages it already holds (reuse one pre-training)"""
    eval_episodes: int = 32
    """episodes of the final evaluation (one per env, sampled actions, a fresh env with its own seed)"""

    # Network sizes (paper defaults; shrink for CPU runs)
    impala_scale: int = 4
    """channel multiplier of the IMPALA trunks of p and pi: channels (16, 32, 32) x scale"""
    wm_scale: int = 24
    """base width of the U-Net world model w"""
    wm_tanh: bool = True
    """bound w's output with tanh/2 as the official code does; `--no-wm-tanh`: linear output (f-features are unbounded)"""
    encoder_channels: int = 16
    """channels of the visual encoder f's feature map (C x 64 x 64)"""
    feature_pool: int = 1
    """average-pool f's maps by this factor where p, w and pi read them (cpu scale: 4, 64x64 -> 16x16; stage 1 trains
    on the full maps); 1 = official"""
    feature_norm: bool = False
    """standardise each f-feature (channel and position) by its mean and std over the video frames, measured once after
    stage 1, for p, w and pi (not official; the continuous file's cpu scale uses it: it weights the few features that
    move as much as the rest)"""
    cache_features: bool = True
    """compute the f-features of all video frames once after stage 1 (f is frozen: the same numbers, faster)"""
    max_feature_cache_gb: float = 4.0
    """largest feature cache; videos whose features need more are encoded batch by batch"""

    # Stage 1: self-supervised encoder (CURL + reconstruction)
    ssl_encoder: bool = True
    """pretrain f with L_lf; `--no-ssl-encoder` keeps f random and frozen (ablation, poster Figure 4)"""
    ssl_steps: int = 20_000
    """gradient steps of stage 1"""
    ssl_batch_size: int = 512
    """batch size of stage 1"""
    ssl_lr: float = 3e-5
    """Adam learning rate of stage 1"""
    ssl_recon_coef: float = 0.1
    """weight alpha of the reconstruction term in L_lf"""
    ssl_tau: float = 0.05
    """EMA rate of the target encoder, applied every `ssl_target_every` steps"""
    ssl_target_every: int = 2
    """update period of the target encoder"""
    train_recon_decoder: bool = True
    """train the reconstruction decoder; `--no-train-recon-decoder` keeps it at its random init, as the official code"""
    bilinear_shift: bool = True
    """the official random shift (bilinear resample: slight zoom, half-pixel blur, dark border); `--no-bilinear-shift`:
    DrQ's exact integer crop"""

    # Stage 2: latent action model (IDM p + VQ + world model w)
    lam_steps: int = 10_000
    """gradient steps of stage 2"""
    lam_batch_size: int = 128
    """batch size of stage 2"""
    lam_lr: float = 3e-4
    """AdamW learning rate of stage 2"""
    lam_grad_clip: float = 2.0
    """gradient-norm clip of stage 2"""
    vq_num_codebooks: int = 2
    """VQ: number of codebooks"""
    vq_num_latents: int = 4
    """VQ: discrete latents per codebook"""
    vq_dim: int = 16
    """VQ: dimension of each code (latent action dim = codebooks x latents x dim = 128)"""
    vq_num_codes: int = 64
    """VQ: codes per codebook"""
    vq_commitment: float = 0.05
    """VQ: commitment cost"""
    vq_decay: float = 0.999
    """VQ: EMA decay of the codebooks"""
    probe_every: int = 2_000
    """diagnostic only: every N stage-2 steps and after the last, probe latent actions against the videos' true actions
    (if present); 0 = after the last step only"""
    probe_windows: int = 4096
    """diagnostic only: video windows used by the probe (half to fit it, half to measure its accuracy)"""

    # Stage 3: latent behaviour cloning
    bc_steps: int = 20_000
    """gradient steps of stage 3"""
    bc_batch_size: int = 128
    """batch size of stage 3 and of the online re-cloning"""
    bc_lr: float = 2e-4
    """AdamW learning rate of stage 3 (Adam with the same rate online)"""

    # Online stage
    warmup_steps: int = 64
    """vector steps of uniform-random actions before the first update (counted in the budget)"""
    buffer_size: int = 20_000
    """replay capacity in 3-frame windows (FIFO)"""
    expl_epsilon: float = 0.0
    """share of online actions drawn uniformly at random instead of from d(pi(o)) (0 = the official code, which only
    samples from d(pi(o))); keeps every action in the replay on which L_ft fits p and d"""
    ft_updates: int = 60
    """L_ft updates of p and d per iteration"""
    ft_batch_size: int = 512
    """replay batch size of L_ft"""
    ft_idm_lr: float = 2e-5
    """Adam learning rate of p online"""
    ft_decoder_lr: float = 1e-3
    """Adam learning rate of the decoder d"""
    ft_wm_coef: float = 15.0
    """beta: weight of the latent dynamics term in L_ft (0 = no dynamics term, ablation)"""
    finetune_latent_actions: bool = True
    """fine-tune p online; `--no-finetune-latent-actions` trains only d on replay (ablation, poster Figure 4)"""
    online_bc_updates: int = 500
    """policy re-cloning updates on the videos per iteration"""

    # Controls (not BCV-LR: they learn from the videos' true actions `ta`)
    true_action_bc: bool = False
    """the ceiling: train pi and d on the videos' true actions (cross-entropy) for the stage-3 plus online re-cloning
    updates; no stages 2-4, no env interaction (the videos must carry `ta`)"""
    labelled_video_transitions: int = 0
    """the rebuttal's offline variant (N > 0): L_ft on the first N action-labelled video windows instead of the agent's
    replay, with the online stage's schedule of L_ft and re-cloning updates, and no env interaction"""

    # to be filled in runtime
    la_dim: int = 0
    """latent action dimension (computed)"""


# `--scale cpu`: sizes and budgets for one core of a small CPU; flags given next to it still win. Measured effects in
# README, "Differences". Online budget: the paper's 100k env steps (env steps are cheap on a CPU, updates are not).
CPU_SCALE = dict(
    encoder_channels=8, feature_pool=4, impala_scale=1, wm_scale=8, ssl_steps=500, ssl_batch_size=64, lam_steps=3000,
    lam_batch_size=64, vq_decay=0.99, wm_tanh=False, probe_every=1000, probe_windows=2048, bc_steps=2000,
    bc_batch_size=64, num_envs=64, ft_updates=30, ft_batch_size=128, ft_idm_lr=3e-4, online_bc_updates=100,
)


def parse_args():
    """tyro's CLI, with the `--scale` preset as the defaults (so that `--scale cpu --help` shows the cpu values)."""
    argv, scale = sys.argv[1:], "paper"
    for i, a in enumerate(argv):
        if a.startswith("--scale="):
            scale = a.split("=", 1)[1]
        elif a == "--scale" and i + 1 < len(argv):
            scale = argv[i + 1]
    return tyro.cli(Args, default=Args(scale="cpu", **CPU_SCALE) if scale == "cpu" else Args())


# ============================================================================================
# Errors a user can fix: one line, no traceback
# ============================================================================================
class DataError(Exception):
    """Bad input (videos, shapes, env id); `__main__` prints it as one line and exits with status 1."""


def claim_run_dir(run_name):
    """Create runs/<run_name> and return its name; a run started in the same second with the same env, exp_name and
    seed (e.g. BCV-LR and its ablation side by side) gets <run_name>_2, _3, ... instead of sharing the folder."""
    for k in range(1, 1000):
        name = run_name if k == 1 else f"{run_name}_{k}"
        try:
            os.makedirs(f"runs/{name}")
            return name
        except FileExistsError:
            continue
    raise SystemExit(f"error: runs/{run_name} and 998 suffixed folders already exist")


def variant_name(args):
    """The name of what a run trains, as results.json and run_all.sh call it."""
    if args.true_action_bc:
        return "true_action_bc"
    if args.labelled_video_transitions:  # with p frozen too (--no-finetune-latent-actions): only d learns from the labels
        return "labelled_video" if args.finetune_latent_actions else "labelled_video_no_finetune"
    return "bcvlr" if args.finetune_latent_actions else "no_finetune"


def check_env_id(env_id):
    if env_id not in PROCGEN_RETURNS:
        raise DataError(f"unknown env id '{env_id}'; choose one of the 16 Procgen games: {', '.join(PROCGEN_RETURNS)}")


# ============================================================================================
# Environment
# ============================================================================================
def make_env(env_id, num_envs, seed):
    """64 x 64 RGB Procgen, easy mode, the full level distribution (num_levels=0), native frame skip."""
    with contextlib.redirect_stderr(io.StringIO()):  # procgen imports gym 0.26, which prints a deprecation notice
        from procgen import ProcgenEnv

    return ProcgenEnv(
        num_envs=num_envs, env_name=env_id, num_levels=0, start_level=0, distribution_mode="easy", rand_seed=seed
    )


# ============================================================================================
# Expert videos: LAPO npz chunks or plain video files -> uint8 frames + episode ends
# ============================================================================================
def _read_npz(path):
    try:
        with np.load(path) as z:
            if "obs" not in z.files:
                raise DataError(f"{path} has no 'obs' array (keys: {z.files}); expected LAPO's layout, see README 'Data'")
            d = {k: z[k] for k in ("obs", "ta", "done", "rewards", "ep_returns") if k in z.files}
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"could not read {path} ({type(e).__name__}: {e}); the file is corrupted, delete or replace it")
    obs = d["obs"]
    if obs.ndim != 4 or obs.shape[1:] != (64, 64, 3) or obs.dtype != np.uint8 or len(obs) == 0:
        raise DataError(f"'obs' in {path} has shape {obs.shape} and dtype {obs.dtype}; expected (N, 64, 64, 3) uint8")
    for k in ("ta", "done", "rewards", "ep_returns"):
        if k in d and len(d[k]) != len(obs):
            raise DataError(f"'{k}' in {path} has {len(d[k])} entries but 'obs' has {len(obs)}")
    return d


def _read_video(path):
    import imageio.v3 as iio

    try:
        frames = np.asarray(iio.imread(path, index=None))
    except Exception as e:
        raise DataError(f"could not read video {path} ({type(e).__name__}: {e}); the file is corrupted, delete or replace it")
    if frames.ndim == 3:  # [T, H, W] grayscale -> [T, H, W, 3]
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or len(frames) == 0:
        raise DataError(f"video {path} decodes to shape {frames.shape}; expected frames of shape (T, H, W, 3)")
    frames = frames[..., :3]
    if frames.dtype != np.uint8:
        raise DataError(f"video {path} decodes to dtype {frames.dtype}; expected 8-bit RGB")
    if frames.shape[1:3] != (64, 64):  # [T, H, W, 3] -> [T, 64, 64, 3], area resize
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
        frames = F.interpolate(x, size=(64, 64), mode="area").round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    done = np.zeros(len(frames), dtype=bool)
    done[-1] = True  # one episode per file
    return {"obs": frames, "done": done}


def load_video_dataset(video_dir, split="train", max_frames=0, max_bytes=0, env_id=None):
    """Read the expert videos in `video_dir`. Returns a dict of numpy arrays: obs [N, 64, 64, 3] uint8, done [N] bool
    (True at the last frame of an episode or of a chunk), optional ta [N] (diagnostics only), and `video_return`
    (mean return of the complete episodes, when the data carries rewards) or None."""
    if not os.path.isdir(video_dir):
        raise DataError(f"no expert videos at '{video_dir}'. Make them with `python experts/procgen_expert.py --env-id "
                        f"{env_id or os.path.basename(os.path.normpath(video_dir))}` or download LAPO's dataset (README, 'Data')")
    files = sorted(glob.glob(os.path.join(video_dir, split, "*.npz")), key=lambda p: _numeric_stem(p))
    if not files and split == "train":
        files = sorted(f for ext in VIDEO_EXTENSIONS for d in (video_dir, os.path.join(video_dir, "train"))
                       for f in glob.glob(os.path.join(d, f"*{ext}")))
    if not files:
        if split != "train":
            return None
        raise DataError(f"'{video_dir}' holds no expert videos: expected train/*.npz chunks or video files "
                        f"({' '.join(VIDEO_EXTENSIONS)})")
    limit = min([m for m in (max_frames, int(max_bytes // (64 * 64 * 3))) if m > 0], default=0)  # 0 = no limit
    chunks, n = [], 0
    for path in files:
        if limit and n >= limit:
            print(f"note: {len(files) - len(chunks)} of {len(files)} files in {video_dir} not loaded "
                  "(--num-video-transitions / --max-video-memory-gb)")
            break
        d = _read_npz(path) if path.endswith(".npz") else _read_video(path)
        d.setdefault("done", np.zeros(len(d["obs"]), dtype=bool))
        if limit and n + len(d["obs"]) > limit:
            d = {k: v[: limit - n] for k, v in d.items()}
        d["done"] = d["done"].astype(bool)  # (copy) the last frame of a file ends its episode: no window crosses it
        d["done"][-1] = True
        chunks.append(d)
        n += len(d["obs"])
    data = {"obs": np.concatenate([c["obs"] for c in chunks]), "done": np.concatenate([c["done"] for c in chunks])}
    if all("ta" in c for c in chunks):
        data["ta"] = np.concatenate([c["ta"] for c in chunks]).astype(np.int64).reshape(-1)
    data["video_return"] = _episode_return(chunks)
    return data


def _numeric_stem(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _episode_return(chunks):
    """Mean return of the complete episodes in the videos, from `ep_returns` at episode ends or else from the summed
    `rewards` between episode ends (chunks are expected to start at an episode start); None without rewards."""
    returns = []
    for c in chunks:
        ends = np.flatnonzero(c["done"])
        if "ep_returns" in c:
            returns += list(c["ep_returns"][ends])
        elif "rewards" in c:
            returns += [seg.sum() for seg in np.split(c["rewards"], ends + 1)[: len(ends)]]
    return float(np.mean(returns)) if returns else None


def window_starts(done, window=3):
    """Start indices i of the windows (o_i, ..., o_{i+window-1}) that stay inside one episode:
    no `done` among the first window-1 frames (the last frame may end the episode)."""
    n = len(done) - window + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    crosses = np.zeros(n, dtype=bool)
    for k in range(window - 1):
        crosses |= done[k : k + n]
    return np.flatnonzero(~crosses)


def windows_at(obs, idx, device, window=3):
    """uint8 frames [N, 64, 64, 3] and start indices [B] -> normalised windows [B, window, 3, 64, 64] on `device`."""
    frames = obs[idx[:, None] + torch.arange(window, device=idx.device)]  # [B, T, 64, 64, 3]
    return normalize(frames.to(device).permute(0, 1, 4, 2, 3))  # [B, T, 3, 64, 64]


def sample_starts(starts, batch_size, generator=None):
    """batch_size window starts drawn uniformly, on the device of `starts` (a CPU generator draws on the CPU)"""
    return starts[torch.randint(len(starts), (batch_size,), generator=generator, device="cpu" if generator is not None else starts.device)]


def sample_windows(obs, starts, batch_size, device, generator=None):
    return windows_at(obs, sample_starts(starts, batch_size, generator), device)


def window_features(encoder, obs, idx, device, cache=None, window=3):
    """window starts [B] -> f-features of (o_{t-1}, o_t, o_{t+1}) [B, 3, C, H, W], from the cache when there is one."""
    if cache is None:
        return encode_window(encoder, windows_at(obs, idx, device, window))
    return cache[idx[:, None] + torch.arange(window, device=idx.device)].to(device)


@torch.no_grad()
def cache_features(encoder, obs, device, max_gb):
    """f is frozen after stage 1, so the features of the video frames are computed once (exact: the same numbers)."""
    gb = len(obs) * encoder(normalize(obs[:1].to(device).permute(0, 3, 1, 2)))[0].numel() * 4 / 2**30
    if gb > max_gb:
        print(f"feature cache: {gb:.1f} GB > --max-feature-cache-gb {max_gb}; encoding video batches as they are drawn")
        return None
    return torch.cat([encoder(normalize(obs[i : i + 256].to(device).permute(0, 3, 1, 2))) for i in range(0, len(obs), 256)])


def normalize(x):
    return x.float() / 255.0 - 0.5  # uint8 -> [-0.5, 0.5]


# ============================================================================================
# Networks
# ============================================================================================
def layer_init(layer, gain=np.sqrt(2)):
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        nn.init.orthogonal_(layer.weight, gain)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


def random_shift(x, pad=1, bilinear=True):
    """Random shift by an integer offset in [0, 2 pad] per sample and axis, of the replicate-padded image [B, C, H, H].
    bilinear=True is the official `RandomShiftsAug_nobinliear` (discrete repo, utils.py): `grid_sample` (bilinear, zero
    padding, align_corners=False) on the grid linspace(-1, 1, H + 2 pad)[:H] + shift * 2 / (H + 2 pad - 1), which lands
    between pixel centres: a (H+2p)/(H+2p-1) zoom, a half-pixel blur and a thin dark border. bilinear=False: DrQ's exact
    integer crop of the padded image."""
    b, _, h, w = x.shape
    assert h == w, "random_shift expects square images"
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # [B, C, H+2p, H+2p]
    shift = torch.randint(0, 2 * pad + 1, (b, 1, 1, 2), device=x.device)  # (x, y) offset per sample
    if not bilinear:
        cols = torch.arange(w, device=x.device)[None, None, :] + shift[..., 0]  # [B, 1, W]
        rows = torch.arange(h, device=x.device)[None, :, None] + shift[..., 1]  # [B, H, 1]
        return x[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [B, C, H, W]
    n = h + 2 * pad
    base = torch.linspace(-1.0, 1.0, n, device=x.device, dtype=x.dtype)[:h]
    grid = torch.stack([base[None, :].expand(h, h), base[:, None].expand(h, h)], -1)  # [H, W, (x, y)]
    grid = grid[None] + shift.to(x.dtype) * (2.0 / (n - 1))  # [B, H, W, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), the IMPALA residual block (hidden width optional, as in LAPO's U-Net)."""

    def __init__(self, channels, hidden=None):
        super().__init__()
        hidden = hidden or channels
        self.conv0 = nn.Conv2d(channels, hidden, 3, padding=1)
        self.conv1 = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class Encoder(nn.Module):
    """f: [B, 3, 64, 64] -> maps [B, C, 64, 64]; no final nonlinearity; frozen after stage 1 (which trains on these maps).
    p, w and pi read the features: the maps average-pooled by `pool` to [B, C, S, S], S = 64/pool, minus `feat_mean`,
    over `feat_std` (0 and 1 = official; the videos' statistics with --feature-norm)."""

    def __init__(self, channels=16, pool=1):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), ResidualBlock(channels), ResidualBlock(channels))
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.register_buffer("feat_mean", torch.zeros(channels, 64 // pool, 64 // pool))
        self.register_buffer("feat_std", torch.ones(channels, 64 // pool, 64 // pool))
        self.apply(layer_init)

    def maps(self, x):
        return self.net(x)

    def forward(self, x):
        return (self.pool(self.maps(x)) - self.feat_mean) / self.feat_std


class CURLHead(nn.Module):
    """Projector h (flatten -> 256), predictor g and bilinear W of the contrastive loss (orthogonal init, gain 1, as
    the official code)."""

    def __init__(self, feat_shape, dim=256):
        super().__init__()
        self.projector = layer_init(nn.Linear(int(np.prod(feat_shape)), dim), gain=1.0)
        self.predictor = nn.Sequential(layer_init(nn.Linear(dim, 512), gain=1.0), nn.ReLU(),
                                       layer_init(nn.Linear(512, dim), gain=1.0))
        self.W = layer_init(nn.Linear(dim, dim, bias=False), gain=1.0)


def curl_loss(head, target_projector, feats, target_feats):
    """Eq. L_lf (first term, poster): -log exp(u(s_i)^T W s'_i) / sum_j exp(u(s_i)^T W s'_j); other samples = negatives."""
    q = head.predictor(head.projector(feats.flatten(1)))  # u(s_i): [B, 256]
    with torch.no_grad():
        k = target_projector(target_feats.flatten(1))  # s'_j from the EMA target: [B, 256]
    logits = q @ head.W(k).T  # [B, B]
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


class ReconDecoder(nn.Module):
    """r: features [B, C, 64, 64] -> image [B, 3, 64, 64], for the reconstruction term of L_lf (orthogonal init with
    gain sqrt 2 and zero bias, as the official code; `--no-train-recon-decoder` keeps it at this init)."""

    def __init__(self, channels=16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 3, 3, padding=1), ResidualBlock(3), ResidualBlock(3))
        self.apply(layer_init)

    def forward(self, x):
        return self.net(x)


def recon_loss(recon_decoder, feats, images):
    """Eq. L_lf (second term, poster): ||v(s_i) - aug(o_i)||^2 on the normalised augmented image."""
    return F.mse_loss(recon_decoder(feats), images)


class ConvSequence(nn.Module):
    """IMPALA stage: conv 3x3 -> maxpool 3x3 s2 -> 2 residual blocks (halves H and W)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.res0, self.res1 = ResidualBlock(out_ch), ResidualBlock(out_ch)

    def forward(self, x):
        return self.res1(self.res0(F.max_pool2d(self.conv(x), 3, stride=2, padding=1)))


class ImpalaTrunk(nn.Module):
    """[B, C_in, 64, 64] -> [B, out]: 3 ConvSequences (16, 32, 32) x scale -> flatten -> relu -> 256 -> relu -> out."""

    def __init__(self, in_ch, out_dim, scale=4, size=64):
        super().__init__()
        chans = [in_ch] + [c * scale for c in (16, 32, 32)]
        self.convs = nn.Sequential(*[ConvSequence(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.head = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(chans[-1] * (size // 8) ** 2, 256), nn.ReLU(),
                                  nn.Linear(256, out_dim))

    def forward(self, x):
        return self.head(self.convs(x))


class VectorQuantizerEMA(nn.Module):
    """VQ bottleneck with EMA codebooks, as in LAPO (github.com/schmidtdominik/LAPO lapo/models.py VQEmbeddingEMA).
    la [B, N*D*H] is read, as in the official code, as N codebooks x D dims x H latents; each of the N*H D-vectors is
    replaced by its nearest code of its codebook. Returns la_q (straight-through), the commitment loss
    beta_c ||la - sg(e)||^2 (already weighted) and the perplexity of code usage (summed over codebooks)."""

    def __init__(self, num_codebooks=2, num_latents=4, dim=16, num_codes=64, commitment=0.05, decay=0.999, eps=1e-5):
        super().__init__()
        self.n, self.h, self.d, self.k = num_codebooks, num_latents, dim, num_codes
        self.commitment, self.decay, self.eps = commitment, decay, eps
        init = torch.empty(num_codebooks, num_codes, dim).uniform_(-5 / num_codes, 5 / num_codes)
        self.register_buffer("codebook", init)  # e: [N, K, D]
        self.register_buffer("ema_count", torch.zeros(num_codebooks, num_codes))  # c: [N, K]
        self.register_buffer("ema_weight", init.clone())  # m: [N, K, D]

    def forward(self, la):
        b = la.shape[0]
        x = la.view(b, self.n, self.d, self.h).permute(1, 0, 3, 2).reshape(self.n, b * self.h, self.d)  # [N, B*H, D]
        x_ = x.detach()
        dist = (x_**2).sum(-1, keepdim=True) - 2 * x_ @ self.codebook.transpose(1, 2) + (self.codebook**2).sum(-1)[:, None]
        onehot = F.one_hot(dist.argmin(-1), self.k).type(x.dtype)  # [N, B*H, K]
        quantized = onehot @ self.codebook  # [N, B*H, D]: nearest codes (before this batch's EMA update)
        if self.training:  # EMA codebook update: c <- g c + (1-g) n_k ; Laplace smoothing ; m <- g m + (1-g) sum x
            with torch.no_grad():
                self.ema_count.mul_(self.decay).add_((1 - self.decay) * onehot.sum(1))
                total = self.ema_count.sum(-1, keepdim=True)
                self.ema_count.copy_((self.ema_count + self.eps) / (total + self.k * self.eps) * total)
                self.ema_weight.mul_(self.decay).add_((1 - self.decay) * onehot.transpose(1, 2) @ x_)
                self.codebook.copy_(self.ema_weight / self.ema_count[..., None])
        quantized = quantized.view(self.n, b, self.h, self.d).permute(1, 0, 3, 2).reshape(b, -1)  # [B, N*D*H]
        commit = self.commitment * F.mse_loss(la, quantized.detach())  # beta_c ||la - sg(e)||^2, no codebook loss
        la_q = la + (quantized - la).detach()  # straight-through: la_q = la + sg(e - la)
        usage = onehot.mean(1)  # [N, K]
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum(-1)).sum()
        return la_q, commit, perplexity


class IDM(nn.Module):
    """p: features of (o_{t-1}, o_t, o_{t+1}) [B, 3C, 64, 64] -> pre-VQ latent action la [B, 128], plus the VQ."""

    def __init__(self, args):
        super().__init__()
        self.trunk = ImpalaTrunk(3 * args.encoder_channels, args.la_dim, scale=args.impala_scale, size=64 // args.feature_pool)
        self.vq = VectorQuantizerEMA(args.vq_num_codebooks, args.vq_num_latents, args.vq_dim, args.vq_num_codes,
                                     args.vq_commitment, args.vq_decay)

    def latent_action(self, window_feats):
        """pre-VQ la: [B, 3, C, H, W] -> [B, 3C, H, W] -> [B, la_dim] (what pi clones and d decodes)"""
        return self.trunk(window_feats.flatten(1, 2))

    def forward(self, window_feats):
        la = self.latent_action(window_feats)
        la_q, commit, perplexity = self.vq(la)
        return la, la_q, commit, perplexity


def conv3x3_with_tile(conv, x, v):
    """conv(cat([x, v tiled over H x W], 1)) of a 3x3 padding-1 conv, without building the tile or convolving it: at
    output pixel (i, j) the tiled channels add sum_k W_v[k] v over the kernel taps k that fall inside the image (zero
    padding), and which taps fall inside is separable in rows and columns. Same math, sums in another order (tested to
    1e-5); at the paper's Procgen shapes it removes the 3x3 conv over the 128 tiled channels of w's input, forward
    and backward, 0.73 of the LAM update's 5.75 GFLOP per sample (README, Differences)."""
    c, h, w = x.shape[1], x.shape[-2], x.shape[-1]
    out = F.conv2d(x, conv.weight[:, :c], conv.bias, padding=1)  # [B, O, H, W]: the context channels
    taps = torch.einsum("bv,ovkl->bokl", v, conv.weight[:, c:])  # [B, O, 3, 3]: W_v v per kernel tap

    def inside(n):  # [n, 3]: 1 where tap k of output row i reads input row i + k - 1 inside [0, n)
        i = torch.arange(n, device=x.device)[:, None] + torch.arange(3, device=x.device) - 1
        return ((i >= 0) & (i < n)).to(x.dtype)

    return out + inside(h) @ taps @ inside(w).T  # [H, 3] @ [B, O, 3, 3] @ [3, W] -> [B, O, H, W]


class UNetBlock(nn.Module):
    """conv (or transposed conv, x2 upsampling) -> batchnorm -> residual (hidden = out/2) -> [maxpool] -> relu."""

    def __init__(self, in_ch, out_ch, up=False, pool=False):
        super().__init__()
        conv = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2) if up else nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.net = nn.Sequential(conv, nn.BatchNorm2d(out_ch), ResidualBlock(out_ch, out_ch // 2))
        self.pool = pool

    def forward(self, x, tile=None):
        """tile [B, D]: D more input channels, constant over the image (w's la_q), convolved by conv3x3_with_tile."""
        x = self.net[0](x) if tile is None else conv3x3_with_tile(self.net[0], x, tile)
        x = self.net[2](self.net[1](x))
        return F.relu(F.max_pool2d(x, 2) if self.pool else x)


class WorldModel(nn.Module):
    """w: U-Net from context features [B, C_ctx, S, S] and la_q [B, la_dim] to the next features [B, C, S, S].
    la_q enters twice: tiled over the input, and in place of the deepest skip connection at the 1x1 bottleneck."""

    def __init__(self, ctx_ch, out_ch, la_dim, size=64, base=24, tanh=True):
        super().__init__()
        self.tanh = tanh
        levels = int(np.log2(size)) - 1  # pooled down to 2x2, e.g. 64 -> 32 -> 16 -> 8 -> 4 -> 2 (5 levels)
        widths = [base * 2**i for i in range(levels)]  # 24, 48, 96, 192, 384
        ins = [ctx_ch + la_dim] + widths[:-1]
        self.down = nn.ModuleList([UNetBlock(a, b, pool=True) for a, b in zip(ins, widths)])
        self.bottleneck = nn.Conv2d(widths[-1], 2 * widths[-1], 2)  # 2x2 -> 1x1
        up_in = [2 * widths[-1] + la_dim] + [2 * w for w in reversed(widths)]  # input = cat(previous, skip)
        up_out = list(reversed(widths)) + [widths[0]]  # 384, 192, 96, 48, 24, 24
        self.up = nn.ModuleList([UNetBlock(a, b, up=True) for a, b in zip(up_in, up_out)])
        self.head = nn.Sequential(nn.Conv2d(widths[0] + ctx_ch, base, 3, padding=1), ResidualBlock(base, base // 2),
                                  nn.ReLU(), nn.Conv2d(base, out_ch, 1))

    def forward(self, ctx, la_q):
        x, skips = ctx, []
        for i, block in enumerate(self.down):
            x = block(x, tile=la_q if i == 0 else None)  # first block: conv of cat(ctx, la_q tiled over S x S)
            skips.append(x)
        x = torch.cat([self.bottleneck(x), la_q[:, :, None, None]], 1)  # [B, 2*w_top + la_dim, 1, 1]
        for i, block in enumerate(self.up):
            x = block(x)
            if i < len(skips):
                x = torch.cat([x, skips[-1 - i]], 1)
        out = self.head(torch.cat([x, ctx], 1))
        return torch.tanh(out) / 2 if self.tanh else out  # official: bounded to [-0.5, 0.5] (the targets are not)


class LatentPolicy(nn.Module):
    """pi: o_t [B, 3, 64, 64] -> latent action [B, 128], on top of its own frozen copy of f."""

    def __init__(self, encoder, args):
        super().__init__()
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.trunk = ImpalaTrunk(args.encoder_channels, args.la_dim, scale=args.impala_scale, size=64 // args.feature_pool)

    def forward(self, obs):
        with torch.no_grad():
            feats = self.encoder(obs)
        return self.from_features(feats)

    def from_features(self, feats):
        """[B, C, H, W] f-features (pi's frozen f = f) -> [B, 128]"""
        return self.trunk(feats)


def make_decoder(la_dim, num_actions=NUM_ACTIONS):
    """d: latent action [B, 128] -> action logits [B, 15]. Trained only online, on the agent's own transitions."""
    return nn.Sequential(nn.Linear(la_dim, 192), nn.ReLU(), nn.Linear(192, 128), nn.ReLU(), nn.Linear(128, 64),
                         nn.ReLU(), nn.Linear(64, num_actions))


# ============================================================================================
# Losses of stages 2, 3 and online
# ============================================================================================
def encode_window(encoder, window):
    """frames [B, T, ...] -> f-features [B, T, C, H, W] under no-grad (f is frozen after stage 1)."""
    with torch.no_grad():
        return encoder(window.flatten(0, 1)).unflatten(0, window.shape[:2])


def latent_dynamics_loss(idm, wm, feats):
    """Eq. L_la (poster): ||w(s_{t-1}, s_t, z^vq) - sg s_{t+1}||^2 + commitment, on f-features [B, 3, C, H, W].
    Returns (loss, pre-VQ la, VQ perplexity)."""
    la, la_q, commit, perplexity = idm(feats)
    pred = wm(feats[:, :-1].flatten(1, 2), la_q)  # context: f(o_{t-1}), f(o_t)
    return F.mse_loss(pred, feats[:, -1]) + commit, la, perplexity


@torch.no_grad()
def latent_action_usage(idm, wm, feats):
    """Signs of a collapse (diagnostic, logged and never trained on): (a) how much w's prediction error grows when la_q
    is replaced by its batch mean, about 0 when w ignores the latent action; (b) the across-batch std of p's latent
    actions, about 0 when p outputs a constant. No VQ EMA update (the VQ runs in eval mode here)."""
    la = idm.latent_action(feats)
    vq_training = idm.vq.training
    la_q = idm.vq.eval()(la)[0]
    idm.vq.train(vq_training)
    ctx, target = feats[:, :-1].flatten(1, 2), feats[:, -1]
    mean_la_q = la_q.mean(0, keepdim=True).expand_as(la_q)
    usage = F.mse_loss(wm(ctx, mean_la_q), target) - F.mse_loss(wm(ctx, la_q), target)
    return usage, la.std(0).mean()


def bc_loss(policy, idm, feats, target=None):
    """Eq. L_bc (poster): ||pi(o_t) - sg z_t||^2 with z_t = p's pre-VQ latent action of the window [B, 3, C, H, W];
    pi reads f(o_t) from the window (its frozen f is a copy of f, so this equals pi(o_t)). With `target` (z_t from
    label_windows), feats is f(o_t) alone [B, C, H, W]."""
    if target is None:
        with torch.no_grad():
            target = idm.latent_action(feats)
        feats = feats[:, -2]  # o_t, the frame before the transition
    return F.mse_loss(policy.from_features(feats), target)


def stores_labels(num_samples, num_windows):
    """the rule of label_windows (and scripts/bench*.py): label every window once when the BC updates draw >= 2x as many"""
    return num_samples >= 2 * num_windows


@torch.no_grad()
def label_windows(idm, encoder, obs, starts, device, cache, num_samples):
    """p's latent action z of every video window, computed once for the BC updates that follow while p is fixed
    (stage 3; a re-cloning round), when they draw at least twice as many windows as there are: exact, the same z
    (test), and those updates then run pi alone. [N, la_dim] indexed by window start; None (z per batch) otherwise.
    (Twice: labelling a window costs about what labelling a sample of a batch does, a little more on a CPU, and the
    paper's Procgen re-cloning, 500 x 128 samples for 50k windows, measured slower labelled in advance.)"""
    if not stores_labels(num_samples, len(starts)):
        return None
    labels = torch.zeros(len(obs), idm.trunk.head[-1].out_features, device=device)
    for s in starts.split(64):
        labels[s.to(device)] = idm.latent_action(window_features(encoder, obs, s, device, cache)).float()  # bf16 under --bf16
    return labels


def bc_batch(encoder, obs, starts, batch_size, device, cache, labels):
    """a batch for bc_loss: window features (p labels them), or with labels f(o_t) and the windows' stored z."""
    idx = sample_starts(starts, batch_size)
    if labels is None:
        return window_features(encoder, obs, idx, device, cache), None
    return window_features(encoder, obs, idx + 1, device, cache, window=1)[:, 0], labels[idx.to(labels.device)]


def finetune_loss(idm, wm, decoder, feats, actions, wm_coef, finetune_idm=True):
    """Eq. L_ft (poster): -a_t^T log softmax(d(z_t)) + beta ||w(s_t, z^vq_t) - s_{t+1}||^2 on the agent's transitions.
    Returns (loss, action term, dynamics term). finetune_idm=False (ablation): p is fixed, only d's action term is
    computed (no backward pass through p or w). One pass of p serves both terms (the official code runs p twice)."""
    if finetune_idm:
        dyn, la, _ = latent_dynamics_loss(idm, wm, feats)
    else:
        with torch.no_grad():
            la = idm.latent_action(feats)
        dyn = torch.zeros((), device=feats.device)
    action_loss = F.cross_entropy(decoder(la), actions)
    return action_loss + wm_coef * dyn, action_loss, dyn


@torch.no_grad()
def probe_latent_actions(idm, encoder, obs, starts, actions, device, n=4096, epochs=30, seed=0, cache=None):
    """Diagnostic only (expert actions are never used for training): fit a fresh MLP from p's latent actions to the
    true actions a_t on the earlier half (in video order) of n video windows; return its accuracy on the later half and
    that of always answering the earlier half's most frequent action. Split in time, because neighbouring windows are
    near copies: a random split would let the probe recognise frames instead of reading actions. Uses its own random
    state, so that running it does not change the training run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sel = starts[torch.randperm(len(starts))[:n]].sort().values
        was_training = idm.training
        idm.eval()
        las = torch.cat([idm.latent_action(window_features(encoder, obs, s, device, cache)) for s in sel.split(256)])
        idm.train(was_training)
        las = (las - las.mean(0)) / (las.std(0) + 1e-6)  # standardised latent actions
        y = actions[sel + 1].to(device)  # a_t: the action taken at the middle frame o_t
        half = len(sel) // 2
        probe = nn.Sequential(nn.Linear(las.shape[1], 128), nn.ReLU(), nn.Linear(128, NUM_ACTIONS)).to(device)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-3)
        with torch.enable_grad():
            for _ in range(epochs):
                for b in torch.randperm(half).split(64):
                    loss = F.cross_entropy(probe(las[b]), y[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        majority = torch.bincount(y[:half], minlength=NUM_ACTIONS).argmax()
        return (probe(las[half:]).argmax(-1) == y[half:]).float().mean().item(), (y[half:] == majority).float().mean().item()


def soft_update(target, source, tau):
    for t, s in zip(target.parameters(), source.parameters()):
        t.data.lerp_(s.data, tau)


@torch.no_grad()
def evaluate(policy, decoder, env_id, num_episodes, seed, device, video_path=None):
    """Run `num_episodes` episodes (one per env, sampled actions a ~ Categorical(d(pi(o)))) in a fresh vector env
    whose level sequence comes from its own seed, and return their returns."""
    envs = make_env(env_id, num_episodes, seed)
    obs = envs.reset()["rgb"]
    returns, finished = np.zeros(num_episodes), np.zeros(num_episodes, dtype=bool)
    frames = []
    while not finished.all():
        x = normalize(torch.from_numpy(obs).to(device).permute(0, 3, 1, 2))
        actions = torch.distributions.Categorical(logits=decoder(policy(x))).sample().cpu().numpy()
        if video_path and not finished[0]:
            frames.append(obs[0])
        obs, rew, done, _ = envs.step(actions)
        obs = obs["rgb"]
        returns += rew * ~finished
        finished |= done
    envs.close()
    if video_path:
        write_mp4(video_path, np.stack(frames))
    return returns


def write_mp4(path, frames, scale=4):
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # raised inside imageio-ffmpeg 0.3.0
    import imageio_ffmpeg  # imageio's own mp4 writer fails with imageio-ffmpeg 0.3.0 (spec/dependencies.md section 5)

    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    writer = imageio_ffmpeg.write_frames(path, frames.shape[2:0:-1], fps=15, macro_block_size=16)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()


def interrupt_on_sigterm():
    """`kill` and SLURM's preemption send SIGTERM: raise KeyboardInterrupt instead, so that the run takes Ctrl-C's path
    (online: the model and results.json are saved, marked "interrupted") rather than ending with nothing written.
    A second SIGTERM during that save is ignored (SLURM follows with SIGKILL after its KillWait)."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    args = parse_args()
    interrupt_on_sigterm()
    args.la_dim = args.vq_num_codebooks * args.vq_num_latents * args.vq_dim
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    timings = {}
    # the online schedule: iteration 0 collects the warm-up, every later one num_steps vector steps, until the budget
    vector_steps = -(-args.total_timesteps // args.num_envs)
    num_iterations = 1 + -(-(vector_steps - min(args.warmup_steps, vector_steps)) // args.num_steps)

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.backends.cudnn.benchmark = not args.torch_deterministic  # autotuned (non-deterministic) conv algorithms
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    print(f"torch threads: {torch.get_num_threads()}; scale: {args.scale}")
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    memory_format = torch.channels_last if args.channels_last and device.type == "cuda" else torch.contiguous_format

    def amp():  # --bf16: autocast of an update's forward pass and loss (backward and optimizer step outside it)
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    # expert videos: the only supervision. `ta` is read for diagnostics only and never reaches a loss.
    video_env_ids = args.video_env_ids or (args.env_id,)
    try:
        for env_id in {args.env_id, *video_env_ids}:
            check_env_id(env_id)
        datasets = []
        for env_id in video_env_ids:
            cap = args.max_video_memory_gb * 2**30 / len(video_env_ids)
            datasets.append(load_video_dataset(args.video_dir.format(env_id=env_id), "train", args.num_video_transitions,
                                               cap, env_id))
        obs = torch.from_numpy(np.concatenate([d["obs"] for d in datasets]))  # [N, 64, 64, 3] uint8, kept on CPU
        done = np.concatenate([d["done"] for d in datasets])
        true_actions = torch.from_numpy(np.concatenate([d["ta"] for d in datasets])) if all("ta" in d for d in datasets) else None
        starts = torch.from_numpy(window_starts(done))  # windows (o_{t-1}, o_t, o_{t+1}) inside one episode
        need = max(args.ssl_batch_size, args.lam_batch_size, args.bc_batch_size)
        if len(starts) < need:
            raise DataError(f"the videos of {', '.join(video_env_ids)} give only {len(starts)} usable 3-frame windows but a "
                            f"batch needs {need}; add videos or lower the batch sizes")
        video_return = datasets[video_env_ids.index(args.env_id)]["video_return"] if args.env_id in video_env_ids else None
        if args.offline_checkpoint and not os.path.isfile(args.offline_checkpoint):
            raise DataError(f"--offline-checkpoint {args.offline_checkpoint} does not exist")
        for flag, on in (("--true-action-bc", args.true_action_bc), ("--labelled-video-transitions", args.labelled_video_transitions)):
            if on and true_actions is None:
                raise DataError(f"{flag} learns from the videos' true actions, but the videos of {', '.join(video_env_ids)} "
                                "carry none (no 'ta' array; experts/procgen_expert.py and LAPO's data have it)")
        if args.true_action_bc and args.labelled_video_transitions:
            raise DataError("--true-action-bc and --labelled-video-transitions are two different controls; pick one")
        if not 0.0 <= args.expl_epsilon <= 1.0:
            raise DataError(f"--expl-epsilon is a probability, in [0, 1] (got {args.expl_epsilon})")
    except DataError as e:
        raise SystemExit(f"error: {e}")
    if args.videos_on_gpu and device.type == "cuda":  # gathered on the GPU from here on (see --videos-on-gpu)
        obs, starts = obs.to(device), starts.to(device)
        true_actions = true_actions.to(device) if true_actions is not None else None
    print(f"videos: {len(obs)} frames, {len(starts)} windows from {', '.join(video_env_ids)}; "
          f"demonstrator return {video_return}; true actions for diagnostics: {true_actions is not None}")

    run_name = claim_run_dir(run_name)
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{k}|{v}|" for k, v in vars(args).items()])))
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                   name=run_name, save_code=True)

    # ALGO LOGIC: networks
    encoder = Encoder(args.encoder_channels, args.feature_pool).to(device)
    idm = IDM(args).to(device)
    wm = WorldModel(2 * args.encoder_channels, args.encoder_channels, args.la_dim, size=64 // args.feature_pool, base=args.wm_scale,
                    tanh=args.wm_tanh).to(device)
    stages_done = 0
    if args.offline_checkpoint:
        ckpt = torch.load(args.offline_checkpoint, map_location=device)
        try:
            encoder.load_state_dict(ckpt["encoder"])
            idm.load_state_dict(ckpt["idm"])
            wm.load_state_dict(ckpt["wm"])
        except RuntimeError:
            raise SystemExit(f"error: {args.offline_checkpoint} was made with other network sizes; pass the same "
                             "--impala-scale / --wm-scale / --encoder-channels / --vq-* flags as its run")
        stages_done = ckpt["stages_done"]
        print(f"loaded {args.offline_checkpoint}: offline stages 1-{stages_done} done")
    policy = LatentPolicy(encoder, args).to(device)
    if stages_done >= 3 and not args.true_action_bc:  # the ceiling clones from scratch, on the checkpoint's f
        policy.load_state_dict(ckpt["policy"])
    decoder = make_decoder(args.la_dim).to(device)
    for net in (encoder, idm, wm, policy):
        net.to(memory_format=memory_format)
    for name, net in [("encoder f", encoder), ("IDM p", idm), ("world model w", wm), ("policy pi", policy.trunk),
                      ("decoder d", decoder)]:
        print(f"{name}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters")

    def save_offline(stage):
        torch.save({"encoder": encoder.state_dict(), "idm": idm.state_dict(), "wm": wm.state_dict(),
                    "policy": policy.state_dict(), "stages_done": stage, "args": vars(args)}, f"runs/{run_name}/offline.pt")

    # ===== STAGE 1: SELF-SUPERVISED ENCODER ON VIDEO FRAMES (poster L_lf) =====
    if stages_done < 1 and args.ssl_encoder:
        t = time.time()
        head = CURLHead((args.encoder_channels, 64, 64)).to(device)  # on f's maps
        recon = ReconDecoder(args.encoder_channels).to(device, memory_format=memory_format)
        target_encoder, target_projector = copy.deepcopy(encoder), copy.deepcopy(head.projector)  # EMA targets
        params = list(encoder.parameters()) + list(head.parameters())
        if args.train_recon_decoder:
            params += list(recon.parameters())
        optimizer = torch.optim.Adam(params, lr=args.ssl_lr)
        for step in (pbar := trange(args.ssl_steps, desc="stage 1: encoder SSL (CURL + recon)")):
            o = sample_windows(obs, starts, args.ssl_batch_size, device)[:, 0]  # frame 0 of each window
            x1, x2 = random_shift(o, 1, args.bilinear_shift), random_shift(o, 1, args.bilinear_shift)  # two shifts of o
            with amp():
                feats = encoder.maps(x1)
                with torch.no_grad():
                    target_feats = target_encoder.maps(x2)
                l_c, l_rec = curl_loss(head, target_projector, feats, target_feats), recon_loss(recon, feats, x1)
                loss = l_c + args.ssl_recon_coef * l_rec
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if (step + 1) % args.ssl_target_every == 0:  # after steps 2, 4, 6, ... (official parity)
                soft_update(target_encoder, encoder, args.ssl_tau)
                soft_update(target_projector, head.projector, args.ssl_tau)
            if step % 100 == 0:
                writer.add_scalar("offline/ssl_contrastive_loss", l_c.item(), step)
                writer.add_scalar("offline/ssl_recon_loss", l_rec.item(), step)
                writer.add_scalar("diagnostics/ssl_gap_to_chance", np.log(len(o)) - l_c.item(), step)  # 0 = no signal
                pbar.set_postfix(contrastive=f"{l_c.item():.3f}", recon=f"{l_rec.item():.4f}")
        del head, target_projector, target_encoder, recon, optimizer
        timings["ssl"] = time.time() - t
    encoder.requires_grad_(False)  # f is frozen from here on
    if stages_done < 1 and args.feature_norm:  # f's output statistics on the videos (part of f from here on)
        sample = encode_window(encoder, windows_at(obs, sample_starts(starts, 2048) + 1, device, window=1))[:, 0]  # o_t
        encoder.feat_mean.copy_(sample.mean(0))
        encoder.feat_std.copy_(sample.std(0) + 1e-2)
    if stages_done < 1 and args.save_model:
        save_offline(1)
    cache = cache_features(encoder, obs, device, args.max_feature_cache_gb) if args.cache_features else None  # exact
    policy.encoder.load_state_dict(encoder.state_dict())  # pi's own frozen copy of f

    # ===== CONTROL, NOT BCV-LR (--true-action-bc): BEHAVIOUR CLONING ON THE VIDEOS' TRUE ACTIONS, THE CEILING =====
    if args.true_action_bc:  # the same pi (its frozen f copy and trunk) and d, as many updates as stage 3 + online
        t = time.time()
        optimizer = torch.optim.AdamW(list(policy.trunk.parameters()) + list(decoder.parameters()), lr=args.bc_lr)
        for step in (pbar := trange(args.bc_steps + num_iterations * args.online_bc_updates, desc="control: true-action BC")):
            idx = sample_starts(starts, args.bc_batch_size)
            feats_t = window_features(encoder, obs, idx + 1, device, cache, window=1)[:, 0]  # f(o_t), a window's middle frame
            with amp():
                loss = F.cross_entropy(decoder(policy.from_features(feats_t)), true_actions[idx + 1].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                writer.add_scalar("offline/true_action_bc_loss", loss.item(), step)
                pbar.set_postfix(loss=f"{loss.item():.4f}")
        timings["bc"] = time.time() - t
        stages_done, num_iterations = 3, 0  # no latent action model, no online stage

    # ===== STAGE 2: LATENT ACTIONS FROM VIDEOS: IDM p + VQ + WORLD MODEL w (poster L_la) =====
    if stages_done < 2:
        t = time.time()
        optimizer = torch.optim.AdamW(list(idm.parameters()) + list(wm.parameters()), lr=args.lam_lr)
        for step in (pbar := trange(args.lam_steps, desc="stage 2: latent action model")):
            feats = window_features(encoder, obs, sample_starts(starts, args.lam_batch_size), device, cache)
            with amp():
                loss, _, perplexity = latent_dynamics_loss(idm, wm, feats)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(list(idm.parameters()) + list(wm.parameters()), args.lam_grad_clip)
            optimizer.step()
            if step % 100 == 0:
                usage, la_std = latent_action_usage(idm, wm, feats)  # signs of a collapse: about 0 = la unused
                writer.add_scalar("offline/lam_loss", loss.item(), step)
                writer.add_scalar("offline/vq_perplexity", perplexity.item(), step)
                writer.add_scalar("diagnostics/latent_action_usage", usage.item(), step)
                writer.add_scalar("diagnostics/latent_action_std", la_std.item(), step)
                pbar.set_postfix(loss=f"{loss.item():.4f}", perplexity=f"{perplexity.item():.1f}", usage=f"{usage.item():.2g}")
            probe_now = step + 1 == args.lam_steps or (args.probe_every > 0 and (step + 1) % args.probe_every == 0)
            if true_actions is not None and probe_now:
                acc, majority = probe_latent_actions(idm, encoder, obs, starts, true_actions, device, n=args.probe_windows, cache=cache)
                writer.add_scalar("diagnostics/latent_action_probe_accuracy", acc, step)
                writer.add_scalar("diagnostics/majority_action_accuracy", majority, step)
                pbar.write(f"stage 2 step {step + 1}: probe accuracy of latent actions vs true actions {acc:.3f} "
                           f"(most frequent action {majority:.3f})")
        timings["lam"] = time.time() - t
        if args.save_model:
            save_offline(2)

    # ===== STAGE 3: LATENT BEHAVIOUR CLONING ON THE VIDEOS (poster L_bc) =====
    idm.eval()  # labels only: no VQ EMA updates
    if stages_done < 3:
        t = time.time()
        bc_optimizer = torch.optim.AdamW(policy.trunk.parameters(), lr=args.bc_lr)
        with amp():
            labels = label_windows(idm, encoder, obs, starts, device, cache, args.bc_steps * args.bc_batch_size)
        if labels is not None:
            print(f"stage 3: p labelled the {len(starts)} video windows once (exact; the BC updates then run pi alone)")
        for step in (pbar := trange(args.bc_steps, desc="stage 3: latent behaviour cloning")):
            with amp():
                loss = bc_loss(policy, idm, *bc_batch(encoder, obs, starts, args.bc_batch_size, device, cache, labels))
            bc_optimizer.zero_grad()
            loss.backward()
            bc_optimizer.step()
            if step % 100 == 0:
                writer.add_scalar("offline/bc_loss", loss.item(), step)
                pbar.set_postfix(loss=f"{loss.item():.4f}")
        timings["bc"] = time.time() - t
        if args.save_model:
            save_offline(3)
            print(f"offline checkpoint saved to runs/{run_name}/offline.pt")

    # ===== STAGE 4: ONLINE, REWARD-FREE: FINE-TUNE LATENT ACTIONS + DECODER, RE-CLONE, COLLECT (poster L_ft, L_bc) =====
    t_online = time.time()
    idm_optimizer = torch.optim.Adam(idm.parameters(), lr=args.ft_idm_lr)
    decoder_optimizer = torch.optim.Adam(decoder.parameters(), lr=args.ft_decoder_lr)
    bc_optimizer = torch.optim.Adam(policy.trunk.parameters(), lr=args.bc_lr)
    wm.requires_grad_(False)  # w is a fixed critic online (still in train mode: BatchNorm uses batch statistics)

    # ALGO Logic: Storage setup; replay of windows (o_{t-1}, o_t, o_{t+1}) with a_t, never across an episode end. It keeps
    # the frames, or their f-features when they fit (f is frozen: computed once per frame, the same numbers)
    feat_shape = (args.encoder_channels, 64 // args.feature_pool, 64 // args.feature_pool)
    store_feats = args.cache_features and args.buffer_size * 3 * np.prod(feat_shape) * 4 <= args.max_feature_cache_gb * 2**30

    @torch.no_grad()
    def to_buffer(frames):  # [B, 64, 64, 3] uint8 -> what the replay keeps of each frame
        return encoder(normalize(torch.from_numpy(frames).to(device).permute(0, 3, 1, 2))).cpu().numpy() if store_feats else frames

    buffer_obs = np.zeros((args.buffer_size, 3, *(feat_shape if store_feats else (64, 64, 3))), np.float32 if store_feats else np.uint8)
    buffer_act = np.zeros(args.buffer_size, dtype=np.int64)
    buffer_pos, buffer_full = 0, False
    if args.labelled_video_transitions:  # the rebuttal's offline variant: the replay holds N labelled video windows
        n_labelled = min(args.labelled_video_transitions, len(starts), args.buffer_size)
        buffer_obs[:n_labelled] = (window_features(encoder, obs, starts[:n_labelled], device, cache).cpu().numpy() if store_feats
                                   else obs[starts[:n_labelled, None] + torch.arange(3, device=starts.device)].cpu().numpy())
        buffer_act[:n_labelled] = true_actions[starts[:n_labelled] + 1].cpu().numpy()
        buffer_pos, buffer_full = n_labelled % args.buffer_size, n_labelled == args.buffer_size

    # TRY NOT TO MODIFY: start the game
    envs = make_env(args.env_id, args.num_envs, args.seed)
    next_obs = envs.reset()["rgb"]
    next_item = to_buffer(next_obs)
    prev_item, prev_valid = next_item.copy(), np.zeros(args.num_envs, dtype=bool)  # o_{t-1} in the same episode?
    ep_ret, ep_len = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=int)
    recent_returns, global_step, interrupted = [], 0, False
    diag_generator = torch.Generator().manual_seed(args.seed)  # diagnostics never touch the training RNG
    try:
        for iteration in range(num_iterations):
            # (a) collect: uniform-random actions in the warm-up (iteration 0), then a ~ Categorical(d(pi(o_t)))
            num_steps = min(args.warmup_steps if iteration == 0 else args.num_steps, vector_steps - global_step // args.num_envs)
            num_steps *= not args.labelled_video_transitions  # the labelled-video control never touches the env
            t = time.time()
            for _ in range(num_steps):
                if iteration == 0:
                    action = np.random.randint(NUM_ACTIONS, size=args.num_envs)
                else:  # ALGO LOGIC: action logic
                    with torch.no_grad():
                        feats_t = (torch.from_numpy(next_item).to(device) if store_feats  # f(o_t), kept for the replay
                                   else encoder(normalize(torch.from_numpy(next_obs).to(device).permute(0, 3, 1, 2))))
                        logits = decoder(policy.from_features(feats_t))  # = d(pi(o_t)): pi's frozen f is f
                        action = torch.distributions.Categorical(logits=logits).sample().cpu().numpy()
                    if args.expl_epsilon > 0:  # epsilon-uniform exploration (not in the official code)
                        uniform = np.random.rand(args.num_envs) < args.expl_epsilon
                        action = np.where(uniform, np.random.randint(NUM_ACTIONS, size=args.num_envs), action)
                # TRY NOT TO MODIFY: execute the game and log data.
                item_t = next_item
                next_obs, reward, done, _ = envs.step(action)
                next_obs = next_obs["rgb"]
                next_item = to_buffer(next_obs)
                global_step += args.num_envs
                for i in np.flatnonzero(prev_valid & ~done):  # window (o_{t-1}, o_t, o_{t+1}) inside one episode
                    buffer_obs[buffer_pos] = (prev_item[i], item_t[i], next_item[i])
                    buffer_act[buffer_pos] = action[i]
                    buffer_pos = (buffer_pos + 1) % args.buffer_size
                    buffer_full = buffer_full or buffer_pos == 0
                prev_item, prev_valid = item_t, ~done
                ep_ret, ep_len = ep_ret + reward, ep_len + 1  # rewards are logged, never learned from
                for i in np.flatnonzero(done):
                    print(f"global_step={global_step}, episodic_return={ep_ret[i]:.2f}")
                    writer.add_scalar("charts/episodic_return", ep_ret[i], global_step)
                    writer.add_scalar("charts/episodic_length", ep_len[i], global_step)
                    recent_returns.append((global_step, ep_ret[i]))
                ep_ret[done], ep_len[done] = 0, 0
            if iteration > 0 and num_steps > 0:
                sps = int(args.num_envs * num_steps / (time.time() - t))
                print(f"iteration={iteration}, global_step={global_step}, SPS={sps}")
                writer.add_scalar("charts/SPS", sps, global_step)

            # (b) fine-tune p (L_ft) and train the decoder d on the agent's own transitions
            n = args.buffer_size if buffer_full else buffer_pos
            idm.train(args.finetune_latent_actions)  # VQ EMA updates only when p is fine-tuned
            for _ in range(args.ft_updates if n >= 1 else 0):
                idx = np.random.randint(n, size=min(args.ft_batch_size, n))
                window = torch.from_numpy(buffer_obs[idx]).to(device)
                feats = window if store_feats else encode_window(encoder, normalize(window.permute(0, 1, 4, 2, 3)))
                acts = torch.from_numpy(buffer_act[idx]).to(device)
                with amp():
                    loss, action_loss, dyn = finetune_loss(idm, wm, decoder, feats, acts, args.ft_wm_coef,
                                                           args.finetune_latent_actions)
                idm_optimizer.zero_grad()
                decoder_optimizer.zero_grad()
                loss.backward()
                if args.finetune_latent_actions:
                    idm_optimizer.step()
                decoder_optimizer.step()
            idm.eval()
            if n >= 1 and args.ft_updates > 0:
                writer.add_scalar("losses/ft_loss", loss.item(), global_step)
                writer.add_scalar("losses/ft_action_loss", action_loss.item(), global_step)
                writer.add_scalar("losses/ft_dynamics", dyn.item(), global_step)
            if true_actions is not None:  # diagnostic only: accuracy of d(p(window)) against the videos' true a_t
                with torch.no_grad():
                    idx = starts[torch.randint(len(starts), (512,), generator=diag_generator)]
                    pred = decoder(idm.latent_action(window_features(encoder, obs, idx, device, cache)))
                acc = (pred.argmax(-1) == true_actions[idx + 1].to(pred.device)).float().mean().item()
                writer.add_scalar("diagnostics/decoded_action_accuracy", acc, global_step)

            # (c) re-clone pi onto the (fine-tuned) latent actions of the videos
            with amp():  # p may have changed (fine-tuned) since the last labels
                labels = label_windows(idm, encoder, obs, starts, device, cache, args.online_bc_updates * args.bc_batch_size)
            for _ in range(args.online_bc_updates):
                with amp():
                    loss = bc_loss(policy, idm, *bc_batch(encoder, obs, starts, args.bc_batch_size, device, cache, labels))
                bc_optimizer.zero_grad()
                loss.backward()
                bc_optimizer.step()
            if args.online_bc_updates > 0:
                writer.add_scalar("losses/bc_loss", loss.item(), global_step)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: saving the current model and results")
    envs.close()
    timings["online"] = time.time() - t_online

    # ===== FINAL EVALUATION =====
    if args.save_model:
        torch.save({"policy": policy.state_dict(), "decoder": decoder.state_dict(), "idm": idm.state_dict(),
                    "wm": wm.state_dict(), "args": vars(args)}, f"runs/{run_name}/{args.exp_name}.cleanrl_model")
        print(f"model saved to runs/{run_name}/{args.exp_name}.cleanrl_model")
    t = time.time()
    returns = evaluate(policy, decoder, args.env_id, args.eval_episodes, args.seed + 1_000_003, device,
                       video_path=f"videos/{run_name}-eval/episode0.mp4" if args.capture_video else None)
    timings["eval"] = time.time() - t
    for r in returns:
        writer.add_scalar("eval/episodic_return", r, global_step)
    last = [r for s, r in recent_returns if s > global_step - args.num_envs * args.num_steps]
    results = {
        "env_id": args.env_id, "seed": args.seed, "variant": variant_name(args), "episodic_return_mean": float(returns.mean()),
        "episodic_return_std": float(returns.std()), "eval_episodes": len(returns),
        "train_episodic_return_last_iteration": float(np.mean(last)) if last else None,
        "video_return": video_return,
        "video_normalized_score": float(returns.mean() / video_return) if video_return else None,
        "paper_video_return": PROCGEN_RETURNS[args.env_id][1], "random_return": PROCGEN_RETURNS[args.env_id][0],
        "env_steps": global_step, "wall_clock_s": {k: round(v, 1) for k, v in timings.items()},
        "interrupted": interrupted, "args": vars(args),
    }
    if video_return:
        writer.add_scalar("eval/normalized_score", results["video_normalized_score"], global_step)
    with open(f"runs/{run_name}/results.json", "w") as f:
        json.dump(results, f, indent=2)
    print(f"eval: {results['episodic_return_mean']:.2f} +- {results['episodic_return_std']:.2f} over "
          f"{len(returns)} episodes; results in runs/{run_name}/results.json")
    writer.close()
