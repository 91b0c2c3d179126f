# A trained bcvlr.py policy as a Procgen demonstrator (issue 11): records the episodes of pi + d from a
# `.cleanrl_model` file in the same LAPO layout as procgen_expert.py.
# Why: the planner of procgen_expert.py chooses among many equally good action sequences from the true simulator
# state, so its action is not a function of the frame, and behaviour cloning on its videos reaches a third of its
# return (README, the ceiling table). A policy that reads the frame is imitable by construction, as LAPO's PPO
# experts were. The usual source is `python bcvlr.py --true-action-bc` on the planner's videos: the planner
# distilled into a CNN by behaviour cloning.
#   python experts/policy_expert.py --model runs/<run>/bcvlr.cleanrl_model --env-id coinrun --num-transitions 10000
import argparse
import contextlib
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import tyro
from tqdm import tqdm

from common import EpisodeBuffers, EpisodeWriter, write_info

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with contextlib.redirect_stderr(io.StringIO()):
    import bcvlr  # noqa: E402  (the learner's own networks and env settings)

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # imageio_ffmpeg 0.3.0


@dataclass
class Args:
    model: str
    """a `.cleanrl_model` file written by bcvlr.py (any variant: its pi and d are used)"""
    env_id: str = ""
    """the Procgen game (default: the model's own env_id)"""
    num_transitions: int = 10000
    """train transitions to record (whole episodes, so slightly more)"""
    test_fraction: float = 0.05
    """a test/ split with this fraction of num_transitions; 0 disables it"""
    seed: int = 1
    """seed of the levels and of the action sampling"""
    out_dir: str = "expert_data/{env_id}_policy"
    """output folder"""
    num_envs: int = 8
    """episodes played in parallel (written one after the other)"""
    greedy: bool = False
    """act with the most likely action instead of sampling from the policy (its evaluation samples)"""
    chunk_size: int = 10000
    """transitions per .npz chunk"""
    num_previews: int = 2
    """episodes saved as mp4 previews"""
    random_episodes: int = 100
    """episodes of a uniform random policy measured for info.json (0 to skip)"""
    num_threads: int = 1
    """torch threads"""


def load_policy(path, device="cpu"):
    """(pi, d, the run's args) from a bcvlr.py checkpoint; a clear error for a file that is not one."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        run_args = argparse.Namespace(**ckpt["args"])
        encoder = bcvlr.Encoder(run_args.encoder_channels, run_args.feature_pool)
        policy, decoder = bcvlr.LatentPolicy(encoder, run_args), bcvlr.make_decoder(run_args.la_dim)
        state = {("encoder." + k if k in ("feat_mean", "feat_std") else k): v for k, v in ckpt["policy"].items()}
        policy.load_state_dict(state), decoder.load_state_dict(ckpt["decoder"])  # ^ files of before 2026-11-26
    except FileNotFoundError:
        raise SystemExit(f"error: no model file at {path}")
    except Exception as e:
        raise SystemExit(f"error: {path} is not a bcvlr.py .cleanrl_model file ({type(e).__name__}: {e})")
    return policy.to(device).eval(), decoder.to(device).eval(), run_args


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.set_num_threads(args.num_threads)
    policy, decoder, run_args = load_policy(args.model)
    args.env_id = args.env_id or run_args.env_id
    out_dir = args.out_dir.format(env_id=args.env_id)
    writer = EpisodeWriter(out_dir, args.num_transitions, int(args.test_fraction * args.num_transitions), args.chunk_size,
                           args.num_previews, preview_fn=lambda obs: obs)
    run_seed = args.seed + 7919 * writer.num_resumed_chunks  # a resumed run gets fresh levels
    torch.manual_seed(run_seed)
    envs = bcvlr.make_env(args.env_id, args.num_envs, run_seed)
    obs = envs.reset()["rgb"]
    eps = EpisodeBuffers(args.num_envs)
    total = args.num_transitions + int(args.test_fraction * args.num_transitions)
    pbar = tqdm(total=total, initial=min(writer.num_recorded, total), desc=f"{args.env_id} policy", unit="frame")
    start, steps = time.time(), 0
    while not writer.done:
        with torch.no_grad():
            logits = decoder(policy(bcvlr.normalize(torch.from_numpy(obs).permute(0, 3, 1, 2))))
        actions = (logits.argmax(1) if args.greedy else torch.distributions.Categorical(logits=logits).sample()).numpy()
        next_obs, rew, done, _ = envs.step(actions)
        for e in range(args.num_envs):
            eps.append(e, obs[e], actions[e], rew[e])
            if done[e]:
                before = writer.num_recorded
                writer.add(eps.pop(e))
                pbar.update(writer.num_recorded - before)
                pbar.set_postfix(ep_return=f"{np.mean(writer.returns):.2f}", episodes=len(writer.returns))
        obs, steps = next_obs["rgb"], steps + args.num_envs
    pbar.close()
    envs.close()
    elapsed = time.time() - start
    print(f"{args.env_id}: {len(writer.returns)} episodes, mean return {np.mean(writer.returns):.2f} +- {np.std(writer.returns):.2f}, "
          f"{steps} frames in {elapsed:.0f} s")
    from procgen_expert import EXPERT_RETURN, RANDOM_RETURN, random_return

    rand = random_return(args.env_id, args.random_episodes, args.seed) if args.random_episodes else None
    info = write_info(out_dir, env_id=args.env_id, suite="procgen", seed=args.seed, random_return_mean=rand,
                      paper_expert_return=EXPERT_RETURN.get(args.env_id), lapo_random_return=RANDOM_RETURN.get(args.env_id),
                      demonstrator=f"bcvlr.py policy {os.path.abspath(args.model)} (variant "
                                   f"{'true_action_bc' if run_args.true_action_bc else 'bcvlr'}), "
                                   f"{'greedy' if args.greedy else 'sampled'} actions",
                      render={"distribution_mode": "easy", "num_levels": 0, "obs": "rgb 64x64x3"})
    print({k: info[k] for k in ("num_transitions", "num_test_transitions", "num_episodes", "ep_return_mean", "random_return_mean")})
    print(f"expert videos in {out_dir}; train on them with: python bcvlr.py --env-id {args.env_id} --video-dir {out_dir}")
