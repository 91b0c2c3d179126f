# docs: README.md, "Throughput, an offline GPU node and a SLURM cluster (issue 13)"
"""ms per sample of the official code's updates and ours at the paper's Procgen shapes, interleaved on one machine.

Imports the official models from a checkout of github.com/liuxin0824/BCV-LR-discrete (nothing of it is copied here):
its logging, config and data modules (doy, wandb, rich, omegaconf, tensordict, funcy, env_utils, data_loader) are
replaced by empty stand-ins, since the networks and update steps need none of them. The official update steps are
written out below as run_offline.py and run_online.py run them (SSL `update_repre_addreconstruct`; the LAM
`train_step`; the BC step of the pre-imitation; the L_ft and re-cloning loops of
`finetuning_policylearning_each_iteration`), with the paper config of config.yaml (IMPALA x4, U-Net base 24, VQ
2 x 4 x 16, 64 codes, wm_loss_alpha 15, ta_idm_lr 2e-5).
Ours are bcvlr.py's losses and optimizers on the path the run takes at these shapes (frames encoded per batch: the
50k-frame feature cache does not fit the default 4 GB cap), plus the cached-feature path. Rounds interleave the
variants, so a busy or throttled machine slows all of them alike; the median round is reported.

    $ git clone https://github.com/liuxin0824/BCV-LR-discrete /tmp/BCV-LR-discrete
    $ OMP_NUM_THREADS=1 python scripts/bench_official.py --official-dir /tmp/BCV-LR-discrete --batch-size 32
"""
import copy
import json
import os
import statistics
import sys
import time
import types
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@dataclass
class Args:
    official_dir: str
    """a checkout of github.com/liuxin0824/BCV-LR-discrete (its models.py and utils.py are imported)"""
    batch_size: int = 32
    """samples per update, the same for every variant"""
    rounds: int = 3
    """interleaved rounds; each times every variant `iters` times (median per round, median over rounds)"""
    iters: int = 3
    """timed updates per variant and round (after two warm-up updates per variant)"""
    updates: Tuple[str, ...] = ("ssl", "lam", "bc", "ft", "reclone")
    """which update types to compare: ssl lam bc (offline), ft (L_ft) reclone (online BC)"""
    channels_last: bool = False
    """our networks in torch.channels_last (the official ones stay as the official code makes them)"""
    threads: int = 1
    """torch CPU threads"""
    out: Optional[str] = None
    """write the results as JSON here"""


def import_official(path):
    """the official models and utils modules, with their infrastructure imports stubbed out."""
    if not os.path.isfile(os.path.join(path, "models.py")):
        raise SystemExit(f"error: --official-dir {path}: no models.py there (a checkout of liuxin0824/BCV-LR-discrete?)")
    for name in ["doy", "rich", "rich.syntax", "omegaconf", "wandb", "env_utils", "data_loader", "funcy", "tensordict"]:
        sys.modules[name] = types.ModuleType(name)

    def stub_attr(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return object

    class TensorDict(dict):  # the official code only builds and updates these
        def __init__(self, d=None, batch_size=None):
            super().__init__(d or {})

    sys.modules["doy"].__getattr__ = stub_attr
    sys.modules["rich.syntax"].Syntax = object
    sys.modules["omegaconf"].DictConfig, sys.modules["omegaconf"].OmegaConf = dict, object
    sys.modules["data_loader"].DataStager = object
    sys.modules["tensordict"].TensorDict = sys.modules["tensordict"].TensorDictBase = TensorDict
    sys.modules["funcy"].partition = lambda n, step, seq: [tuple(list(seq)[i:i + n]) for i in range(0, len(seq) - n + 1, step)]
    sys.path.insert(0, path)
    import utils  # noqa: E402  (utils imports models; the other order is a circular import)
    import config  # noqa: E402

    vq = config.VQConfig(True, 2, 4, 16, 64, 0.05, 0.999)  # config.yaml, model.vq
    return utils, config.ModelConfig(24, 4, 4, vq, 128, 15), TensorDict


def official_steps(args, frames, utils, cfg, TensorDict):
    n, b = len(frames), args.batch_size

    def batch():  # [B, 3, 3, 64, 64] windows in [-0.5, 0.5], as the official data loader's normalize_obs
        s = torch.randint(0, n - 3, (b,))
        return TensorDict(dict(obs=frames[s[:, None] + torch.arange(3)].permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5))

    steps = {}
    if "ssl" in args.updates:
        idm_s, _ = utils.create_dynamics_models(cfg)
        steps["ssl"] = lambda: idm_s.update_repre_addreconstruct(batch()["obs"])
    if "lam" in args.updates:
        idm, wm = utils.create_dynamics_models(cfg)
        wm.conv = idm.conv  # run_offline.py: the world model shares f
        params = list({id(p): p for p in list(wm.parameters()) + list(idm.parameters())}.values())
        lam_opt = torch.optim.AdamW(params, lr=3e-4)

        def lam():
            x = batch()
            idm.train(), wm.train()
            vq_loss, _ = idm.label(x)
            loss = wm.label(x) + vq_loss
            lam_opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_([*idm.parameters(), *wm.parameters()], 2)
            lam_opt.step()
        steps["lam"] = lam
    if "bc" in args.updates:
        idm_b, _ = utils.create_dynamics_models(cfg)
        idm_b.eval()
        policy = utils.create_policy(cfg, 128)
        policy.conv.load_state_dict(idm_b.conv.state_dict())
        bc_opt = torch.optim.AdamW(policy.parameters(), lr=2e-4)

        def bc():
            x = batch()
            policy.train()
            idm_b.label(x)
            loss = F.mse_loss(policy(x["obs"][:, -2]), x["la"])
            bc_opt.zero_grad()
            loss.backward()
            bc_opt.step()
        steps["bc"] = bc
    if "ft" in args.updates or "reclone" in args.updates:
        idm_o, wm_o = utils.create_dynamics_models(cfg)
        decoder = utils.create_decoder(128, 15, hidden_sizes=(192, 128, 64))
        idm_opt, dec_opt = torch.optim.Adam(idm_o.parameters(), lr=2e-5), torch.optim.Adam(decoder.parameters())
        policy_o = utils.create_policy(cfg, 128)
        policy_opt = torch.optim.Adam(policy_o.parameters(), lr=2e-4)

        def ft():  # run_online.py: CE of d(p(window)) on the replay + wm_loss_alpha x (dynamics + commitment)
            x = batch()
            x["ta"] = torch.randint(0, 15, (b,))
            idm_o.train(), decoder.train()
            idm_opt.zero_grad(), dec_opt.zero_grad()
            loss = F.cross_entropy(decoder(idm_o(x["obs"])[0]["la"]), x["ta"])
            wm_o.train()
            vq_loss, _ = idm_o.label(x)
            loss = loss + 15 * (vq_loss + wm_o.label(x))
            loss.backward()
            idm_opt.step(), dec_opt.step()

        def reclone():  # run_online.py: p labels under no_grad, pi cloned
            x = batch()
            with torch.no_grad():
                idm_o.label(x)
            loss = F.mse_loss(policy_o(x["obs"][:, -2]), x["la"])
            policy_opt.zero_grad()
            loss.backward()
            policy_opt.step()
        steps["ft"], steps["reclone"] = ft, reclone
    return {u: steps[u] for u in args.updates if u in steps}


def our_steps(args, frames, cached):
    import bcvlr as m

    la = m.Args()
    la.la_dim = la.vq_num_codebooks * la.vq_num_latents * la.vq_dim
    dev, n, b = torch.device("cpu"), len(frames), args.batch_size
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    done = np.zeros(n, dtype=bool)
    done[np.arange(99, n, 100)] = True  # episodes of 100 frames
    done[-1] = True
    starts = torch.from_numpy(m.window_starts(done))
    encoder = m.Encoder(la.encoder_channels, la.feature_pool)
    steps, extra = {}, {}
    if "ssl" in args.updates and not cached:  # stage 1 has no feature cache
        enc = copy.deepcopy(encoder).to(memory_format=mf)
        head, recon = m.CURLHead((la.encoder_channels, 64, 64)), m.ReconDecoder(la.encoder_channels).to(memory_format=mf)
        target_enc, target_proj = copy.deepcopy(enc), copy.deepcopy(head.projector)
        ssl_opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()) + list(recon.parameters()), lr=la.ssl_lr)
        count = [0]

        def ssl():
            o = m.sample_windows(frames, starts, b, dev)[:, 0]
            x1, x2 = m.random_shift(o, 1, la.bilinear_shift), m.random_shift(o, 1, la.bilinear_shift)
            feats = enc.maps(x1)
            with torch.no_grad():
                target_feats = target_enc.maps(x2)
            loss = m.curl_loss(head, target_proj, feats, target_feats) + la.ssl_recon_coef * m.recon_loss(recon, feats, x1)
            ssl_opt.zero_grad()
            loss.backward()
            ssl_opt.step()
            count[0] += 1
            if count[0] % la.ssl_target_every == 0:
                m.soft_update(target_enc, enc, la.ssl_tau), m.soft_update(target_proj, head.projector, la.ssl_tau)
        steps["ssl"] = ssl
    encoder.requires_grad_(False)
    cache = m.cache_features(encoder, frames, dev, max_gb=float("inf")) if cached else None
    if "lam" in args.updates:
        idm = m.IDM(la).to(memory_format=mf)
        wm = m.WorldModel(2 * la.encoder_channels, la.encoder_channels, la.la_dim, base=la.wm_scale, tanh=la.wm_tanh).to(memory_format=mf)
        params = list(idm.parameters()) + list(wm.parameters())
        lam_opt = torch.optim.AdamW(params, lr=la.lam_lr)

        def lam():
            loss, _, _ = m.latent_dynamics_loss(idm, wm, m.window_features(encoder, frames, m.sample_starts(starts, b), dev, cache))
            lam_opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, la.lam_grad_clip)
            lam_opt.step()
        steps["lam"] = lam
    if "bc" in args.updates:
        idm_b = m.IDM(la).eval().to(memory_format=mf)
        policy = m.LatentPolicy(encoder, la).to(memory_format=mf)
        bc_opt = torch.optim.AdamW(policy.trunk.parameters(), lr=la.bc_lr)
        n_stage = la.bc_steps * la.bc_batch_size  # 20k x 128 >= 2 x 50k windows: the run labels every window once
        labels = None
        if m.stores_labels(n_stage, 50_000):
            t = time.perf_counter()  # timed on 256 windows, amortised over the stage's samples
            labels = m.label_windows(idm_b, encoder, frames, starts[:256], dev, cache, num_samples=n_stage)
            extra["bc"] = (time.perf_counter() - t) / 256 * 50_000 / n_stage

        def bc():
            loss = m.bc_loss(policy, idm_b, *m.bc_batch(encoder, frames, starts, b, dev, cache, labels))
            bc_opt.zero_grad()
            loss.backward()
            bc_opt.step()
        steps["bc"] = bc
    if "ft" in args.updates or "reclone" in args.updates:
        idm_f = m.IDM(la).to(memory_format=mf)
        wm_f = m.WorldModel(2 * la.encoder_channels, la.encoder_channels, la.la_dim, base=la.wm_scale, tanh=la.wm_tanh)
        wm_f = wm_f.to(memory_format=mf).requires_grad_(False)  # w is a fixed critic online (Procgen)
        decoder = m.make_decoder(la.la_dim)
        idm_opt, dec_opt = torch.optim.Adam(idm_f.parameters(), lr=la.ft_idm_lr), torch.optim.Adam(decoder.parameters(), lr=la.ft_decoder_lr)
        # the run's replay keeps frames at these shapes (20k windows of features do not fit 4 GB): encoded per batch
        replay = frames[starts[:512, None] + torch.arange(3)]  # [512, 3, 64, 64, 3] uint8
        replay_feats = cache[starts[:512, None] + torch.arange(3)] if cached else None

        def ft():
            i = torch.randint(0, len(replay), (b,))
            feats = replay_feats[i] if cached else m.encode_window(encoder, m.normalize(replay[i].permute(0, 1, 4, 2, 3)))
            loss, _, _ = m.finetune_loss(idm_f, wm_f, decoder, feats, torch.randint(0, m.NUM_ACTIONS, (b,)), la.ft_wm_coef)
            idm_opt.zero_grad(), dec_opt.zero_grad()
            loss.backward()
            idm_opt.step(), dec_opt.step()

        policy_r = m.LatentPolicy(encoder, la).to(memory_format=mf)
        reclone_opt = torch.optim.Adam(policy_r.trunk.parameters(), lr=la.bc_lr)
        n_round = la.online_bc_updates * la.bc_batch_size  # 500 x 128 < 2 x 50k windows: the run labels per batch
        idm_f.eval()
        labels_r = None
        if m.stores_labels(n_round, 50_000):
            t = time.perf_counter()
            labels_r = m.label_windows(idm_f, encoder, frames, starts[:256], dev, cache, num_samples=n_round)
            extra["reclone"] = (time.perf_counter() - t) / 256 * 50_000 / n_round

        def reclone():
            idm_f.eval()
            loss = m.bc_loss(policy_r, idm_f, *m.bc_batch(encoder, frames, starts, b, dev, cache, labels_r))
            reclone_opt.zero_grad()
            loss.backward()
            reclone_opt.step()

        def ft_train():
            idm_f.train()
            ft()
        steps["ft"], steps["reclone"] = ft_train, reclone
    return {u: steps[u] for u in args.updates if u in steps}, extra


def main(argv=None):
    args = tyro.cli(Args, args=argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    utils, cfg, TensorDict = import_official(args.official_dir)
    frames = torch.randint(0, 256, (2048, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    variants, extras = {}, {}
    for u, fn in official_steps(args, frames, utils, cfg, TensorDict).items():
        variants[("official", u)] = fn
    for cached in (False, True):
        steps, extra = our_steps(args, frames, cached)
        for u, fn in steps.items():
            variants[("ours_cached" if cached else "ours", u)] = fn
            extras[("ours_cached" if cached else "ours", u)] = extra.get(u, 0.0)
    for fn in variants.values():
        fn(), fn()  # warm-up
    per_round = {k: [] for k in variants}
    for r in range(args.rounds):
        for k, fn in variants.items():
            ts = []
            for _ in range(args.iters):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            per_round[k].append(1e3 * (statistics.median(ts) / args.batch_size + extras.get(k, 0.0)))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k[0]} {k[1]} {v[-1]:.1f}" for k, v in per_round.items()), flush=True)
    ms = {k: statistics.median(v) for k, v in per_round.items()}
    print(f"\nms per sample, batch {args.batch_size}, {args.threads} thread(s), median of {args.rounds} interleaved rounds"
          f"{', ours channels_last' if args.channels_last else ''} (BC, re-cloning: ours includes p's labelling, amortised)")
    print("| update | official | ours (run's path) | speed-up | ours, cached features | speed-up |\n|---|---|---|---|---|---|")
    rows = []
    for u in args.updates:
        off, ours, cached = ms.get(("official", u)), ms.get(("ours", u)), ms.get(("ours_cached", u))
        rows.append(dict(update=u, official_ms=off, ours_ms=ours, ours_cached_ms=cached))
        print(f"| {u} | {off:.1f} | {ours:.1f} | {off / ours:.2f}x | "
              + (f"{cached:.1f} | {off / cached:.2f}x |" if cached else "(no cache in stage 1) | |"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(batch_size=args.batch_size, threads=args.threads, rounds=args.rounds, iters=args.iters,
                           channels_last=args.channels_last, torch=torch.__version__, rows=rows,
                           per_round={f"{k[0]}/{k[1]}": v for k, v in per_round.items()}), f, indent=2)
    return rows


if __name__ == "__main__":
    main()
