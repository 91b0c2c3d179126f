# docs and experiment results can be found at docs/continuous.md
"""BCV-LR: Behavior Cloning from Videos via Latent Representations (single file, DMControl + Metaworld).

Offline, from action-free expert videos: (1) a conv encoder f learns features with a Proto-RL temporal loss,
(2) an inverse dynamics model p with a VQ bottleneck and a U-Net world model w learn latent actions,
(3) a latent policy pi clones p's latent actions. Online, without rewards: every 1000 agent steps p, w and an action
decoder d are fine-tuned on the agent's own transitions, pi is re-cloned on the videos, and the policy is evaluated.

$ python bcvlr_continuous.py --env-id reacher_hard
$ python bcvlr_continuous.py --env-id point_mass_easy --scale cpu --num-threads 1 --no-cuda   # CPU_SCALE below

The pixel environments (DMControl, Metaworld, frame stack) are in continuous_envs.py next to this file.
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported
import copy
import csv
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import trange

from continuous_envs import DMC_ALIASES, JACO_TARGETS, frame_stack, is_metaworld, make_env  # noqa: F401


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=False`"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default"""
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
    """whether to capture videos of the agent performances (check out `videos` folder)"""
    num_threads: int = 0
    """torch CPU threads (1 for each of several runs sharing a machine); 0 = torch's default (all cores)"""
    scale: Literal["paper", "cpu"] = "paper"
    """paper: the official sizes and budgets (the defaults below). cpu: CPU_SCALE's smaller networks, pooled feature
    maps and budgets for one CPU core, every loss, stage and schedule kept (`--scale cpu --help` shows its values)"""
    save_model: bool = True
    """whether to save model into the `runs/{run_name}` folder"""

    # Algorithm specific arguments
    env_id: str = "reacher_hard"
    """DMControl `<domain>_<task>` (reacher_hard, cup_catch, cheetah_run_backward, jaco_reach_top_right) or Metaworld v3 id"""
    total_timesteps: int = -1
    """online budget in env steps (DMControl: frames = agent steps x action repeat); -1 = 100k DMControl, 50k Metaworld"""
    action_repeat: int = -1
    """env steps per agent action (rewards summed); -1 = 2 for DMControl, 1 for Metaworld. Must be the videos' own
    (their info.json's render.action_repeat, checked when present; experts/ --action-repeat records them)"""
    max_episode_steps: int = 0
    """cut episodes after this many agent steps (for quick tests); 0 = the env's own limit (DMC 1000 frames, Metaworld 500)"""
    video_dir: str = "expert_data/{env_id}"
    """folder of expert videos: train/*.npz frame stacks, per-episode npz of single frames, or .mp4/.gif/.webm/.avi files"""
    video_env_ids: tuple[str, ...] = ()
    """multi-task pretraining: env ids whose videos are mixed for stages 1-3 (() = env_id); online uses env_id's videos"""
    num_video_transitions: int = 0
    """use only the first N video frames per env id (Figure 5 / App. C.5 ablation); 0 = all"""
    max_video_memory_gb: float = 16.0
    """memory cap for the video frames of one env id; loading stops (with a message) when it is reached"""
    offline_checkpoint: Optional[str] = None
    """path of an offline.pt from an earlier run: load f, p, w, pi and skip stages 1-3"""

    # Stage 1: encoder pretraining (official YAML: ssl)
    ssl_encoder: bool = True
    """train f with the Proto-RL temporal loss; --no-ssl-encoder = random frozen encoder (ablation)"""
    ssl_steps: int = 50_000
    """stage 1 gradient steps"""
    ssl_batch_size: int = 512
    """stage 1 batch size (video pairs)"""
    ssl_lr: float = 1e-4
    """stage 1 Adam learning rate"""
    aug_pad: int = 4
    """random-shift augmentation padding (pixels)"""
    bilinear_shift: bool = True
    """the official random shift (bilinear resample: slight zoom, half-pixel blur, dark border); `--no-bilinear-shift`:
    DrQ's exact integer crop"""
    num_protos: int = 512
    """number of Proto-RL prototypes"""
    proto_temperature: float = 0.1
    """softmax temperature T of the prototype scores"""
    sinkhorn_iters: int = 3
    """Sinkhorn-Knopp iterations for the target assignments"""
    ssl_tau: float = 0.05
    """EMA rate of the target encoder/projector, updated every step"""
    encoder_channels: int = 32
    """channels of every conv layer of f (features: channels x 32 x 32)"""
    feature_pool: int = 1
    """average-pool f's maps by this factor where p, w and pi read them (cpu scale: 2, 32x32 -> 16x16; stage 1 trains
    on the full maps); 1 = official"""
    feature_norm: bool = False
    """standardise each f-feature (channel and position) by its mean and std over the video frames, measured once after
    stage 1, for p, w and pi (cpu scale; not official: it weights the few features that move as much as the rest)"""
    cache_features: bool = True
    """compute the f-features of all video frames once after stage 1 (f is frozen: the same numbers, faster)"""
    max_feature_cache_gb: float = 4.0
    """largest feature cache; videos whose features need more are encoded batch by batch"""

    # Stage 2: latent action model (official YAML: offline_pt)
    lam_steps: int = 50_000
    """stage 2 gradient steps"""
    lam_batch_size: int = 128
    """stage 2 batch size"""
    lam_lr: float = 3e-4
    """stage 2 AdamW learning rate"""
    lam_grad_clip: float = 2.0
    """stage 2 gradient-norm clip"""
    impala_scale: int = 4
    """IDM IMPALA width multiplier: channels (16, 32, 32) x scale"""
    wm_scale: int = 24
    """U-Net world model base width"""
    wm_tanh: bool = True
    """bound w's output with tanh/2 as the official code does; `--no-wm-tanh`: linear output (f-features are unbounded)"""
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
    """VQ: EMA decay of the codebooks (time constant 1/(1-decay) steps; 0.99 suits runs of a few hundred steps)"""
    probe_every: int = 5000
    """diagnostic only: every N stage-2 steps and after the last, probe latent actions against the videos' true actions
    (if present); 0 = after the last step only"""
    probe_windows: int = 4096
    """diagnostic only: video pairs used by the probe (half to fit it, half to measure its error)"""

    # Stage 3: latent behaviour cloning (official YAML: latent_policy_imitaiton)
    bc_steps: int = 20_000
    """stage 3 gradient steps"""
    bc_batch_size: int = 128
    """stage 3 batch size"""
    bc_lr: float = 2e-4
    """stage 3 AdamW learning rate"""
    policy_hidden: int = 1024
    """hidden width of the policy MLP (DrQ-v2 actor)"""

    # Online: fine-tuning and re-cloning (official YAML: online_ft)
    warmup_steps: int = 999
    """agent steps with uniform random actions before the policy acts"""
    iteration_steps: int = 1000
    """agent steps between two rounds of (fine-tune, re-clone, evaluate)"""
    finetune_latent_actions: bool = True
    """fine-tune p (and w) online with L_ft; --no-finetune-latent-actions = only d is trained on the replay (ablation)"""
    ft_updates: Optional[int] = None
    """L_ft updates per round; default: the official schedule (100 reacher/jaco/Metaworld, else ceil(agent_step / 256))"""
    ft_batch_size: int = 512
    """L_ft batch size (replay pairs)"""
    ft_idm_lr: float = 1e-3
    """Adam learning rate of p online"""
    ft_decoder_lr: float = 1e-3
    """Adam learning rate of the decoder d"""
    ft_wm_coef: Optional[float] = None
    """weight alpha of the dynamics term in L_ft (0 = none); default: official (1e-3 reacher/jaco/Metaworld, else 1e-5)"""
    wm_online_lr: Optional[float] = None
    """Adam learning rate of w online (0 = frozen w); default: official (1e-3 reacher/jaco/Metaworld, else 1e-5)"""
    online_bc_updates: int = 1000
    """policy re-cloning updates per round"""
    online_bc_batch_size: int = 128
    """policy re-cloning batch size (video pairs)"""
    online_bc_lr: float = 1e-3
    """policy re-cloning Adam learning rate"""
    expl_std: float = 0.5
    """std of the Gaussian exploration noise added to d(pi(o)) (official 0.5; the cpu preset 1.0)"""
    eval_episodes: int = 10
    """deterministic evaluation episodes per evaluation"""
    eval_every: int = 1
    """evaluate every this many rounds (and always after the last one); official: every round"""
    buffer_size: int = 100_000
    """replay buffer capacity (frame stacks)"""

    # Controls (not BCV-LR: they learn from the videos' true actions `ta`)
    true_action_bc: bool = False
    """the ceiling: train pi and d on the videos' true actions (MSE) for the stage-3 plus online re-cloning updates;
    no stages 2-4, no env interaction (the videos must carry `ta`)"""
    labelled_video_transitions: int = 0
    """the rebuttal's offline variant (N > 0): L_ft on the first N action-labelled video pairs instead of the agent's
    replay, with the online stage's schedule of L_ft and re-cloning updates, and no env interaction"""

    # to be filled in runtime
    la_dim: int = 0
    """latent action dimension (computed)"""


# `--scale cpu`: sizes and budgets for one core of a small CPU; flags given next to it still win. Measured effects in
# README, "Differences". Online budget: the paper's env steps (env steps are cheap on a CPU, gradient updates are not).
# Exploration: expl_std 1.0, not the official 0.5 (the videos' actions are near +-1 on finger_spin; the replay needs
# such actions for d(p(.)) to decode them). L_ft: 50 updates x 128 pairs per round, 1/8 of the official replay samples:
# with expl_std 1.0 as good as the official count (400) on finger_spin and ~4x faster (with 0.5, 50 learned less);
# cheetah_run_backward learns with both changes, not with expl_std 1.0 alone (README, "Exploration noise").
CPU_SCALE = dict(
    encoder_channels=16, feature_pool=2, impala_scale=1, wm_scale=8, policy_hidden=256, feature_norm=True,
    ssl_steps=300, ssl_batch_size=64, lam_steps=2000, lam_batch_size=64, vq_decay=0.99, wm_tanh=False, probe_every=1000,
    probe_windows=2048, bc_steps=1000, bc_batch_size=64, ft_updates=50, ft_batch_size=128, online_bc_updates=100,
    online_bc_batch_size=64, expl_std=1.0, eval_episodes=5, eval_every=10,
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


class DataError(Exception):
    """Bad input (missing/corrupted videos, unknown env id): reported as one line, exit status 1."""


# ----------------------------------------------------------------------------- environments (continuous_envs.py)
def official_online_schedule(env_id: str):
    """The official run_online.py's per-task online settings, in one place: L_ft updates per round (a function of the
    agent step), weight of the dynamics term, learning rate of w. reacher_* and jaco_*: 100, 1e-3, 1e-3; the other DMC
    tasks: ceil(agent_step / 256), 1e-5, 1e-5. Metaworld (no official code): the reacher values (our guess,
    ../shared/spec/algorithm.md section 10.15)."""
    if env_id.startswith(("reacher", "jaco")) or is_metaworld(env_id):
        return dict(ft_updates=lambda agent_step: 100, ft_wm_coef=1e-3, wm_online_lr=1e-3)
    return dict(ft_updates=lambda agent_step: math.ceil(agent_step / 256), ft_wm_coef=1e-5, wm_online_lr=1e-5)


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


def check_env_id(env_id: str):
    """Raises DataError for an id that is neither a DMControl suite task nor a Metaworld v3 task."""
    if is_metaworld(env_id):
        import metaworld  # noqa: F401  (registers Meta-World/MT1)

        if env_id in metaworld.env_dict.ALL_V3_ENVIRONMENTS:
            return
    else:
        from dm_control import suite

        jaco = {f"jaco_reach_{target}" for target in JACO_TARGETS}
        if env_id in DMC_ALIASES or env_id in jaco or env_id in {f"{d}_{t}" for d, t in suite.ALL_TASKS}:
            return
    raise DataError(
        f"unknown env id '{env_id}': use a DMControl <domain>_<task> id (reacher_hard, finger_spin, cup_catch, "
        "cheetah_run_backward, jaco_reach_bottom_left, ...) or a Metaworld v3 id (drawer-open-v3, reach-v3, ...)"
    )


# ----------------------------------------------------------------------------- data
VIDEO_EXTS = (".mp4", ".gif", ".webm", ".avi")


def expert_command(env_id):
    return f"python experts/{'metaworld' if is_metaworld(env_id) else 'dmc'}_expert.py --env-id {env_id}"


def one_line(e):
    return " ".join(str(e).split())


def stack_frames(frames, k=3):
    """[T, H, W, 3] frames of ONE episode -> [T, 3k, H, W] stacks, oldest first, first frame repeated (like frame_stack)."""
    idx = np.clip(np.arange(len(frames))[:, None] + np.arange(-k + 1, 1)[None, :], 0, None)  # [T, k] source frame ids
    stacks = frames[idx]  # [T, k, H, W, 3]
    t, _, h, w, c = stacks.shape
    return stacks.transpose(0, 1, 4, 2, 3).reshape(t, k * c, h, w)  # [T, k, 3, H, W] -> [T, 3k, H, W]


def resize_frames(frames, size=64):
    """[T, H, W, 3] uint8 -> [T, size, size, 3] uint8 (bilinear with antialiasing), in chunks to bound memory."""
    if frames.shape[1:3] == (size, size):
        return frames
    out = []
    for i in range(0, len(frames), 256):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + 256])).permute(0, 3, 1, 2).float()  # [t, 3, H, W]
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def read_chunk(path: Path):
    """One file -> dict(obs=[N, 9, 64, 64] uint8, done=[N] bool, ta=[N, A] or None, ep_returns=[N] or None)."""
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path) as npz:
                data = {k: npz[k] for k in npz.files}
        else:  # one episode per video file; mp4/webm/avi through ffmpeg, gif through pillow
            import imageio.v3 as iio

            data = {"obs": np.asarray(iio.imread(path, index=None))}
    except Exception as e:
        raise DataError(f"could not read {path} ({type(e).__name__}: {one_line(e)[:200]}); re-create or delete this file")
    if "obs" not in data:
        raise DataError(f"{path} has no 'obs' array (keys: {sorted(data)}); see the data layout in docs/continuous.md")
    obs = data["obs"]
    if path.suffix.lower() != ".npz" and obs.ndim == 4 and obs.shape[-1] == 4:
        obs = obs[..., :3]  # RGBA gif -> RGB
    n = len(obs)
    if n == 0:
        raise DataError(f"{path} holds no frames; re-create or delete this file")
    done = data["done"].astype(bool).reshape(n) if "done" in data and len(data["done"]) == n else np.zeros(n, bool)
    if obs.dtype == np.uint8 and obs.ndim == 4 and obs.shape[1:] == (9, 64, 64):
        stacks = obs  # official layout: already stacked by the recorder
    elif obs.dtype == np.uint8 and obs.ndim == 4 and obs.shape[-1] == 3 and min(obs.shape[1:3]) >= 8:
        frames, ends = resize_frames(obs), np.flatnonzero(done[:-1]) + 1  # single frames; split episodes at `done`
        stacks = np.concatenate([stack_frames(ep) for ep in np.split(frames, ends)])
    else:
        raise DataError(
            f"{path}: obs has shape {obs.shape} and dtype {obs.dtype}; expected uint8 (N, 9, 64, 64) frame stacks "
            "or uint8 (T, H, W, 3) single frames of one episode"
        )
    done[-1] = True  # never pair the last frame of a file with the first frame of the next one
    ta = data.get("ta")
    ta = ta.astype(np.float32).reshape(n, -1) if ta is not None and len(ta) == n else None
    ep_returns = data.get("ep_returns")
    ep_returns = ep_returns.astype(np.float32).reshape(n) if ep_returns is not None and len(ep_returns) == n else None
    return dict(obs=stacks, done=done, ta=ta, ep_returns=ep_returns)


def file_order(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)  # integer stems in numeric order


def stores_labels(num_samples, num_windows):
    """the rule of VideoData.label (and scripts/bench.py): label every pair once when the BC updates draw >= 2x as many"""
    return num_samples >= 2 * num_windows


class VideoData:
    """Expert frame stacks in CPU memory. Pair i = (obs[i], obs[i+1]) is usable only if done[i] is False, so pairs never
    cross an episode end or a file boundary. `ta` (expert actions) is read ONLY by diagnostics."""

    def __init__(self, chunks):
        self.obs = chunks[0]["obs"] if len(chunks) == 1 else np.concatenate([c["obs"] for c in chunks])  # [N, 9, 64, 64] uint8
        self.done = np.concatenate([c["done"] for c in chunks])  # [N] bool
        has_ta = all(c["ta"] is not None for c in chunks) and len({c["ta"].shape[1] for c in chunks}) == 1
        self.ta = np.concatenate([c["ta"] for c in chunks]) if has_ta else None
        has_ret = all(c["ep_returns"] is not None for c in chunks)
        self.ep_returns = np.concatenate([c["ep_returns"] for c in chunks]) if has_ret else None
        self.valid = np.flatnonzero(~self.done)  # [M] indices i of usable pairs (i, i+1)
        self.feats = None  # f-features of every frame [N, C, H, W], once `cache_features` has run
        self.labels = None  # p's latent action of every pair [N, la_dim], while `label` holds them

    def video_return(self):
        """Mean episode return of the videos (from `ep_returns` at each episode's last frame), or None if unknown."""
        return None if self.ep_returns is None else float(self.ep_returns[self.done].mean())

    def sample(self, batch_size, rng):
        return self.valid[rng.integers(0, len(self.valid), size=batch_size)]

    def windows(self, idx, device, frames=2):
        """pair starts [B] -> windows (o_t, o_{t+1}) [B, 2, 9, 64, 64] uint8 on device (frames=1: o_t only)."""
        return torch.from_numpy(self.obs[idx[:, None] + np.arange(frames)]).to(device)

    def window_features(self, idx, encoder, device, frames=2):
        """pair starts [B] -> f-features of (o_t, o_{t+1}) [B, 2, C, H, W], from the cache when there is one."""
        if self.feats is None:
            return encode_window(encoder, self.windows(idx, device, frames))
        return self.feats[torch.from_numpy(idx[:, None] + np.arange(frames)).to(self.feats.device)].to(device)

    @torch.no_grad()
    def label(self, idm, encoder, device, num_samples):
        """p's latent action z of every pair, computed once for the BC updates that follow while p is fixed (stage 3; a
        re-cloning round), when they draw at least twice as many pairs as there are (bcvlr.py's label_windows says
        why twice): exact, the same z (test), and those updates then run pi alone. `labels` [N, la_dim] indexed by
        pair start; None (z per batch) otherwise."""
        self.labels = None
        if not stores_labels(num_samples, len(self.valid)):
            return
        self.labels = torch.zeros(len(self.obs), idm.trunk.head[-1].out_features, device=device)
        for i in np.array_split(self.valid, range(64, len(self.valid), 64)):
            self.labels[torch.from_numpy(i).to(device)] = idm.latent_action(self.window_features(i, encoder, device)).float()

    def bc_batch(self, batch_size, rng, encoder, device):
        """a batch for bc_loss: window features (p labels them), or with labels f(o_t) and the pairs' stored z."""
        idx = self.sample(batch_size, rng)
        if self.labels is None:
            return self.window_features(idx, encoder, device), None
        return self.window_features(idx, encoder, device, frames=1)[:, 0], self.labels[torch.from_numpy(idx).to(device)]

    @torch.no_grad()
    def cache_features(self, encoder, device, max_gb):
        """f is frozen after stage 1, so the features of the video frames are computed once (exact: the same numbers)."""
        gb = len(self.obs) * encoder(torch.from_numpy(self.obs[:1]).to(device))[0].numel() * 4 / 2**30
        if gb > max_gb:
            print(f"feature cache: {gb:.1f} GB > --max-feature-cache-gb {max_gb}; encoding video batches as they are drawn")
            return
        self.feats = torch.cat([encoder(torch.from_numpy(self.obs[i : i + 256]).to(device)) for i in range(0, len(self.obs), 256)])


def load_videos(video_dir, env_id, max_transitions=0, max_gb=16.0):
    """Reads `video_dir/train/*` (or `video_dir/*`): npz frame stacks, npz single frames, or video files."""
    root = Path(video_dir)
    if not root.is_dir():
        raise DataError(f"video folder {root} not found: record videos with `{expert_command(env_id)}` or pass --video-dir")
    folder = root / "train" if (root / "train").is_dir() else root
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".npz",) + VIDEO_EXTS), key=file_order)
    if not files:
        raise DataError(f"no .npz/.mp4/.gif/.webm/.avi files in {folder}: record videos with `{expert_command(env_id)}`")
    chunks, n_frames = [], 0
    for path in files:
        chunk = read_chunk(path)
        room = int(max_gb * 2**30) // chunk["obs"][0].nbytes - n_frames  # frames that still fit under the memory cap
        if room < len(chunk["obs"]) and (max_transitions <= 0 or room < max_transitions - n_frames):
            print(f"memory cap (--max-video-memory-gb {max_gb}): using the first {n_frames + max(room, 0)} frames of {folder}")
        if max_transitions > 0:
            room = min(room, max_transitions - n_frames)
        if room < len(chunk["obs"]):  # keep the first `room` frames; the new last frame ends its episode
            chunk = {k: (v[: max(room, 0)] if v is not None else None) for k, v in chunk.items()}
            chunk["done"][-1:] = True
        if len(chunk["obs"]) > 0:
            chunks.append(chunk)
            n_frames += len(chunk["obs"])
        if room <= len(chunk["obs"]):
            break
    if not chunks:
        raise DataError(f"no frames could be loaded from {folder} (check --num-video-transitions and --max-video-memory-gb)")
    return VideoData(chunks)


class ReplayBuffer:
    """The agent's frame stacks in the same layout as the videos: act[i] was taken at obs[i]; done[i] marks the last
    frame of an episode (stored with a dummy action). Pairs (i, i+1) with done[i] are never sampled; FIFO when full.
    With `store_encoder` = f it keeps f(obs), computed once when added (f is frozen: the same numbers), not the frames."""

    def __init__(self, capacity, obs_shape, act_dim, store_encoder=None):
        self.store_encoder = store_encoder
        if store_encoder is not None:
            obs_shape = self.encode(np.zeros(obs_shape, np.uint8)).shape
        self.obs = np.zeros((capacity, *obs_shape), np.uint8 if store_encoder is None else np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.done = np.ones(capacity, bool)  # unwritten slots count as episode ends, so they are never sampled
        self.capacity, self.pos = capacity, 0

    @torch.no_grad()
    def encode(self, obs):
        device = next(self.store_encoder.parameters()).device
        return self.store_encoder(torch.from_numpy(obs[None]).to(device))[0].cpu().numpy()

    def add(self, obs, action, done, feats=None):
        """feats: f(obs) [1, C, H, W] when the caller has it already (the acting step), else it is computed here."""
        if self.store_encoder is None:
            self.obs[self.pos] = obs
        else:
            self.obs[self.pos] = self.encode(obs) if feats is None else feats[0].cpu().numpy()
        self.act[self.pos], self.done[self.pos] = action, done
        self.pos = (self.pos + 1) % self.capacity

    def sample(self, batch_size, rng, device, encoder):
        """-> f-features of (o_t, o_{t+1}) [B, 2, C, H, W] and a_t [B, A]."""
        newest = (self.pos - 1) % self.capacity  # its successor is not written yet
        valid = np.flatnonzero(~self.done)
        valid = valid[valid != newest]
        idx = valid[rng.integers(0, len(valid), size=batch_size)]
        window = torch.from_numpy(self.obs[np.stack([idx, (idx + 1) % self.capacity], 1)]).to(device)  # (o_t, o_{t+1})
        feats = window if self.store_encoder is not None else encode_window(encoder, window)
        return feats, torch.from_numpy(self.act[idx]).to(device)


# ----------------------------------------------------------------------------- networks (in the order they are trained)
def orthogonal_init(m):
    """DrQ-v2 / Proto-RL init: orthogonal weights (gain sqrt(2) for convs), zero bias."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.orthogonal_(m.weight, gain=nn.init.calculate_gain("relu") if isinstance(m, nn.Conv2d) else 1.0)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def random_shift(x, pad=4, bilinear=True):
    """Random shift by an integer offset in [0, 2 pad] per sample and axis, of the replicate-padded image [B, C, H, H].
    bilinear=True is the official `RandomShiftsAug_nobinliear` (utils.py of both official repos): `grid_sample`
    (bilinear, zero padding, align_corners=False) on the grid linspace(-1, 1, H + 2 pad)[:H] + shift * 2 / (H + 2 pad - 1),
    which lands between pixel centres: a (H+2p)/(H+2p-1) zoom, a half-pixel blur and a thin dark border.
    bilinear=False: DrQ's exact integer crop of the padded image."""
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
    """f: DrQ/Proto-RL conv encoder with padding. [B, 9, 64, 64] (uint8 or float in 0..255) -> maps [B, C, 32, 32]
    (stage 1 trains on these). p, w and pi read the features: the maps average-pooled by `pool` to [B, C, S, S],
    S = 32/pool, minus `feat_mean`, over `feat_std` (0 and 1 = official; the videos' statistics with --feature-norm)."""

    def __init__(self, in_channels=9, channels=32, pool=1):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 3, stride=2, padding=1), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Conv2d(channels, channels, 3, stride=1, padding=1), nn.ReLU()]
        self.convnet = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.register_buffer("feat_mean", torch.zeros(channels, 32 // pool, 32 // pool))
        self.register_buffer("feat_std", torch.ones(channels, 32 // pool, 32 // pool))
        self.apply(orthogonal_init)

    def maps(self, obs):
        return self.convnet(obs.float() / 255.0 - 0.5)

    def forward(self, obs):
        return (self.pool(self.maps(obs)) - self.feat_mean) / self.feat_std


class ProtoSSL(nn.Module):
    """Stage-1 heads of Proto-RL (github.com/denisyarats/proto proto.py) used across time: projector h, predictor g,
    prototypes C, and EMA targets of f and h."""

    def __init__(self, encoder, feat_dim, proj_dim=128, num_protos=512):
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Linear(feat_dim, proj_dim)
        self.predictor = nn.Sequential(nn.Linear(proj_dim, 512), nn.ReLU(), nn.Linear(512, proj_dim))
        self.protos = nn.Linear(proj_dim, num_protos, bias=False)
        for m in (self.projector, self.predictor, self.protos):
            m.apply(orthogonal_init)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def online_parameters(self):
        return [p for m in (self.encoder, self.projector, self.predictor, self.protos) for p in m.parameters()]


class ConvSequence(nn.Module):
    """IMPALA stage: conv 3x3 -> maxpool 3x3 s2 -> 2 residual blocks (halves H and W)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.res0, self.res1 = ResidualBlock(out_ch), ResidualBlock(out_ch)

    def forward(self, x):
        return self.res1(self.res0(F.max_pool2d(self.conv(x), 3, stride=2, padding=1)))


class ImpalaTrunk(nn.Module):
    """[B, C_in, S, S] -> [B, out]: 3 ConvSequences (16, 32, 32) x scale -> flatten -> relu -> 256 -> relu -> out."""

    def __init__(self, in_ch, out_dim, scale=4, size=32):
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
    """p: features of (o_t, o_{t+1}) [B, 2C, 32, 32] -> pre-VQ latent action la [B, 128], plus the VQ."""

    def __init__(self, args, feat_shape):
        super().__init__()
        c, size, _ = feat_shape
        self.trunk = ImpalaTrunk(2 * c, args.la_dim, scale=args.impala_scale, size=size)
        self.vq = VectorQuantizerEMA(args.vq_num_codebooks, args.vq_num_latents, args.vq_dim, args.vq_num_codes,
                                     args.vq_commitment, args.vq_decay)

    def latent_action(self, window_feats):
        """pre-VQ la: [B, 2, C, H, W] -> [B, 2C, H, W] -> [B, la_dim] (what pi clones and d decodes)"""
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
    """pi: its own frozen copy of f -> DrQ-v2 actor trunk (Linear -> 50, LayerNorm, Tanh) -> MLP -> latent action (128)."""

    def __init__(self, encoder, args, feat_dim):
        super().__init__()
        self.encoder = copy.deepcopy(encoder).requires_grad_(False)
        hidden = args.policy_hidden
        self.trunk = nn.Sequential(nn.Linear(feat_dim, 50), nn.LayerNorm(50), nn.Tanh(), nn.Linear(50, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, args.la_dim))

    def forward(self, obs):
        with torch.no_grad():
            feats = self.encoder(obs)
        return self.from_features(feats)

    def from_features(self, feats):
        """[B, C, H, W] f-features (pi's frozen f = f) -> [B, C*H*W] -> [B, 128]"""
        return self.trunk(feats.flatten(1))


def make_decoder(la_dim, act_dim):
    """d: latent action [B, 128] -> action mean [B, A] (no tanh; actions are clipped when acting)."""
    return nn.Sequential(nn.Linear(la_dim, 192), nn.ReLU(), nn.Linear(192, 128), nn.ReLU(), nn.Linear(128, 64),
                         nn.ReLU(), nn.Linear(64, act_dim))


# ----------------------------------------------------------------------------- losses
def sinkhorn_knopp(scores, temperature, iters):
    """[B, K] prototype scores -> [B, K] target assignments (Proto-RL/SwAV): alternately make every prototype get 1/K of
    the mass and every sample 1/B; finally every sample's row sums to 1."""

    def finite(x):  # replace inf by the largest finite value (as Proto-RL does)
        return torch.where(torch.isinf(x), x[torch.isfinite(x)].max(), x)

    q = finite(torch.exp((scores - scores.max()) / temperature)).T  # [K, B]
    q = q / q.sum()
    k, b = q.shape
    for _ in range(iters):
        q = q * finite(1.0 / k / q.sum(dim=1, keepdim=True))  # prototype marginals -> 1/K
        q = q * finite(1.0 / b / q.sum(dim=0, keepdim=True))  # sample marginals -> 1/B
    return (q / q.sum(dim=0, keepdim=True)).T


def proto_temporal_loss(ssl, window, pad, temperature, iters, bilinear=True):
    # Eq. L_lf (DMControl) in the paper (poster): L_lf = -y_{i+1} log x_i  ("Eq. 10" of the appendix), where x_i is the
    # prototype softmax of aug(o_t) (online branch) and y_{i+1} the Sinkhorn assignment of aug'(o_{t+1}) (target branch).
    with torch.no_grad():
        ssl.protos.weight.copy_(F.normalize(ssl.protos.weight, dim=1))  # prototypes stay on the unit sphere
    x, x_next = (random_shift(window[:, i].float(), pad, bilinear) for i in (0, 1))  # [B, 9, 64, 64] each
    s = F.normalize(ssl.predictor(ssl.projector(ssl.encoder.maps(x).flatten(1))), dim=1)  # [B, 128]
    log_x = F.log_softmax(ssl.protos(s) / temperature, dim=1)  # [B, K]
    with torch.no_grad():
        t = F.normalize(ssl.target_projector(ssl.target_encoder.maps(x_next).flatten(1)), dim=1)  # [B, 128]
        y_next = sinkhorn_knopp(ssl.protos(t), temperature, iters)  # [B, K]
    return -(y_next * log_x).sum(dim=1).mean()


@torch.no_grad()
def soft_update(target, source, tau):
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)


def encode_window(encoder, window):
    """frames [B, T, ...] -> f-features [B, T, C, H, W] under no-grad (f is frozen after stage 1)."""
    with torch.no_grad():
        return encoder(window.flatten(0, 1)).unflatten(0, window.shape[:2])


def latent_dynamics_loss(idm, wm, feats):
    """Eq. L_la (poster): ||w(s_t, z^vq) - sg s_{t+1}||^2 + commitment, on f-features [B, 2, C, H, W].
    Returns (loss, pre-VQ la, VQ perplexity)."""
    la, la_q, commit, perplexity = idm(feats)
    pred = wm(feats[:, :-1].flatten(1, 2), la_q)  # context: f(o_t)
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
    """Eq. L_bc (poster): ||pi(o_t) - sg z_t||^2 with z_t = p's pre-VQ latent action of the window [B, 2, C, H, W];
    pi reads f(o_t) from the window (its frozen f is a copy of f, so this equals pi(o_t)). With `target` (z_t from
    VideoData.label), feats is f(o_t) alone [B, C, H, W]."""
    if target is None:
        with torch.no_grad():
            target = idm.latent_action(feats)
        feats = feats[:, -2]  # o_t, the frame before the transition
    return F.mse_loss(policy.from_features(feats), target)


def finetune_loss(idm, wm, decoder, feats, actions, wm_coef, finetune_idm=True):
    """Eq. L_ft (poster), continuous form: ||d(z_t) - a_t||^2 + alpha ||w(s_t, z^vq_t) - s_{t+1}||^2 (+ commitment) on
    the agent's transitions (MSE replaces the poster's cross-entropy for continuous actions).
    Returns (loss, action term, dynamics term). finetune_idm=False (ablation): p is fixed, only d's action term is
    computed (no backward pass through p or w). One pass of p serves both terms (the official code runs p twice)."""
    if finetune_idm:
        dyn, la, _ = latent_dynamics_loss(idm, wm, feats)
    else:
        with torch.no_grad():
            la = idm.latent_action(feats)
        dyn = torch.zeros((), device=feats.device)
    action_loss = F.mse_loss(decoder(la), actions)
    return action_loss + wm_coef * dyn, action_loss, dyn



def explore(mu, std, low, high, rng):
    """Exploration action: clip(d(pi(o)) + std * N(0, I)) to the action space (DrQ-v2 fixed-std noise)."""
    return np.clip(mu + std * rng.standard_normal(mu.shape), low, high).astype(np.float32)


@torch.no_grad()
def act(policy, decoder, obs, device):
    """Deterministic action mean d(pi(o)) for one [9, 64, 64] uint8 observation."""
    return decoder(policy(torch.from_numpy(obs[None]).to(device)))[0].cpu().numpy()


@torch.no_grad()
def probe_latent_actions(idm, encoder, videos, device, n=4096, steps=300, seed=0):
    """Diagnostic only (expert actions are never used for training): fit a fresh MLP from p's latent actions to the
    true actions a_t on the earlier half (in video order) of n video pairs; return its MSE on the later half and that
    of the earlier half's mean action. Split in time, because neighbouring pairs are near copies: a random split would
    let the probe recognise frames instead of reading actions. Uses its own random state, so that running it does not
    change the training run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        idx = np.sort(np.random.default_rng(seed).choice(videos.valid, size=min(n, len(videos.valid)), replace=False))
        n = len(idx)
        was_training = idm.training
        idm.eval()
        las = torch.cat([idm.latent_action(videos.window_features(i, encoder, device)) for i in np.split(idx, range(256, n, 256))])
        idm.train(was_training)
        ta, half = torch.from_numpy(videos.ta[idx]).to(device), n // 2
        probe = nn.Sequential(nn.Linear(las.shape[1], 128), nn.ReLU(), nn.Linear(128, ta.shape[1])).to(device)
        opt = torch.optim.AdamW(probe.parameters(), lr=1e-3)
        with torch.enable_grad():
            for _ in range(steps):
                j = torch.randint(0, half, (min(128, half),), device=device)
                loss = F.mse_loss(probe(las[j]), ta[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
        mean_action = ta[:half].mean(0).expand_as(ta[half:])
        return F.mse_loss(probe(las[half:]), ta[half:]).item(), F.mse_loss(mean_action, ta[half:]).item()


@torch.no_grad()
def evaluate(env, policy, decoder, device, episodes, video_path=None):
    """Deterministic episodes with a = clip(d(pi(o))). Returns (returns, successes); writes episode 0 to video_path (mp4)."""
    returns, successes, frames = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset()
        done, ep_return, success = False, 0.0, False
        while not done:
            action = np.clip(act(policy, decoder, obs, device), env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, info = env.step(action)
            ep_return, success, done = ep_return + reward, success or info.get("success", 0) > 0, terminated or truncated
            if video_path and ep == 0:
                frames.append(np.ascontiguousarray(obs[-3:].transpose(1, 2, 0)))  # newest frame [64, 64, 3]
        returns.append(ep_return)
        successes.append(float(success))
    if video_path and frames:
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(video_path, frames[0].shape[1::-1], fps=30, macro_block_size=16)
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
    return np.array(returns), np.array(successes)


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
    metaworld_task = is_metaworld(args.env_id)
    # the official per-task defaults, resolved here once, so that results.json records the values actually used
    args.action_repeat = args.action_repeat if args.action_repeat > 0 else (1 if metaworld_task else 2)
    args.total_timesteps = args.total_timesteps if args.total_timesteps > 0 else (50_000 if metaworld_task else 100_000)
    official = official_online_schedule(args.env_id)  # the L_ft schedule, unless set by the flags
    for key in ("ft_wm_coef", "wm_online_lr"):
        setattr(args, key, official[key] if getattr(args, key) is None else getattr(args, key))
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    wall = {"ssl": 0.0, "lam": 0.0, "bc": 0.0, "online": 0.0, "eval": 0.0}
    # the online schedule: a round (fine-tune, re-clone, evaluate) every iteration_steps agent steps after the warm-up
    num_agent_steps = args.total_timesteps // args.action_repeat
    round_ends = [s for s in range(args.iteration_steps, num_agent_steps + 1, args.iteration_steps) if s > args.warmup_steps]

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
    rng = np.random.default_rng(args.seed)  # training samples; diagnostics draw from their own generators

    # expert videos: the only supervision. `ta` is read for diagnostics only and never reaches a loss.
    video_env_ids = tuple(args.video_env_ids) or (args.env_id,)
    try:
        for env_id in dict.fromkeys((args.env_id,) + video_env_ids):
            check_env_id(env_id)

        def videos_of(env_id):
            return load_videos(args.video_dir.format(env_id=env_id), env_id, args.num_video_transitions,
                               args.max_video_memory_gb)

        own_videos = videos_of(args.env_id)  # online re-cloning uses env_id's videos
        info_path = os.path.join(args.video_dir.format(env_id=args.env_id), "info.json")  # written by experts/
        if os.path.isfile(info_path):  # the videos' action repeat must be the agent's, or their frame pairs differ
            with open(info_path) as f:
                recorded = (json.load(f).get("render") or {}).get("action_repeat")
            if recorded is not None and recorded != args.action_repeat:
                raise DataError(f"the videos of {args.env_id} were recorded at action repeat {recorded} ({info_path}), "
                                f"the agent acts at {args.action_repeat}: pass --action-repeat {recorded}")
        offline_videos = own_videos  # multi-task pretraining: the videos of all --video-env-ids, mixed
        if video_env_ids != (args.env_id,):
            offline_videos = VideoData([vars(own_videos) if e == args.env_id else vars(videos_of(e)) for e in video_env_ids])
        need = max(args.lam_batch_size, args.bc_batch_size, args.online_bc_batch_size, args.ssl_encoder * args.ssl_batch_size)
        for name, data in (("env_id", own_videos), ("--video-env-ids", offline_videos)):
            if len(data.valid) < need:
                raise DataError(f"only {len(data.valid)} usable frame pairs in the videos of {name}, but a batch needs "
                                f"{need}: record more video or lower the batch sizes")
        for flag, on in (("--true-action-bc", args.true_action_bc), ("--labelled-video-transitions", args.labelled_video_transitions)):
            if on and own_videos.ta is None:
                raise DataError(f"{flag} learns from the videos' true actions, but the videos of {args.env_id} carry none "
                                "(no 'ta' array; the recorders in experts/ write it)")
        if args.true_action_bc and args.labelled_video_transitions:
            raise DataError("--true-action-bc and --labelled-video-transitions are two different controls; pick one")
        ckpt = None
        if args.offline_checkpoint:
            try:
                ckpt = torch.load(args.offline_checkpoint, map_location=device, weights_only=False)
                for key in ("encoder_channels", "feature_pool", "impala_scale", "wm_scale", "policy_hidden"):  # sizes of the checkpoint
                    setattr(args, key, ckpt["args"][key])
            except Exception as e:
                raise DataError(f"could not load --offline-checkpoint {args.offline_checkpoint} "
                                f"({type(e).__name__}: {one_line(e)[:200]})")
    except DataError as e:
        raise SystemExit(f"error: {e}")
    print(f"videos: {len(own_videos.obs)} frames of {args.env_id}, {len(offline_videos.obs)} for pretraining {video_env_ids}")

    run_name = claim_run_dir(run_name)
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{k}|{v}|" for k, v in vars(args).items()])))
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                   name=run_name, save_code=True)
    env = make_env(args.env_id, args.seed, args.action_repeat, args.max_episode_steps)
    eval_env = make_env(args.env_id, args.seed, args.action_repeat, args.max_episode_steps)  # official: the same seed
    act_dim, low, high = env.action_space.shape[0], env.action_space.low, env.action_space.high

    # ALGO LOGIC: networks
    encoder = Encoder(9, args.encoder_channels, args.feature_pool).to(device)
    feat_shape = (args.encoder_channels, 32 // args.feature_pool, 32 // args.feature_pool)
    feat_dim = int(np.prod(feat_shape))
    idm = IDM(args, feat_shape).to(device)
    wm = WorldModel(args.encoder_channels, args.encoder_channels, args.la_dim, size=feat_shape[-1], base=args.wm_scale,
                    tanh=args.wm_tanh).to(device)
    stages_done = 0
    if ckpt is not None:
        encoder.load_state_dict(ckpt["encoder"])
        idm.load_state_dict(ckpt["idm"])
        wm.load_state_dict(ckpt["wm"])
        stages_done = ckpt["stages_done"]
        print(f"loaded {args.offline_checkpoint}: offline stages 1-{stages_done} done")
    policy = LatentPolicy(encoder, args, feat_dim).to(device)
    if stages_done >= 3 and not args.true_action_bc:  # the ceiling clones from scratch, on the checkpoint's f
        policy.load_state_dict(ckpt["policy"])
    decoder = make_decoder(args.la_dim, act_dim).to(device)
    for net in (encoder, idm, wm, policy):
        net.to(memory_format=memory_format)
    for name, net in [("encoder f", encoder), ("IDM p", idm), ("world model w", wm), ("policy pi", policy.trunk),
                      ("decoder d", decoder)]:
        print(f"{name}: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters")

    def save_offline(stage):
        torch.save({"encoder": encoder.state_dict(), "idm": idm.state_dict(), "wm": wm.state_dict(),
                    "policy": policy.state_dict(), "stages_done": stage, "args": vars(args)}, f"runs/{run_name}/offline.pt")

    # ===== STAGE 1: SELF-SUPERVISED ENCODER ON VIDEO FRAMES (Proto-RL across time, poster L_lf) =====
    if stages_done < 1 and args.ssl_encoder:
        t = time.time()
        ssl = ProtoSSL(encoder, args.encoder_channels * 32 * 32, num_protos=args.num_protos).to(device)  # on f's maps
        optimizer = torch.optim.Adam(ssl.online_parameters(), lr=args.ssl_lr)
        for step in (pbar := trange(args.ssl_steps, desc="stage 1: encoder SSL (Proto-RL across time)")):
            window = offline_videos.windows(offline_videos.sample(args.ssl_batch_size, rng), device)  # (o_t, o_{t+1})
            with amp():
                loss = proto_temporal_loss(ssl, window, args.aug_pad, args.proto_temperature, args.sinkhorn_iters,
                                           args.bilinear_shift)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            soft_update(ssl.target_encoder, ssl.encoder, args.ssl_tau)  # every step (Proto-RL: every 2nd)
            soft_update(ssl.target_projector, ssl.projector, args.ssl_tau)
            if step % 100 == 0 or step == args.ssl_steps - 1:
                writer.add_scalar("offline/ssl_loss", loss.item(), step)
                writer.add_scalar("diagnostics/ssl_gap_to_uniform", np.log(args.num_protos) - loss.item(), step)  # 0: collapse
                pbar.set_postfix(loss=f"{loss.item():.4f}")
        del ssl, optimizer
        wall["ssl"] = time.time() - t
    encoder.requires_grad_(False)  # f is frozen from here on (random and frozen with --no-ssl-encoder)
    if stages_done < 1 and args.feature_norm:  # f's output statistics on the videos (part of f from here on)
        sample = encode_window(encoder, offline_videos.windows(offline_videos.sample(2048, rng), device, frames=1))[:, 0]
        encoder.feat_mean.copy_(sample.mean(0))
        encoder.feat_std.copy_(sample.std(0) + 1e-2)
    if stages_done < 1 and args.save_model:
        save_offline(1)
    if args.cache_features:  # exact speed-up: the features of the video frames, computed once
        for videos in {id(v): v for v in (own_videos, offline_videos)}.values():
            videos.cache_features(encoder, device, args.max_feature_cache_gb)
    policy.encoder.load_state_dict(encoder.state_dict())  # pi's own frozen copy of f

    # ===== CONTROL, NOT BCV-LR (--true-action-bc): BEHAVIOUR CLONING ON THE VIDEOS' TRUE ACTIONS, THE CEILING =====
    if args.true_action_bc:  # the same pi (its frozen f copy and trunk) and d, as many updates as stage 3 + online
        t = time.time()
        optimizer = torch.optim.AdamW(list(policy.trunk.parameters()) + list(decoder.parameters()), lr=args.bc_lr)
        for step in (pbar := trange(args.bc_steps + len(round_ends) * args.online_bc_updates, desc="control: true-action BC")):
            idx = own_videos.sample(args.bc_batch_size, rng)
            feats_t = own_videos.window_features(idx, encoder, device, frames=1)[:, 0]  # f(o_t)
            with amp():
                loss = F.mse_loss(decoder(policy.from_features(feats_t)), torch.from_numpy(own_videos.ta[idx]).to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 100 == 0:
                writer.add_scalar("offline/true_action_bc_loss", loss.item(), step)
                pbar.set_postfix(loss=f"{loss.item():.4f}")
        wall["bc"] = time.time() - t
        stages_done, round_ends = 3, round_ends[-1:]  # no latent action model; one round: the final evaluation
        args.ft_updates, args.online_bc_updates = 0, 0  # and no online updates

    # ===== STAGE 2: LATENT ACTIONS FROM VIDEOS: IDM p + VQ + WORLD MODEL w (poster L_la) =====
    if stages_done < 2:
        t = time.time()
        optimizer = torch.optim.AdamW(list(idm.parameters()) + list(wm.parameters()), lr=args.lam_lr)
        for step in (pbar := trange(args.lam_steps, desc="stage 2: latent action model")):
            feats = offline_videos.window_features(offline_videos.sample(args.lam_batch_size, rng), encoder, device)
            with amp():
                loss, _, perplexity = latent_dynamics_loss(idm, wm, feats)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(list(idm.parameters()) + list(wm.parameters()), args.lam_grad_clip)
            optimizer.step()
            if step % 100 == 0 or step == args.lam_steps - 1:
                usage, la_std = latent_action_usage(idm, wm, feats)  # signs of a collapse: about 0 = la unused
                writer.add_scalar("offline/lam_loss", loss.item(), step)
                writer.add_scalar("offline/vq_perplexity", perplexity.item(), step)
                writer.add_scalar("diagnostics/latent_action_usage", usage.item(), step)
                writer.add_scalar("diagnostics/latent_action_std", la_std.item(), step)
                pbar.set_postfix(loss=f"{loss.item():.4f}", perplexity=f"{perplexity.item():.1f}", usage=f"{usage.item():.2g}")
            probe_now = step + 1 == args.lam_steps or (args.probe_every > 0 and (step + 1) % args.probe_every == 0)
            if offline_videos.ta is not None and probe_now:
                probe_mse, mean_mse = probe_latent_actions(idm, encoder, offline_videos, device, n=args.probe_windows)
                writer.add_scalar("diagnostics/latent_action_probe_mse", probe_mse, step)
                writer.add_scalar("diagnostics/mean_action_mse", mean_mse, step)
                pbar.write(f"[diagnostic] lam step {step + 1}: probe MSE {probe_mse:.4f}, mean-action MSE {mean_mse:.4f}")
        wall["lam"] = time.time() - t
        if args.save_model:
            save_offline(2)

    # ===== STAGE 3: LATENT BEHAVIOUR CLONING ON THE VIDEOS (poster L_bc) =====
    idm.eval()  # labels only: no VQ EMA updates
    if stages_done < 3:
        t = time.time()
        bc_optimizer = torch.optim.AdamW(policy.trunk.parameters(), lr=args.bc_lr)
        with amp():
            offline_videos.label(idm, encoder, device, args.bc_steps * args.bc_batch_size)
        if offline_videos.labels is not None:
            print(f"stage 3: p labelled the {len(offline_videos.valid)} video pairs once (exact; the BC updates then run pi alone)")
        for step in (pbar := trange(args.bc_steps, desc="stage 3: latent behaviour cloning")):
            with amp():
                loss = bc_loss(policy, idm, *offline_videos.bc_batch(args.bc_batch_size, rng, encoder, device))
            bc_optimizer.zero_grad()
            loss.backward()
            bc_optimizer.step()
            if step % 100 == 0 or step == args.bc_steps - 1:
                writer.add_scalar("offline/bc_loss", loss.item(), step)
                pbar.set_postfix(loss=f"{loss.item():.4f}")
        wall["bc"] = time.time() - t
        offline_videos.labels = None  # p is fine-tuned online: these labels go stale
        if args.save_model:
            save_offline(3)
            print(f"offline checkpoint saved to runs/{run_name}/offline.pt")

    # ===== STAGE 4: ONLINE, REWARD-FREE: COLLECT, FINE-TUNE LATENT ACTIONS + DECODER, RE-CLONE, EVALUATE =====
    t_online = time.time()
    idm_optimizer = torch.optim.Adam(idm.parameters(), lr=args.ft_idm_lr)
    decoder_optimizer = torch.optim.Adam(decoder.parameters(), lr=args.ft_decoder_lr)
    wm_optimizer = torch.optim.Adam(wm.parameters(), lr=args.wm_online_lr) if args.wm_online_lr > 0 else None
    bc_optimizer = torch.optim.Adam(policy.trunk.parameters(), lr=args.online_bc_lr)
    if args.labelled_video_transitions:  # the rebuttal's offline variant: the replay holds N labelled video pairs
        frames = own_videos.valid[min(args.labelled_video_transitions, len(own_videos.valid)) - 1] + 2  # the first N pairs
        capacity = frames + 1
    else:
        capacity = min(args.buffer_size, 2 * num_agent_steps + 2)
    store_feats = args.cache_features and capacity * feat_dim * 4 <= args.max_feature_cache_gb * 2**30  # exact speed-up
    rb = ReplayBuffer(capacity, env.observation_space.shape, act_dim, encoder if store_feats else None)
    if args.labelled_video_transitions:
        for i in range(frames):
            rb.add(own_videos.obs[i], own_videos.ta[i], own_videos.done[i] or i == frames - 1)
    diag_idx = own_videos.sample(min(1024, len(own_videos.valid)), np.random.default_rng(args.seed))  # fixed pairs
    eval_csv = Path(f"runs/{run_name}/eval.csv")
    with open(eval_csv, "w", newline="") as fh:
        csv.writer(fh).writerow(["env_step", "episodic_return"] + (["success_rate"] if metaworld_task else []))
    evals, interrupted, global_step, agent_step = [], False, 0, 0
    obs, _ = env.reset(seed=args.seed)
    ep_return, ep_len, ep_success = 0.0, 0, False
    try:
        for round_i, round_end in enumerate(round_ends):
            # (a) collect until round_end: uniform-random actions in the warm-up, then clip(d(pi(o_t)) + Gaussian noise);
            # the two controls never touch the env
            while agent_step < round_end and not (args.true_action_bc or args.labelled_video_transitions):
                agent_step += 1
                feats_t = None
                if agent_step <= args.warmup_steps:
                    action = env.action_space.sample()
                else:  # ALGO LOGIC: action logic
                    with torch.no_grad():
                        feats_t = encoder(torch.from_numpy(obs[None]).to(device))  # f(o_t), kept for the replay too
                        mu = decoder(policy.from_features(feats_t))[0].cpu().numpy()  # = d(pi(o_t)): pi's frozen f is f
                    action = explore(mu, args.expl_std, low, high, rng)
                # TRY NOT TO MODIFY: execute the game and log data.
                next_obs, reward, terminated, truncated, info = env.step(action)
                rb.add(obs, action, False, feats_t)
                global_step = agent_step * args.action_repeat
                ep_return, ep_len, ep_success = ep_return + reward, ep_len + 1, ep_success or info.get("success", 0) > 0
                if terminated or truncated:  # rewards are only logged, never used for learning
                    rb.add(next_obs, np.zeros(act_dim, np.float32), True)
                    print(f"global_step={global_step}, episodic_return={ep_return:.1f}")
                    writer.add_scalar("charts/episodic_return", ep_return, global_step)
                    writer.add_scalar("charts/episodic_length", ep_len * args.action_repeat, global_step)
                    if metaworld_task:
                        writer.add_scalar("charts/success", float(ep_success), global_step)
                    next_obs, _ = env.reset()
                    ep_return, ep_len, ep_success = 0.0, 0, False
                obs = next_obs

            # (b) fine-tune p, w (L_ft) and train the decoder d on the agent's own transitions
            num_ft = official["ft_updates"](round_end) if args.ft_updates is None else args.ft_updates
            idm.train(args.finetune_latent_actions), wm.train(args.finetune_latent_actions)
            for _ in range(num_ft):
                feats, actions = rb.sample(args.ft_batch_size, rng, device, encoder)
                with amp():
                    loss, action_loss, dyn = finetune_loss(idm, wm, decoder, feats, actions, args.ft_wm_coef,
                                                           args.finetune_latent_actions)
                for opt in (idm_optimizer, decoder_optimizer, wm_optimizer):
                    if opt is not None:
                        opt.zero_grad()
                loss.backward()
                decoder_optimizer.step()
                if args.finetune_latent_actions:
                    idm_optimizer.step()
                    if wm_optimizer is not None:
                        wm_optimizer.step()
            idm.eval(), wm.eval()
            if num_ft > 0:
                writer.add_scalar("losses/ft_loss", loss.item(), global_step)
                writer.add_scalar("losses/ft_action_loss", action_loss.item(), global_step)
                writer.add_scalar("losses/ft_dynamics", dyn.item(), global_step)
            if own_videos.ta is not None and own_videos.ta.shape[1] == act_dim:  # diagnostic only: vs true a_t
                with torch.no_grad():
                    feats = own_videos.window_features(diag_idx, encoder, device)
                    ta = torch.from_numpy(own_videos.ta[diag_idx]).to(device)
                    decoded = decoder(idm.latent_action(feats))
                    writer.add_scalar("diagnostics/decoded_action_mse", F.mse_loss(decoded, ta).item(), global_step)
                    writer.add_scalar("diagnostics/policy_action_mse",
                                      F.mse_loss(decoder(policy.from_features(feats[:, 0])), ta).item(), global_step)

            # (c) re-clone pi onto the (fine-tuned) latent actions of the videos
            with amp():  # p may have changed (fine-tuned) since the last labels
                own_videos.label(idm, encoder, device, args.online_bc_updates * args.online_bc_batch_size)
            for _ in range(args.online_bc_updates):
                with amp():
                    loss = bc_loss(policy, idm, *own_videos.bc_batch(args.online_bc_batch_size, rng, encoder, device))
                bc_optimizer.zero_grad()
                loss.backward()
                bc_optimizer.step()
            if args.online_bc_updates > 0:
                writer.add_scalar("losses/bc_loss", loss.item(), global_step)

            # (d) evaluate: deterministic policy, actions clipped to the action space
            if (round_i + 1) % args.eval_every and round_i + 1 < len(round_ends):
                continue
            t = time.time()
            video_path = None
            if args.capture_video:
                os.makedirs(f"videos/{run_name}", exist_ok=True)
                video_path = f"videos/{run_name}/eval_{global_step}.mp4"
            returns, successes = evaluate(eval_env, policy, decoder, device, args.eval_episodes, video_path)
            wall["eval"] += time.time() - t
            evals.append(dict(env_step=global_step, returns=returns.tolist(), successes=successes.tolist()))
            writer.add_scalar("eval/episodic_return", returns.mean(), global_step)
            row = [global_step, float(returns.mean())] + ([float(successes.mean())] if metaworld_task else [])
            if metaworld_task:
                writer.add_scalar("eval/success_rate", successes.mean(), global_step)
            with open(eval_csv, "a", newline="") as fh:
                csv.writer(fh).writerow(row)
            sps = int(global_step / (time.time() - t_online))
            writer.add_scalar("charts/SPS", sps, global_step)
            text = f"eval global_step={global_step}: return {returns.mean():.1f} +- {returns.std():.1f}"
            print(text + (f", success {successes.mean():.2f}" if metaworld_task else "") + f", SPS {sps}")
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: saving the current model and results")
    env.close()
    eval_env.close()
    wall["online"] = time.time() - t_online - wall["eval"]

    # ===== RESULTS (the last evaluation) =====
    if args.save_model:
        torch.save({"policy": policy.state_dict(), "decoder": decoder.state_dict(), "idm": idm.state_dict(),
                    "wm": wm.state_dict(), "args": vars(args)}, f"runs/{run_name}/{args.exp_name}.cleanrl_model")
        print(f"model saved to runs/{run_name}/{args.exp_name}.cleanrl_model")
    final = evals[-1] if evals else None
    mean_return = float(np.mean(final["returns"])) if final else None
    video_return = own_videos.video_return()
    if video_return and final:
        writer.add_scalar("eval/normalized_score", mean_return / video_return, global_step)
    results = {
        "env_id": args.env_id, "seed": args.seed, "variant": variant_name(args), "episodic_return_mean": mean_return,
        "episodic_return_std": float(np.std(final["returns"])) if final else None,
        "eval_episodes": len(final["returns"]) if final else 0, "video_return": video_return,
        "video_normalized_score": mean_return / video_return if (final and video_return) else None,
        "env_steps": global_step, "wall_clock_s": {k: round(v, 1) for k, v in wall.items()},
        "interrupted": interrupted, "args": vars(args),
    }
    if metaworld_task:
        results["success_rate"] = float(np.mean(final["successes"])) if final else None
    with open(f"runs/{run_name}/results.json", "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"results: runs/{run_name}/results.json (final eval return {mean_return})")
    writer.close()
