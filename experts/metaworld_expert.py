# Metaworld demonstrator: the scripted expert policies that Metaworld ships (metaworld.policies.ENV_POLICY_MAP)
# act on the state vector; the video is rendered pixels with the learner's settings (conventions: 64x64, camera
# corner2, offsamples=0, shadowsize=0, image flipped upright), 3-frame stacks channels first, 500-step episodes.
#   python experts/metaworld_expert.py --env-id reach-v3 --num-transitions 50000
import os
import time
import warnings
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")
import gymnasium as gym
import metaworld  # noqa: F401  (registers the Meta-World/* ids)
import numpy as np
import tyro
from metaworld.policies import ENV_POLICY_MAP
from tqdm import tqdm

from common import EpisodeWriter, write_info

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # imageio_ffmpeg 0.3.0
warnings.filterwarnings("ignore", message=".*not within the observation space")  # metaworld's 39-d state, harmless


@dataclass
class Args:
    env_id: str = "reach-v3"
    """the Metaworld v3 task (any MT1 task with a scripted policy in metaworld.policies)"""
    num_transitions: int = 50000
    """train transitions to record (500 / action_repeat per episode)"""
    test_fraction: float = 0.0
    """an extra test/ split with this fraction of num_transitions (0: none, as in the paper's continuous data)"""
    seed: int = 1
    """seed of the task sampler"""
    out_dir: str = "expert_data/{env_id}"
    """output folder"""
    chunk_size: int = 10000
    """transitions per .npz chunk"""
    num_previews: int = 2
    """episodes saved as mp4 previews"""
    random_episodes: int = 10
    """episodes of a uniform random policy (no rendering) measured for info.json (0 to skip)"""
    max_episodes: int = 0
    """stop after this many episodes (0 = no limit; for quick measurements)"""
    action_repeat: int = 1
    """simulator steps per recorded action (rewards summed, success if reached at any of them), as the learner's
    --action-repeat; the scripted policy acts on every recorded frame. 1 = bcvlr_continuous.py's default for Metaworld"""
    skip_failed: bool = True
    """do not record episodes in which the scripted policy never succeeds (they are counted in info.json)"""


def make_env(env_id, seed, render=True):
    kwargs = dict(render_mode="rgb_array", camera_name="corner2", width=64, height=64) if render else {}
    env = gym.make("Meta-World/MT1", env_name=env_id, seed=seed, **kwargs)
    env.unwrapped.model.vis.quality.offsamples = 0  # fast rendering (dependencies.md section 3)
    env.unwrapped.model.vis.quality.shadowsize = 0
    return env


def render(env):
    return env.render()[::-1, ::-1].transpose(2, 0, 1).copy()  # upright, (3, 64, 64)


def stack_frames(frames):
    """(T, 3, H, W) -> (T, 9, H, W): frames t-2, t-1, t (oldest first); the first frame repeats at the start."""
    padded = np.concatenate([frames[:1], frames[:1], frames])
    return np.concatenate([padded[:-2], padded[1:-1], padded[2:]], axis=1)


def run_episode(env, policy, render_frames=True, rng=None, action_repeat=1):
    state, _ = env.reset()
    frames, actions, rewards, success = [], [], [], []
    steps, done = 0, False
    while not done:  # done also when the episode reaches max_path_length simulator steps
        if render_frames:
            frames.append(render(env))
        action = rng.uniform(-1, 1, 4) if policy is None else policy.get_action(state)
        action = np.clip(action, -1, 1).astype(np.float32)
        reward, solved = 0.0, False
        for _ in range(action_repeat):  # the same action for action_repeat simulator steps
            state, r, terminated, truncated, info = env.step(action)
            reward, solved, steps = reward + r, solved or bool(info["success"]), steps + 1
            done = terminated or truncated or steps >= env.unwrapped.max_path_length
            if done:
                break
        actions.append(action), rewards.append(reward), success.append(solved)
    ep = dict(ta=np.stack(actions), rewards=np.asarray(rewards, np.float32), success=np.asarray(success))
    if render_frames:
        ep["obs"] = stack_frames(np.stack(frames))
    return ep


if __name__ == "__main__":
    args = tyro.cli(Args)
    if args.action_repeat < 1:
        raise SystemExit(f"error: --action-repeat must be at least 1 (got {args.action_repeat})")
    out_dir = args.out_dir.format(env_id=args.env_id)
    writer = EpisodeWriter(out_dir, args.num_transitions, int(args.test_fraction * args.num_transitions), args.chunk_size,
                           args.num_previews, preview_fn=lambda obs: obs[:, 6:].transpose(0, 2, 3, 1))
    run_seed = args.seed + 7919 * writer.num_resumed_chunks  # a resumed run samples fresh goals
    env, policy = make_env(args.env_id, run_seed), ENV_POLICY_MAP[args.env_id]()
    total = args.num_transitions + int(args.test_fraction * args.num_transitions)
    pbar = tqdm(total=total, initial=min(writer.num_recorded, total), desc=args.env_id, unit="frame")
    start, successes = time.time(), []
    while not writer.done and not (args.max_episodes and len(successes) >= args.max_episodes):
        ep = run_episode(env, policy, action_repeat=args.action_repeat)
        successes.append(ep["success"].any())
        if args.skip_failed and not successes[-1]:
            continue
        before = writer.num_recorded
        writer.add(ep)
        pbar.update(writer.num_recorded - before)
        pbar.set_postfix(success=f"{np.mean(successes):.2f}", ep_return=f"{np.mean(writer.returns):.0f}")
    for split in ("train", "test"):
        writer.flush(split)
    pbar.close()
    elapsed = time.time() - start
    print(f"{args.env_id}: {len(successes)} episodes, success rate {np.mean(successes):.3f}, mean return "
          f"{np.mean(writer.returns):.1f}, {elapsed:.0f} s ({500 * len(successes) / elapsed:.1f} frames/s)")
    rand_ret = rand_succ = None
    if args.random_episodes:
        renv, rng = make_env(args.env_id, args.seed + 10**6, render=False), np.random.default_rng(args.seed)
        rand_eps = [run_episode(renv, None, render_frames=False, rng=rng, action_repeat=args.action_repeat)
                    for _ in range(args.random_episodes)]
        rand_ret = float(np.mean([e["rewards"].sum() for e in rand_eps]))
        rand_succ = float(np.mean([e["success"].any() for e in rand_eps]))
    files = [os.path.join(out_dir, s, f) for s in ("train", "test") for f in os.listdir(os.path.join(out_dir, s)) if f.endswith(".npz")]
    ep_success = []
    for f in files:
        d = np.load(f)
        ends = np.nonzero(d["done"])[0]
        ep_success += [d["success"][s:e + 1].any() for s, e in zip(np.r_[0, ends[:-1] + 1], ends)]
    info = write_info(out_dir, env_id=args.env_id, suite="metaworld", seed=args.seed, random_return_mean=rand_ret,
                      random_success_rate=rand_succ, success_rate=float(np.mean(ep_success)),
                      demonstrator_success_rate_this_run=float(np.mean(successes)), skip_failed=args.skip_failed,
                      demonstrator=f"metaworld.policies.{type(policy).__name__} (scripted, state-based)",
                      render={"camera_name": "corner2", "width": 64, "height": 64, "offsamples": 0, "shadowsize": 0,
                              "flip": "img[::-1, ::-1]", "frame_stack": 3, "action_repeat": args.action_repeat,
                              "episode_length": -(-500 // args.action_repeat)})
    print({k: info[k] for k in ("num_transitions", "num_episodes", "ep_return_mean", "success_rate", "random_return_mean", "random_success_rate")})
    print(f"expert videos in {out_dir}; train on them with: python bcvlr_continuous.py --env-id {args.env_id} --video-dir {out_dir}")
