# Procgen demonstrator without a GPU: a lookahead planner over simulated futures.
# Procgen can save and restore an environment's full state (deterministic, dependencies.md section 1), so at each
# decision the current state is copied into `num_candidates` simulator envs that roll out different action
# sequences in parallel; the first actions of the best-scoring sequence are executed in the real env.
# Score = discounted reward within the horizon, minus `death_penalty` if the rollout's episode ends without the
# level-complete signal (info["prev_level_complete"]), plus a small bonus for reaching frames the real episode has
# not shown yet (exploration). Frames of the real env are written as LAPO-layout videos.
#   python experts/procgen_expert.py --env-id fruitbot --num-transitions 50000 --seed 1
import contextlib
import io
import time
import warnings
from dataclasses import dataclass

import numpy as np
import tyro
from tqdm import tqdm

from common import EpisodeBuffers, EpisodeWriter, write_info

with contextlib.redirect_stderr(io.StringIO()):  # `import procgen` imports gym, which prints an "unmaintained" notice
    import procgen

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # imageio_ffmpeg 0.3.0

# uniform-random and expert-video returns from LAPO's env_utils.py (../shared/spec/algorithm.md section 6.1)
RANDOM_RETURN = dict(bigfish=0.874, bossfight=0.046, caveflyer=2.60, chaser=0.663, climber=2.22, coinrun=2.70, dodgeball=0.613,
                     fruitbot=-2.53, heist=3.08, jumper=3.41, leaper=2.51, maze=4.27, miner=1.25, ninja=2.56, plunder=4.32, starpilot=1.53)
EXPERT_RETURN = dict(bigfish=36.34, bossfight=11.63, caveflyer=9.18, chaser=9.96, climber=10.23, coinrun=9.93, dodgeball=13.49,
                     fruitbot=29.93, heist=9.69, jumper=8.46, leaper=7.41, maze=9.97, miner=11.89, ninja=9.47, plunder=11.46, starpilot=66.99)
NUM_ACTIONS = 15


@dataclass
class Args:
    env_id: str = "fruitbot"
    """the Procgen game (one of the 16)"""
    num_transitions: int = 50000
    """train transitions to record (whole episodes, so slightly more)"""
    test_fraction: float = 0.1
    """a test/ split with this fraction of num_transitions (LAPO's train/test layout); 0 disables it"""
    seed: int = 1
    """seed of the level generator and the planner"""
    out_dir: str = "expert_data/{env_id}"
    """output folder"""
    num_envs: int = 4
    """real envs recorded in parallel (their episodes are written one after the other, never interleaved)"""
    num_candidates: int = 32
    """candidate action sequences simulated per decision and real env"""
    horizon: int = 48
    """lookahead steps of each candidate"""
    action_repeat: int = 4
    """random candidates hold each action for this many steps"""
    replan_every: int = 2
    """execute this many actions of the best plan before planning again"""
    discount: float = 0.98
    """discount of rewards inside a rollout"""
    death_penalty: float = 10.0
    """subtracted when a rollout's episode ends without completing the level"""
    novelty_bonus: float = 1.0
    """bonus for rollouts that reach frames the real episode has not shown yet (exploration in maze, heist, ...)"""
    chunk_size: int = 10000
    """transitions per .npz chunk"""
    num_previews: int = 2
    """episodes saved as mp4 previews"""
    random_episodes: int = 100
    """episodes of a uniform random policy measured for info.json (0 to skip)"""
    max_episodes: int = 0
    """measurement mode: each env records ceil(max_episodes / num_envs) episodes, then the run stops (0 = off)"""
    action_set: tuple[int, ...] = ()
    """the actions the planner may choose, as Procgen indices (0 LEFT_DOWN, 1 LEFT, 2 LEFT_UP, 3 DOWN, 4 NOOP, 5 UP,
    6 RIGHT_DOWN, 7 RIGHT, 8 RIGHT_UP, 9 D, 10 A, 11 W, 12 S, 13 Q, 14 E); () = all 15. Many games treat several
    actions alike (fruitbot: LEFT_DOWN = LEFT = LEFT_UP), and a planner that samples among equivalent actions records
    labels that no network can predict. E.g. fruitbot --action-set 1 4 7 9 (measured: its ceiling stayed at random
    level, so the planner's choice among distinct actions is not predictable either; experts/README.md)"""
    deterministic: bool = False
    """the same candidate plans at every decision (the constant plans, then random plans drawn once), no reuse of
    the previous plan and ties to the first candidate, so that the planner's choice depends on the current state (and
    the frames its episode has shown, through the novelty bonus) and not on fresh random draws (issue 11)"""


def random_return(game, episodes, seed, num=32):
    """Mean return of a uniform random policy over `episodes` episodes."""
    env = procgen.ProcgenGym3Env(num=num, env_name=game, distribution_mode="easy", num_levels=0, start_level=0, rand_seed=seed + 10**6)
    rng, rets, ep_ret = np.random.default_rng(seed), [], np.zeros(num)
    while len(rets) < episodes:
        env.act(rng.integers(0, NUM_ACTIONS, num).astype(np.int32))
        rew, _, first = env.observe()
        ep_ret += rew
        rets += list(ep_ret[first])
        ep_ret[first] = 0
    return float(np.mean(rets[:episodes]))


class Planner:
    """Random-shooting planner with death avoidance, action-repeat candidates and plan reuse."""

    def __init__(self, args, num_envs, rng):
        self.a, self.E, self.K, self.rng = args, num_envs, args.num_candidates, rng
        self.actions = np.array(args.action_set or range(NUM_ACTIONS))
        self.const = np.repeat(self.actions[:, None], args.horizon, axis=1)  # one constant plan per action
        self.sim = procgen.ProcgenGym3Env(num=num_envs * self.K, env_name=args.env_id, distribution_mode="easy",
                                          num_levels=0, start_level=0, rand_seed=args.seed)
        self.plans = [self.random_plans(1)[0] for _ in range(num_envs)]
        self.fixed = None  # --deterministic: one candidate set, drawn once
        self.visited = [set() for _ in range(num_envs)]  # hashes of the frames each real episode has shown

    @staticmethod
    def frame_key(frame):
        return hash(frame[::4, ::4].tobytes())

    def random_plans(self, n):
        segs = -(-self.a.horizon // self.a.action_repeat)
        plans = np.repeat(self.rng.choice(self.actions, (n, segs)), self.a.action_repeat, axis=1)
        return plans[:, : self.a.horizon]

    def candidates(self, prev):
        """(K, H) plans: the previous best plan shifted, the constant plans (one per action), then random action-repeat
        plans."""
        A = len(self.actions)
        if self.a.deterministic:
            if self.fixed is None:
                self.fixed = np.concatenate([self.const, self.random_plans(max(0, self.K - A))])[: self.K]
            return self.fixed
        shifted = np.concatenate([prev[self.a.replan_every:], self.random_plans(1)[0]])[: self.a.horizon]
        plans = np.concatenate([shifted[None], self.const, self.random_plans(max(0, self.K - 1 - A))])[: self.K]
        return plans

    def plan(self, states):
        """states: one state per real env -> (E, replan_every) actions to execute."""
        K, H = self.K, self.a.horizon
        plans = np.stack([self.candidates(p) for p in self.plans])  # (E, K, H)
        self.sim.callmethod("set_state", [s for s in states for _ in range(K)])
        score, alive = np.zeros(self.E * K), np.ones(self.E * K, bool)
        flat = plans.reshape(self.E * K, H)
        for t in range(H):
            self.sim.act(flat[:, t].astype(np.int32))
            rew, obs, first = self.sim.observe()
            score += alive * self.a.discount**t * rew
            if self.a.novelty_bonus and (t + 1) % 8 == 0:  # novel frames along the rollout (checked every 8 steps)
                for i in np.nonzero(alive & ~first)[0]:
                    if self.frame_key(obs["rgb"][i]) not in self.visited[i // K]:
                        score[i] += self.a.novelty_bonus * 8 / H
            if first.any():
                for i in np.nonzero(first & alive)[0]:
                    if not self.sim.get_info()[i].get("prev_level_complete", 0):
                        score[i] -= self.a.death_penalty * self.a.discount**t
                alive &= ~first
            if not alive.any():
                break
        score = score.reshape(self.E, K)
        if not self.a.deterministic:  # deterministic: ties go to the first candidate (argmax)
            score = score + 1e-6 * self.rng.random((self.E, K))
            score[:, 0] += 1e-3  # ties go to the previous plan (persistent, directed exploration)
        best = score.argmax(1)
        self.plans = [plans[e, best[e]] for e in range(self.E)]
        return np.stack([p[: self.a.replan_every] for p in self.plans])


if __name__ == "__main__":
    args = tyro.cli(Args)
    if any(not 0 <= a < NUM_ACTIONS for a in args.action_set):
        raise SystemExit(f"error: --action-set takes Procgen action indices 0-{NUM_ACTIONS - 1}, got {list(args.action_set)}")
    out_dir = args.out_dir.format(env_id=args.env_id)
    writer = EpisodeWriter(out_dir, args.num_transitions, int(args.test_fraction * args.num_transitions), args.chunk_size,
                           args.num_previews, preview_fn=lambda obs: obs)
    # a resumed run gets fresh levels: the level seed depends on how many chunks are already on disk
    run_seed = args.seed + 7919 * writer.num_resumed_chunks
    rng = np.random.default_rng(run_seed)
    env = procgen.ProcgenGym3Env(num=args.num_envs, env_name=args.env_id, distribution_mode="easy", num_levels=0, start_level=0,
                                 rand_seed=run_seed)
    planner = Planner(args, args.num_envs, rng)
    total = args.num_transitions + int(args.test_fraction * args.num_transitions)
    pbar = tqdm(total=total, initial=min(writer.num_recorded, total), desc=f"{args.env_id} planner", unit="frame")
    _, obs, _ = env.observe()
    eps = EpisodeBuffers(args.num_envs)
    # with --max-episodes each env keeps a quota of episodes, so short (failed) episodes are not over-represented
    quota = -(-args.max_episodes // args.num_envs) if args.max_episodes else None
    ep_count = np.zeros(args.num_envs, int)
    start, steps = time.time(), 0
    while not writer.done and not (quota and (ep_count >= quota).all()):
        actions = planner.plan(env.callmethod("get_state"))
        for k in range(args.replan_every):
            env.act(actions[:, k].astype(np.int32))
            rew, next_obs, first = env.observe()
            for e in range(args.num_envs):
                eps.append(e, obs["rgb"][e], actions[e, k], rew[e])
                planner.visited[e].add(planner.frame_key(obs["rgb"][e]))
            steps += args.num_envs
            obs = next_obs
            for e in np.nonzero(first)[0]:
                ep = eps.pop(e)
                planner.visited[e] = set()
                ep_count[e] += 1
                if quota and ep_count[e] > quota:
                    continue
                before = writer.num_recorded
                writer.add(ep)
                pbar.update(writer.num_recorded - before)
                pbar.set_postfix(ep_return=f"{np.mean(writer.returns):.2f}", episodes=len(writer.returns), sps=f"{steps / (time.time() - start):.1f}")
            if first.any():
                break  # a new episode started: replan from its first state
    for split in ("train", "test"):
        writer.flush(split)  # only reached with --max-episodes; complete episodes only
    pbar.close()
    elapsed = time.time() - start
    print(f"{args.env_id}: {len(writer.returns)} episodes, mean return {np.mean(writer.returns):.2f} +- {np.std(writer.returns):.2f}, "
          f"{steps} frames in {elapsed:.0f} s ({steps / elapsed:.1f} frames/s incl. unfinished episodes)")
    rand = random_return(args.env_id, args.random_episodes, args.seed) if args.random_episodes else None
    info = write_info(out_dir, env_id=args.env_id, suite="procgen", seed=args.seed, random_return_mean=rand,
                      paper_expert_return=EXPERT_RETURN.get(args.env_id), lapo_random_return=RANDOM_RETURN.get(args.env_id),
                      demonstrator=f"random-shooting planner on procgen state save/restore: {args.num_candidates} candidates, "
                                   f"horizon {args.horizon}, action repeat {args.action_repeat}, replan every {args.replan_every}, "
                                   f"death penalty {args.death_penalty}, novelty bonus {args.novelty_bonus}"
                                   + (", deterministic candidates" if args.deterministic else "")
                                   + (f", actions {list(args.action_set)}" if args.action_set else ""),
                      render={"distribution_mode": "easy", "num_levels": 0, "obs": "rgb 64x64x3"},
                      frames_per_second_this_run=steps / elapsed)
    print({k: info[k] for k in ("num_transitions", "num_test_transitions", "num_episodes", "ep_return_mean", "random_return_mean")})
    print(f"expert videos in {out_dir}; train on them with: python bcvlr.py --env-id {args.env_id} --video-dir {out_dir}")
