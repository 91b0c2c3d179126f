"""Where is the action in the continuous videos, and does stage 1 put it into f? Two diagnostics for bcvlr_continuous.py.

1. A ridge probe (closed form, held out) from the videos' frames to their true action a_t, on three inputs: f(o_t) alone
   (what the demonstrator's policy reads), f(o_{t+1}) - f(o_t) alone (what the transition shows, the only thing the
   latent action model can discover), and both; for a random f and after each of `--steps` stage-1 updates. Its score
   is held-out MSE / the mean action's MSE (1 = nothing readable). `--pixels` adds the same probe on raw frame stacks.
2. Stage 1 itself, the learner's own `proto_temporal_loss` (Proto-RL across time) at the learner's shapes, with the
   numbers that tell a collapse of its online branch from learning: the loss against ln K, the spread of a frame's
   prototype logits, and the mean cosine between different frames' predictor outputs (1 = every frame maps to one point).

    python scripts/ssl_check.py --video-dir expert_data/point_mass_easy --env-id point_mass_easy --steps 300 --pixels
    python scripts/ssl_check.py --video-dir expert_data/finger_spin --env-id finger_spin --steps 300 1000 --out ssl.json

The videos' true actions are read only here, as diagnostics; the learner never reads them. The pairs are distinct and
in time order; the last 20% (the latest frames) are held out.
"""
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Args:
    video_dir: str
    """folder of continuous-control videos with true actions (`ta`), as made by experts/dmc_expert.py"""
    env_id: str = "point_mass_easy"
    """the task of the videos (for messages only)"""
    steps: Tuple[int, ...] = (300,)
    """probe after these numbers of stage-1 updates (the random f is always probed; 0 = no stage 1)"""
    ssl_lr: float = 1e-4
    """stage-1 Adam learning rate (the learner's default)"""
    ssl_batch_size: int = 64
    """stage-1 batch (the cpu scale's)"""
    num_protos: int = 512
    """Proto-RL prototypes K"""
    encoder_channels: int = 16
    """f's channels (the cpu scale's)"""
    feature_pool: int = 2
    """f's average pooling of its 32x32 maps (the cpu scale's: 16x16)"""
    pairs: int = 4000
    """video pairs (o_t, o_{t+1}) in the probe, 80% to fit and 20% held out"""
    ridges: Tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    """ridge penalties tried, relative to the mean squared norm of a row; the best held-out one is reported"""
    pixels: bool = False
    """also probe the raw frame stacks (o_t, o_{t+1} - o_t), for the information before f"""
    seed: int = 1
    threads: int = 1
    """torch CPU threads"""
    out: Optional[str] = None
    """write the results as JSON here"""


def ridge_probe(X, y, ridges, train_fraction=0.8):
    """Held-out MSE of the best ridge regression X -> y (kernel form, for more columns than rows), and the mean action's."""
    X, y = X.astype(np.float64), y.astype(np.float64)
    n = int(train_fraction * len(X))
    X = X - X[:n].mean(0)  # centred, not standardised: near-constant pixels or features are not blown up into noise
    y_mean = y[:n].mean(0)
    chance = float(((y[n:] - y_mean) ** 2).mean())
    gram = X[:n] @ X[:n].T
    scale = np.trace(gram) / n  # penalties are relative to the mean squared norm of a row
    best = None
    for lam in ridges:
        alpha = np.linalg.solve(gram + lam * scale * np.eye(n), y[:n] - y_mean)
        mse = float(((y[n:] - (X[n:] @ (X[:n].T @ alpha) + y_mean)) ** 2).mean())
        if best is None or mse < best[0]:
            best = (mse, lam)
    return dict(mse=best[0], chance=chance, ratio=best[0] / chance, ridge=best[1])


def probe_inputs(current, change, actions, ridges, prefix, step):
    """The three probes of one representation `prefix` (pixels or f): on o_t, on the transition, on both."""
    rows = []
    for name, X in ((f"{prefix}(o_t)", current), (f"{prefix}(o_t+1)-{prefix}(o_t)", change),
                    (f"both {prefix}", np.concatenate([current, change], 1))):
        rows.append(r := dict(step=step, input=name, **ridge_probe(X, actions, ridges)))
        print(f"step {step:>5} | {r['input']:<18} | held-out MSE {r['mse']:.4f}, mean action {r['chance']:.4f}: "
              f"ratio {r['ratio']:.3f} (ridge {r['ridge']:g})", flush=True)
    return rows


@torch.no_grad()
def feature_probe(encoder, videos, idx, ridges, step):
    feats = torch.cat([videos.window_features(chunk, encoder, "cpu") for chunk in np.array_split(idx, max(1, len(idx) // 256))])
    feats = feats.flatten(2).numpy()  # [N, 2, D]
    return probe_inputs(feats[:, 0], feats[:, 1] - feats[:, 0], videos.ta[idx], ridges, "f", step)


@torch.no_grad()
def collapse_stats(ssl, videos, rng, temperature):
    """Prototype logits of 256 frames: their spread over prototypes, and how alike the frames' predictor outputs are."""
    obs = videos.windows(videos.sample(256, rng), "cpu", frames=1)[:, 0].float()
    s = F.normalize(ssl.predictor(ssl.projector(ssl.encoder.maps(obs).flatten(1))), dim=1)
    logits = ssl.protos(s) / temperature
    n = len(s)
    return dict(logit_std=float(logits.std(1).mean()), sample_cosine=float(((s @ s.T).sum() - n) / (n * n - n)))


def main(args: Args):
    import bcvlr_continuous as bc

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    try:
        videos = bc.load_videos(args.video_dir, args.env_id)
    except bc.DataError as e:
        raise SystemExit(f"error: {e}")
    if videos.ta is None:
        raise SystemExit(f"error: the videos in {args.video_dir} carry no true actions (`ta`), which the probe needs")
    # distinct pairs in time order: the probes fit on the first 80% and are scored on the last 20%, later frames that
    # are not neighbours of fitted ones (a random split would score near-copies of fitted frames)
    idx = np.sort(np.random.default_rng(12345).choice(videos.valid, min(args.pairs, len(videos.valid)), replace=False))
    print(f"{args.env_id}: {len(videos.obs)} frames, probing {len(idx)} pairs", flush=True)
    results = dict(env_id=args.env_id, video_dir=args.video_dir, args=vars(args), probes=[], ssl=[])
    if args.pixels:
        obs = videos.obs[idx[:, None] + np.arange(2)].reshape(len(idx), 2, -1).astype(np.float32) / 255.0
        results["probes"] += probe_inputs(obs[:, 0], obs[:, 1] - obs[:, 0], videos.ta[idx], args.ridges, "pixels", 0)
        del obs
    encoder = bc.Encoder(9, args.encoder_channels, args.feature_pool)
    results["probes"] += feature_probe(encoder, videos, idx, args.ridges, 0)
    steps = sorted(s for s in args.steps if s > 0)
    if steps:
        ssl = bc.ProtoSSL(encoder, args.encoder_channels * 32 * 32, num_protos=args.num_protos)
        optimizer = torch.optim.Adam(ssl.online_parameters(), lr=args.ssl_lr)
        temperature, t0 = bc.Args.proto_temperature, time.time()
        for step in range(1, steps[-1] + 1):
            window = videos.windows(videos.sample(args.ssl_batch_size, rng), "cpu")
            loss = bc.proto_temporal_loss(ssl, window, bc.Args.aug_pad, temperature, bc.Args.sinkhorn_iters)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bc.soft_update(ssl.target_encoder, ssl.encoder, bc.Args.ssl_tau)
            bc.soft_update(ssl.target_projector, ssl.projector, bc.Args.ssl_tau)
            if step in steps or step % 100 == 0 or step == 1:
                row = dict(step=step, loss=loss.item(), ln_k=float(np.log(args.num_protos)), **collapse_stats(ssl, videos, rng, temperature))
                results["ssl"].append(row)
                print(f"stage 1 step {step:>5}: Proto loss {row['loss']:.4f} (ln K {row['ln_k']:.4f}), logit spread "
                      f"{row['logit_std']:.4f}, cosine between frames {row['sample_cosine']:.4f}, {time.time() - t0:.0f} s", flush=True)
            if step in steps:
                results["probes"] += feature_probe(encoder, videos, idx, args.ridges, step)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
