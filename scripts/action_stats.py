"""How far from uniform does a trained bcvlr.py policy act, and how often does it choose the demonstrator's action?

Runs pi + d of `.cleanrl_model` files (any variant) on the first `--frames` frames of a video folder and prints, per
model: the mean entropy of its action distribution on a frame (ln 15 = 2.71 is uniform), the entropy of its mean
distribution over the frames (its action marginal), its three most likely actions, and how often its most likely action
is the one in the videos. The videos' own action marginal is printed first. Evaluation returns in Procgen are noisy
(32 episodes); these numbers say whether a policy differs from a near-uniform one at all.

    python scripts/action_stats.py --video-dir expert_data/coinrun_policy runs/*/bcvlr.cleanrl_model
"""
import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experts"))
with contextlib.redirect_stderr(io.StringIO()):
    import bcvlr  # noqa: E402
    from policy_expert import load_policy  # noqa: E402


@dataclass
class Args:
    models: tyro.conf.Positional[Tuple[str, ...]]
    """`.cleanrl_model` files written by bcvlr.py"""
    video_dir: str = "expert_data/coinrun_policy"
    """Procgen videos with true actions (`ta`)"""
    frames: int = 2000
    """the first N frames of the videos' train split"""
    out: Optional[str] = None
    """write the numbers as JSON here"""


def entropy(p):
    return float(-(p * np.log(np.clip(p, 1e-12, None))).sum(-1).mean())


def main(args: Args):
    torch.set_num_threads(1)
    try:
        data = bcvlr.load_video_dataset(args.video_dir, max_frames=args.frames)
    except bcvlr.DataError as e:
        raise SystemExit(f"error: {e}")
    if data.get("ta") is None:
        raise SystemExit(f"error: the videos in {args.video_dir} carry no true actions (`ta`)")
    obs, ta = data["obs"][: args.frames], data["ta"][: args.frames]
    marginal = np.bincount(ta, minlength=bcvlr.NUM_ACTIONS) / len(ta)
    rows = [dict(name="videos", marginal_entropy=entropy(marginal), top=np.argsort(-marginal)[:3].tolist(),
                 top_share=[round(float(x), 3) for x in np.sort(marginal)[::-1][:3]])]
    print(f"videos: {len(ta)} frames, action marginal entropy {rows[0]['marginal_entropy']:.2f} (uniform "
          f"{np.log(bcvlr.NUM_ACTIONS):.2f}), most frequent {rows[0]['top']} {rows[0]['top_share']}")
    for path in args.models:
        policy, decoder, run_args = load_policy(path)
        with torch.no_grad():
            p = torch.cat([decoder(policy(bcvlr.normalize(torch.from_numpy(obs[i : i + 256]).permute(0, 3, 1, 2)))).softmax(-1)
                           for i in range(0, len(obs), 256)]).numpy()
        mean = p.mean(0)
        row = dict(name=path, variant=bcvlr.variant_name(run_args), seed=run_args.seed, frame_entropy=entropy(p),
                   marginal_entropy=entropy(mean), top=np.argsort(-mean)[:3].tolist(), top_share=[round(float(x), 3) for x in np.sort(mean)[::-1][:3]],
                   agreement=float((p.argmax(-1) == ta).mean()))
        rows.append(row)
        print(f"{path} ({row['variant']}, seed {row['seed']}): entropy per frame {row['frame_entropy']:.2f}, of the marginal "
              f"{row['marginal_entropy']:.2f}, most likely {row['top']} {row['top_share']}, argmax = video action "
              f"{row['agreement']:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
