# docs: README.md, "Throughput, an offline GPU node and a SLURM cluster (issue 13)"
"""Throughput of BCV-LR's updates: ms per sample of each update type, and env steps per second.

Times exactly the calls the runs make (the networks, losses, optimizers and data paths of bcvlr.py /
bcvlr_continuous.py, imported from them), plus backward and the optimizer step, on synthetic uint8 video frames of
the right shape. Per update type it uses the run's batch size (or --batch-size) and the run's data path: the cached
f-features of the video frames and the feature replay when the run would use them (same size rule as the run), the
frames encoded per batch otherwise ("cached" column); --uncached also times the other path.

    $ python scripts/bench.py --file bcvlr --scale paper --threads 1 --batch-size 32 --out bench.json
    $ python scripts/bench.py --env-id reacher_hard --scale cpu
    $ python scripts/bench.py --file bcvlr --device cuda --iters 50 --out bench_cuda.json
"""
import contextlib
import copy
import importlib
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

UPDATES = ("ssl", "lam", "bc", "ft", "reclone")
# the official code's figures at the paper's Procgen shapes (torch 2.13 CPU, one thread; issue 13), ms per sample
OFFICIAL_CPU_MS = {"ssl": 16.9, "lam": 89.1, "bc": 66.8, "ft": 128.5}


@dataclass
class Args:
    file: Optional[Literal["bcvlr", "bcvlr_continuous"]] = None
    """which learner's updates to time (default: from --env-id; bcvlr when neither is given)"""
    env_id: Optional[str] = None
    """the task (default: the learner's own default); a Procgen game selects bcvlr, anything else bcvlr_continuous"""
    scale: Literal["paper", "cpu"] = "paper"
    """paper: the learner's defaults (the paper's shapes); cpu: its CPU_SCALE preset"""
    set: Tuple[str, ...] = ()
    """extra learner Args overrides, key=value (e.g. impala_scale=1 wm_scale=4), applied after --scale"""
    device: str = "cpu"
    """torch device (cpu, cuda, cuda:1, ...)"""
    threads: int = 1
    """torch CPU threads (0 = torch's default)"""
    batch_size: int = 0
    """batch size of every update (0 = the run's own batch size per update type); results are per sample anyway"""
    warmup: int = 2
    """untimed iterations per update type"""
    iters: int = 5
    """timed iterations per update type (the median is reported)"""
    updates: Tuple[str, ...] = UPDATES
    """update types to time: ssl lam bc ft reclone"""
    uncached: bool = False
    """also time lam, bc, ft and reclone with the frames encoded per batch when the run would use the cache"""
    num_video_frames: int = 0
    """frames of the run's videos, for the cache decision (0 = 50k Procgen / 100k DMC / 50k Metaworld, the expert
    scripts' defaults)"""
    bench_frames: int = 2048
    """synthetic frames actually allocated (samples are drawn from these)"""
    env_steps: int = 512
    """env steps to time (vector steps x envs for Procgen, agent steps for continuous); 0 skips the env rows"""
    channels_last: bool = False
    """every network in torch.channels_last memory format: what the learners do on CUDA (their --channels-last, on by
    default there; on CPU they keep the default layout); scripts/gpu_check.sh benches CUDA with it"""
    seed: int = 1
    """torch / numpy seed"""
    out: Optional[str] = None
    """write the results as JSON here"""


def load_learner(args):
    if args.file is None:
        bcvlr = importlib.import_module("bcvlr")
        args.file = "bcvlr" if args.env_id is None or args.env_id in bcvlr.PROCGEN_RETURNS else "bcvlr_continuous"
    m = importlib.import_module(args.file)
    la = m.Args(scale="cpu", **m.CPU_SCALE) if args.scale == "cpu" else m.Args()
    if args.env_id:
        la.env_id = args.env_id
    fields = la.__dataclass_fields__
    for kv in args.set:
        key, value = kv.split("=", 1)
        key = key.replace("-", "_")
        if key not in fields:
            raise SystemExit(f"error: --set {kv}: {args.file}.Args has no field '{key}'")
        cur = getattr(la, key)
        if isinstance(cur, bool):
            setattr(la, key, value.lower() in ("1", "true", "yes"))
        elif cur is None:  # Optional fields: an int when it reads as one
            setattr(la, key, int(value) if value.lstrip("-").isdigit() else float(value))
        else:
            setattr(la, key, type(cur)(value))
    la.la_dim = la.vq_num_codebooks * la.vq_num_latents * la.vq_dim
    la.cuda = args.device.startswith("cuda")
    return m, la


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_update(step, device, warmup, iters):
    """median seconds of `step()` over `iters` calls after `warmup` calls, CUDA synchronised around each call."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def uses_cache(la, frames, feat_numel):
    """the run's rule (cache_features): the features of all video frames must fit under --max-feature-cache-gb."""
    return bool(la.cache_features and frames * feat_numel * 4 / 2**30 <= la.max_feature_cache_gb)


# ---------------------------------------------------------------------------------------------------------------
# bcvlr.py (Procgen)
# ---------------------------------------------------------------------------------------------------------------
def bench_procgen(m, la, args, device):
    gen = torch.Generator().manual_seed(args.seed)
    n = max(args.bench_frames, 8)
    obs = torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=gen)  # [N, 64, 64, 3] like the videos
    done = np.zeros(n, dtype=bool)
    done[np.arange(99, n, 100)] = True  # episodes of 100 frames
    done[-1] = True
    starts = torch.from_numpy(m.window_starts(done))
    encoder = m.Encoder(la.encoder_channels, la.feature_pool).to(device)
    idm = m.IDM(la).to(device)
    wm = m.WorldModel(2 * la.encoder_channels, la.encoder_channels, la.la_dim, size=64 // la.feature_pool, base=la.wm_scale,
                      tanh=la.wm_tanh).to(device)
    policy = m.LatentPolicy(encoder, la).to(device)
    decoder = m.make_decoder(la.la_dim).to(device)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    for net in (encoder, idm, wm, policy):
        net.to(memory_format=mf)
    feat_shape = (la.encoder_channels, 64 // la.feature_pool, 64 // la.feature_pool)
    feat_numel = int(np.prod(feat_shape))
    video_frames = args.num_video_frames or 50_000
    cached = uses_cache(la, video_frames, feat_numel)
    store_feats = la.cache_features and la.buffer_size * 3 * feat_numel * 4 <= la.max_feature_cache_gb * 2**30
    bs = {"ssl": la.ssl_batch_size, "lam": la.lam_batch_size, "bc": la.bc_batch_size, "ft": la.ft_batch_size,
          "reclone": la.bc_batch_size}
    if args.batch_size:
        bs = {k: args.batch_size for k in bs}
    rows = []

    def ssl():  # stage 1, as the run's loop: CURL + recon on two shifts of o, Adam, EMA targets every ssl_target_every
        nonlocal ssl_step
        o = m.sample_windows(obs, starts, bs["ssl"], device)[:, 0]
        x1, x2 = m.random_shift(o, 1, la.bilinear_shift), m.random_shift(o, 1, la.bilinear_shift)
        feats = ssl_encoder.maps(x1)
        with torch.no_grad():
            target_feats = target_encoder.maps(x2)
        loss = m.curl_loss(head, target_projector, feats, target_feats) + la.ssl_recon_coef * m.recon_loss(recon, feats, x1)
        ssl_opt.zero_grad()
        loss.backward()
        ssl_opt.step()
        ssl_step += 1
        if ssl_step % la.ssl_target_every == 0:
            m.soft_update(target_encoder, ssl_encoder, la.ssl_tau)
            m.soft_update(target_projector, head.projector, la.ssl_tau)

    if "ssl" in args.updates:
        ssl_encoder = copy.deepcopy(encoder).requires_grad_(True)
        head = m.CURLHead((la.encoder_channels, 64, 64)).to(device)
        recon = m.ReconDecoder(la.encoder_channels).to(device, memory_format=mf)
        target_encoder, target_projector = copy.deepcopy(ssl_encoder), copy.deepcopy(head.projector)
        params = list(ssl_encoder.parameters()) + list(head.parameters()) + (list(recon.parameters()) if la.train_recon_decoder else [])
        ssl_opt, ssl_step = torch.optim.Adam(params, lr=la.ssl_lr), 0
        rows.append(dict(update="ssl", batch_size=bs["ssl"], cached=False, seconds=time_update(ssl, device, args.warmup, args.iters)))
        del head, recon, target_encoder, target_projector, ssl_opt, ssl_encoder

    encoder.requires_grad_(False)
    cache = None
    if cached or store_feats or args.uncached:
        cache = m.cache_features(encoder, obs, device, max_gb=float("inf"))
    lam_opt = torch.optim.AdamW(list(idm.parameters()) + list(wm.parameters()), lr=la.lam_lr)
    bc_opt = torch.optim.AdamW(policy.trunk.parameters(), lr=la.bc_lr)
    idm_opt = torch.optim.Adam(idm.parameters(), lr=la.ft_idm_lr)
    dec_opt = torch.optim.Adam(decoder.parameters(), lr=la.ft_decoder_lr)
    reclone_opt = torch.optim.Adam(policy.trunk.parameters(), lr=la.bc_lr)

    def lam(c):
        feats = m.window_features(encoder, obs, m.sample_starts(starts, bs["lam"]), device, c)
        loss, _, _ = m.latent_dynamics_loss(idm, wm, feats)
        lam_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(list(idm.parameters()) + list(wm.parameters()), la.lam_grad_clip)
        lam_opt.step()

    def bc(c, key="bc", opt=bc_opt, labels=None):
        loss = m.bc_loss(policy, idm, *m.bc_batch(encoder, obs, starts, bs[key], device, c, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def bc_labels(c, key):  # the run's rule (label_windows): p labels every video window once when the BC updates of
        # stage 3 / a re-cloning round draw at least twice as many; the labelling, timed on 256 windows, is amortised per sample
        n = (la.bc_steps if key == "bc" else la.online_bc_updates) * la.bc_batch_size
        if not m.stores_labels(n, video_frames):
            return None, 0.0
        sync(device)
        t = time.perf_counter()
        part = m.label_windows(idm, encoder, obs, starts[:256], device, c, num_samples=n)
        sync(device)
        return part, (time.perf_counter() - t) / min(256, len(starts)) * video_frames / n

    # the online replay (frames, or their f-features when they fit), filled with the videos' windows
    rb_n = min(la.buffer_size, len(starts), 512)
    rb_frames = obs[starts[:rb_n, None] + torch.arange(3)].numpy()  # [n, 3, 64, 64, 3] uint8
    rb_feats = cache[starts[:rb_n, None] + torch.arange(3)].cpu().numpy() if cache is not None else None
    rb_act = np.random.default_rng(args.seed).integers(0, m.NUM_ACTIONS, rb_n)

    def ft(feat_replay):  # the run's loop body of (b): L_ft on the agent's replay, p and d stepped
        idx = np.random.randint(rb_n, size=min(bs["ft"], rb_n))
        window = torch.from_numpy((rb_feats if feat_replay else rb_frames)[idx]).to(device)
        feats = window if feat_replay else m.encode_window(encoder, m.normalize(window.permute(0, 1, 4, 2, 3)))
        acts = torch.from_numpy(rb_act[idx]).to(device)
        loss, _, _ = m.finetune_loss(idm, wm, decoder, feats, acts, la.ft_wm_coef, la.finetune_latent_actions)
        idm_opt.zero_grad()
        dec_opt.zero_grad()
        loss.backward()
        if la.finetune_latent_actions:
            idm_opt.step()
        dec_opt.step()

    for name in ("lam", "bc", "ft", "reclone"):
        if name not in args.updates:
            continue
        run_cached = store_feats if name == "ft" else cached
        for c in [run_cached] + ([not run_cached] if args.uncached else []):
            if name == "lam":
                idm.train(), wm.train()
                wm.requires_grad_(True)
                fn = lambda: lam(cache if c else None)  # noqa: E731
            elif name == "bc":
                idm.eval()
                labels, label_s = bc_labels(cache if c else None, "bc")
                fn = lambda: bc(cache if c else None, labels=labels)  # noqa: E731
            elif name == "ft":
                idm.train(la.finetune_latent_actions)
                wm.requires_grad_(False)  # w is a fixed critic online
                fn = lambda: ft(c)  # noqa: E731
            else:
                idm.eval()
                labels, label_s = bc_labels(cache if c else None, "reclone")
                fn = lambda: bc(cache if c else None, "reclone", reclone_opt, labels)  # noqa: E731
            rows.append(dict(update=name, batch_size=bs[name], cached=bool(c), run_path=bool(c == run_cached),
                             seconds=time_update(fn, device, args.warmup, args.iters)))
            if name in ("bc", "reclone"):
                rows[-1].update(stored_labels=labels is not None, label_seconds_per_sample=label_s)

    envs = []
    if args.env_steps > 0:
        envs = env_rows_procgen(m, la, args, device, encoder, policy, decoder, store_feats)
    return rows, envs, dict(feature_shape=list(feat_shape), video_frames_assumed=video_frames, video_cache=cached,
                            feature_replay=bool(store_feats))


def env_rows_procgen(m, la, args, device, encoder, policy, decoder, store_feats):
    """vector env steps/s: random actions (the env alone), and the run's acting step (f, pi, d on the GPU/CPU, the
    sampled action, env step, the replay's per-frame encoding when it stores features)."""
    envs = m.make_env(la.env_id, la.num_envs, args.seed)
    next_obs = envs.reset()["rgb"]
    vsteps = max(1, args.env_steps // la.num_envs)
    out = []
    for mode in ("random", "acting"):
        t = time.perf_counter()
        for _ in range(vsteps):
            if mode == "random":
                action = np.random.randint(m.NUM_ACTIONS, size=la.num_envs)
            else:
                with torch.no_grad():
                    feats_t = encoder(m.normalize(torch.from_numpy(next_obs).to(device).permute(0, 3, 1, 2)))
                    logits = decoder(policy.from_features(feats_t))
                    action = torch.distributions.Categorical(logits=logits).sample().cpu().numpy()
            next_obs = envs.step(action)[0]["rgb"]
            if mode == "acting" and store_feats:
                with torch.no_grad():
                    encoder(m.normalize(torch.from_numpy(next_obs).to(device).permute(0, 3, 1, 2))).cpu()
        sync(device)
        dt = time.perf_counter() - t
        out.append(dict(env=f"procgen {la.env_id} x{la.num_envs} ({mode})", env_steps=vsteps * la.num_envs,
                        steps_per_s=vsteps * la.num_envs / dt))
    envs.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
# bcvlr_continuous.py (DMControl, Metaworld)
# ---------------------------------------------------------------------------------------------------------------
def bench_continuous(m, la, args, device):
    metaworld_task = m.is_metaworld(la.env_id)
    official = m.official_online_schedule(la.env_id)
    for key in ("ft_wm_coef", "wm_online_lr"):
        setattr(la, key, official[key] if getattr(la, key) is None else getattr(la, key))
    la.action_repeat = la.action_repeat if la.action_repeat > 0 else (1 if metaworld_task else 2)
    la.total_timesteps = la.total_timesteps if la.total_timesteps > 0 else (50_000 if metaworld_task else 100_000)
    act_dim = 4 if metaworld_task else 2  # the shapes of reacher/Metaworld; d's last layer only
    rng = np.random.default_rng(args.seed)
    n = max(args.bench_frames, 8)
    frames = rng.integers(0, 256, (n, 9, 64, 64), dtype=np.uint8)
    done = np.zeros(n, dtype=bool)
    done[np.arange(99, n, 100)] = True  # episodes of 100 frames; the last frame ends one, as in the loaders
    done[-1] = True
    videos = m.VideoData([dict(obs=frames, done=done, ta=None, ep_returns=None)])
    encoder = m.Encoder(9, la.encoder_channels, la.feature_pool).to(device)
    feat_shape = (la.encoder_channels, 32 // la.feature_pool, 32 // la.feature_pool)
    feat_dim = int(np.prod(feat_shape))
    idm = m.IDM(la, feat_shape).to(device)
    wm = m.WorldModel(la.encoder_channels, la.encoder_channels, la.la_dim, size=feat_shape[-1], base=la.wm_scale,
                      tanh=la.wm_tanh).to(device)
    policy = m.LatentPolicy(encoder, la, feat_dim).to(device)
    decoder = m.make_decoder(la.la_dim, act_dim).to(device)
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    for net in (encoder, idm, wm, policy):
        net.to(memory_format=mf)
    video_frames = args.num_video_frames or (50_000 if metaworld_task else 100_000)
    cached = uses_cache(la, video_frames, feat_dim)
    capacity = min(la.buffer_size, 2 * (la.total_timesteps // la.action_repeat) + 2)
    store_feats = bool(la.cache_features and capacity * feat_dim * 4 <= la.max_feature_cache_gb * 2**30)
    bs = {"ssl": la.ssl_batch_size, "lam": la.lam_batch_size, "bc": la.bc_batch_size, "ft": la.ft_batch_size,
          "reclone": la.online_bc_batch_size}
    if args.batch_size:
        bs = {k: args.batch_size for k in bs}
    rows = []

    if "ssl" in args.updates:
        ssl = m.ProtoSSL(copy.deepcopy(encoder).requires_grad_(True), la.encoder_channels * 32 * 32, num_protos=la.num_protos).to(device)
        ssl_opt = torch.optim.Adam(ssl.online_parameters(), lr=la.ssl_lr)

        def ssl_step():  # stage 1, as the run's loop: Proto-RL across time, Adam, EMA targets every step
            window = videos.windows(videos.sample(bs["ssl"], rng), device)
            loss = m.proto_temporal_loss(ssl, window, la.aug_pad, la.proto_temperature, la.sinkhorn_iters, la.bilinear_shift)
            ssl_opt.zero_grad()
            loss.backward()
            ssl_opt.step()
            m.soft_update(ssl.target_encoder, ssl.encoder, la.ssl_tau)
            m.soft_update(ssl.target_projector, ssl.projector, la.ssl_tau)

        rows.append(dict(update="ssl", batch_size=bs["ssl"], cached=False, seconds=time_update(ssl_step, device, args.warmup, args.iters)))
        del ssl, ssl_opt

    encoder.requires_grad_(False)
    if cached or args.uncached:
        with contextlib.redirect_stdout(io.StringIO()):
            videos.cache_features(encoder, device, max_gb=float("inf"))
    feats_cache = videos.feats
    lam_opt = torch.optim.AdamW(list(idm.parameters()) + list(wm.parameters()), lr=la.lam_lr)
    bc_opt = torch.optim.AdamW(policy.trunk.parameters(), lr=la.bc_lr)
    idm_opt = torch.optim.Adam(idm.parameters(), lr=la.ft_idm_lr)
    dec_opt = torch.optim.Adam(decoder.parameters(), lr=la.ft_decoder_lr)
    wm_opt = torch.optim.Adam(wm.parameters(), lr=la.wm_online_lr) if la.wm_online_lr > 0 else None
    reclone_opt = torch.optim.Adam(policy.trunk.parameters(), lr=la.online_bc_lr)

    # the replay (frames, or f-features when the run's capacity fits), filled with the videos' stacks
    rb_cap = min(capacity, n)
    replays = {}
    for c in (store_feats, not store_feats) if args.uncached else (store_feats,):
        rb = m.ReplayBuffer(rb_cap, (9, 64, 64), act_dim, encoder if c else None)
        if c:
            rb.obs[:] = np.random.default_rng(0).standard_normal(rb.obs.shape, dtype=np.float32)  # stand-in features
        else:
            rb.obs[:] = frames[:rb_cap]
        rb.act[:] = rng.uniform(-1, 1, rb.act.shape)
        rb.done[:] = done[:rb_cap]
        rb.pos = rb_cap - 1
        replays[c] = rb

    def lam():
        feats = videos.window_features(videos.sample(bs["lam"], rng), encoder, device)
        loss, _, _ = m.latent_dynamics_loss(idm, wm, feats)
        lam_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(list(idm.parameters()) + list(wm.parameters()), la.lam_grad_clip)
        lam_opt.step()

    def bc(key="bc", opt=bc_opt):
        loss = m.bc_loss(policy, idm, *videos.bc_batch(bs[key], rng, encoder, device))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def bc_labels(key):  # the run's rule (VideoData.label): p labels every video pair once when the BC updates of
        # stage 3 / a re-cloning round draw at least twice as many; the labelling, timed on 256 pairs, is amortised per sample
        n = la.bc_steps * la.bc_batch_size if key == "bc" else la.online_bc_updates * la.online_bc_batch_size
        videos.labels = None
        if not m.stores_labels(n, video_frames):
            return 0.0
        valid = videos.valid
        videos.valid = valid[:256]
        sync(device)
        t = time.perf_counter()
        videos.label(idm, encoder, device, num_samples=n)
        sync(device)
        videos.valid = valid
        return (time.perf_counter() - t) / min(256, len(valid)) * video_frames / n

    def ft(rb):  # the run's loop body of (b): L_ft on the agent's replay; d, p and w stepped
        feats, actions = rb.sample(bs["ft"], rng, device, encoder)
        loss, _, _ = m.finetune_loss(idm, wm, decoder, feats, actions, la.ft_wm_coef, la.finetune_latent_actions)
        for opt in (idm_opt, dec_opt, wm_opt):
            if opt is not None:
                opt.zero_grad()
        loss.backward()
        dec_opt.step()
        if la.finetune_latent_actions:
            idm_opt.step()
            if wm_opt is not None:
                wm_opt.step()

    for name in ("lam", "bc", "ft", "reclone"):
        if name not in args.updates:
            continue
        run_cached = store_feats if name == "ft" else cached
        for c in [run_cached] + ([not run_cached] if args.uncached else []):
            videos.feats = feats_cache if c else None
            if name == "lam":
                idm.train(), wm.train()
                fn = lam
            elif name == "bc":
                idm.eval(), wm.eval()
                label_s = bc_labels("bc")
                fn = bc
            elif name == "ft":
                idm.train(la.finetune_latent_actions), wm.train(la.finetune_latent_actions)
                fn = lambda: ft(replays[c])  # noqa: E731
            else:
                idm.eval(), wm.eval()
                label_s = bc_labels("reclone")
                fn = lambda: bc("reclone", reclone_opt)  # noqa: E731
            rows.append(dict(update=name, batch_size=bs[name], cached=bool(c), run_path=bool(c == run_cached),
                             seconds=time_update(fn, device, args.warmup, args.iters)))
            if name in ("bc", "reclone"):
                rows[-1].update(stored_labels=videos.labels is not None, label_seconds_per_sample=label_s)
        videos.feats, videos.labels = feats_cache, None

    envs = []
    if args.env_steps > 0:
        envs = env_rows_continuous(m, la, args, device, policy, decoder)
    return rows, envs, dict(feature_shape=list(feat_shape), video_frames_assumed=video_frames, video_cache=cached,
                            feature_replay=store_feats)


def env_rows_continuous(m, la, args, device, policy, decoder):
    """agent steps/s of the env (rendered 64x64 frame stacks, action repeat): random actions, and the run's acting step."""
    env = m.make_env(la.env_id, args.seed, la.action_repeat, la.max_episode_steps)
    low, high = env.action_space.low, env.action_space.high
    rng = np.random.default_rng(args.seed)
    out = []
    obs, _ = env.reset(seed=args.seed)
    for mode in ("random", "acting"):
        t = time.perf_counter()
        for _ in range(args.env_steps):
            if mode == "random":
                action = env.action_space.sample()
            else:
                action = m.explore(m.act(policy, decoder, obs, device), la.expl_std, low, high, rng)
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
        dt = time.perf_counter() - t
        out.append(dict(env=f"{la.env_id} action_repeat {la.action_repeat} ({mode})", env_steps=args.env_steps,
                        steps_per_s=args.env_steps / dt, env_frames_per_s=args.env_steps * la.action_repeat / dt))
    env.close()
    return out


# ---------------------------------------------------------------------------------------------------------------
def main(argv=None):
    args = tyro.cli(Args, args=argv)
    bad = [u for u in args.updates if u not in UPDATES]
    if bad:
        raise SystemExit(f"error: unknown update type(s) {bad}; choose from {' '.join(UPDATES)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch.cuda.is_available() is False")
    m, la = load_learner(args)
    t0 = time.time()
    if args.file == "bcvlr":
        rows, env_rows, info = bench_procgen(m, la, args, device)
    else:
        rows, env_rows, info = bench_continuous(m, la, args, device)
    for r in rows:
        r["ms_per_update"] = 1e3 * r.pop("seconds")
        r["ms_per_sample"] = r["ms_per_update"] / r["batch_size"] + 1e3 * r.get("label_seconds_per_sample", 0.0)
        r["samples_per_s"] = 1e3 / r["ms_per_sample"]
        if args.file == "bcvlr" and args.scale == "paper" and device.type == "cpu" and r["update"] in OFFICIAL_CPU_MS:
            r["official_cpu_ms_per_sample"] = OFFICIAL_CPU_MS[r["update"]]
            r["speedup_vs_official"] = OFFICIAL_CPU_MS[r["update"]] / r["ms_per_sample"]
    cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                     platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    result = dict(
        file=args.file, env_id=la.env_id, scale=args.scale, overrides=list(args.set), channels_last=args.channels_last,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model,
        cpu_count=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__, numpy=np.__version__,
        python=platform.python_version(), warmup=args.warmup, iters=args.iters, updates=rows, env=env_rows,
        bench_seconds=time.time() - t0, **info,
    )
    print(f"{args.file} --scale {args.scale} {' '.join(args.set)}{' channels_last' if args.channels_last else ''} on {result['device_name']} ({device}, "
          f"{result['threads']} threads), torch {torch.__version__}; median of {args.iters} after {args.warmup} warm-up; "
          f"feature shape {info['feature_shape']}, video cache {info['video_cache']} "
          f"(assuming {info['video_frames_assumed']} frames), feature replay {info['feature_replay']}")
    print(f"| update | batch | cached | ms/update | ms/sample | samples/s |" + (" official ms/sample | speed-up |" if any("official_cpu_ms_per_sample" in r for r in rows) else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if any("official_cpu_ms_per_sample" in r for r in rows) else ""))
    for r in rows:
        line = (f"| {r['update']} | {r['batch_size']} | {'yes' if r['cached'] else 'no'}{', z stored' if r.get('stored_labels') else ''}{'' if r.get('run_path', True) else ' (not the run path)'} "
                f"| {r['ms_per_update']:.1f} | {r['ms_per_sample']:.2f} | {r['samples_per_s']:.0f} |")
        if "official_cpu_ms_per_sample" in r:
            line += f" {r['official_cpu_ms_per_sample']} | {r['speedup_vs_official']:.2f}x |"
        print(line)
    for e in env_rows:
        print(f"env {e['env']}: {e['steps_per_s']:.0f} steps/s over {e['env_steps']} steps"
              + (f" ({e['env_frames_per_s']:.0f} frames/s)" if "env_frames_per_s" in e else ""))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
