# DMControl demonstrators that read the simulator state; the video is rendered pixels with the learner's settings
# (conventions: 64x64, camera 0, offsamples=0, shadowsize=0, action repeat 2, 500 agent steps, 3-frame stacks).
# - point_mass_easy, reacher_easy, reacher_hard: PD control of the mass / the fingertip toward the target
#   (fingertip force mapped to joint torques with the Jacobian transpose).
# - finger_spin, cup_catch: model-predictive control, random shooting over open-loop action sequences simulated
#   from the current state with mujoco.rollout (the simulator is deterministic); cup: zero action once caught;
#   finger: full-torque (bang-bang) candidates re-chosen every step, short horizon, flicks the spinner continuously;
#   finger_turn_easy: uniform candidates held 2 steps, horizon 10, scored by the steps with the spinner's tip inside
#   the target (the task's reward) minus its distance to the target.
# - cheetah_run_backward (URLB's, the paper's task; continuous_envs.py): the same random shooting, scored by the torso's
#   backward speed (the task's reward is min(-speed / 10, 1)).
#   python experts/dmc_expert.py --env-id reacher_hard --num-transitions 100000
import os
import sys
import time
import warnings
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco
import mujoco.rollout
import numpy as np
import tyro
from dm_control import suite
from tqdm import tqdm

from common import EpisodeWriter, write_info

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # imageio_ffmpeg 0.3.0
# expert-video returns the paper reports (../shared/spec/algorithm.md section 7.2)
PAPER_EXPERT_RETURN = dict(reacher_hard=967, finger_spin=981)
DOMAIN_TASK = dict(cup_catch=("ball_in_cup", "catch"))
SPECIAL_TASKS = ("cheetah_run_backward",)  # built by continuous_envs.py, as the learner builds them
ACTION_REPEAT = 2


@dataclass
class Args:
    env_id: str = "reacher_hard"
    """<domain>_<task>: point_mass_easy, reacher_easy, reacher_hard, finger_spin, cup_catch, finger_turn_easy,
    cheetah_run_backward"""
    num_transitions: int = 100000
    """train transitions to record (500 agent steps per episode)"""
    test_fraction: float = 0.0
    """an extra test/ split with this fraction of num_transitions (0: none, as in the paper's DMC data)"""
    seed: int = 1
    """seed of the task (task_kwargs random) and the planner"""
    out_dir: str = "expert_data/{env_id}"
    """output folder"""
    chunk_size: int = 10000
    """transitions per .npz chunk"""
    num_previews: int = 2
    """episodes saved as mp4 previews"""
    num_candidates: int = 0
    """MPC tasks (finger_spin, cup_catch, finger_turn_easy, cheetah_run_backward): candidate action sequences per
    decision (0: the task's default)"""
    horizon: int = 0
    """MPC tasks: lookahead in agent steps (0: the task's default)"""
    random_episodes: int = 10
    """episodes of a uniform random policy (no rendering) measured for info.json (0 to skip)"""
    max_episodes: int = 0
    """stop after this many episodes (0 = no limit; for quick measurements)"""
    mppi_temperature: float = 0.0
    """MPC tasks: act with the softmax(score / T)-weighted mean of the candidates' first actions (MPPI) instead of
    the best candidate's; with --deterministic the action is then a smooth function of the state. 0: the best"""
    action_noise: float = 0.0
    """std of Gaussian noise added to the demonstrator's action before it is executed (and recorded: `ta` is the
    executed action). Noise-injected demonstrations (DART, Laskey et al. 2017) show how the demonstrator recovers
    from off-course states, which behaviour cloning on clean demonstrations never sees (issue 11). 0: off"""
    deterministic: bool = False
    """MPC tasks: the same candidate plans at every decision and no plan reuse, so that the action is a function of
    the current state alone (an imitable demonstrator; issue 11). Off: the original planner"""


def make_env(env_id, seed):
    # point_mass_easy -> (point_mass, easy), finger_turn_easy -> (finger, turn_easy); ids are checked by check_task
    if env_id in SPECIAL_TASKS:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # the repo root
        from continuous_envs import load_cheetah_run_backward

        env = load_cheetah_run_backward(seed)
    else:
        domain, task = DOMAIN_TASK.get(env_id) or {f"{d}_{t}": (d, t) for d, t in suite.ALL_TASKS}[env_id]
        env = suite.load(domain, task, task_kwargs={"random": seed})
    env.physics.model.vis.quality.offsamples = 0  # fast rendering (dependencies.md section 2)
    env.physics.model.vis.quality.shadowsize = 0
    return env


def render(env):
    return env.physics.render(height=64, width=64, camera_id=0).transpose(2, 0, 1).copy()  # (3, 64, 64)


def stack_frames(frames):
    """(T, 3, H, W) -> (T, 9, H, W): frames t-2, t-1, t (oldest first); the first frame repeats at the start."""
    padded = np.concatenate([frames[:1], frames[:1], frames])
    return np.concatenate([padded[:-2], padded[1:-1], padded[2:]], axis=1)


class PointMassPD:
    """PD control of the point mass toward the target (state-based)."""

    def __init__(self, kp=30.0, kd=5.0):
        self.kp, self.kd = kp, kd

    def __call__(self, physics):
        err = physics.named.model.geom_pos["target", :2] - physics.named.data.geom_xpos["pointmass", :2]
        return self.kp * err - self.kd * physics.velocity()


class ReacherPD:
    """Fingertip PD in Cartesian space, mapped to joint torques with the Jacobian transpose."""

    def __init__(self, kp=200.0, kd=0.2):
        self.kp, self.kd = kp, kd

    def __call__(self, physics):
        model, data = physics.model.ptr, physics.data.ptr
        finger = model.geom("finger").id
        jacp = np.zeros((3, model.nv))
        mujoco.mj_jacGeom(model, data, jacp, None, finger)
        force = self.kp * (data.geom_xpos[model.geom("target").id, :2] - data.geom_xpos[finger, :2])
        return jacp[:2].T @ force - self.kd * data.qvel


def run_episode(env, controller, render_frames=True, rng=None, action_noise=0.0):
    ts = env.reset()
    frames, actions, rewards = [], [], []
    spec = env.action_spec()
    while not ts.last():
        if render_frames:
            frames.append(render(env))
        action = rng.uniform(spec.minimum, spec.maximum) if controller is None else controller(env.physics)
        if action_noise and controller is not None:
            action = action + action_noise * rng.standard_normal(action.shape)
        action = np.clip(action, -1, 1).astype(np.float32)
        reward = 0.0
        for _ in range(ACTION_REPEAT):
            ts = env.step(action)
            reward += ts.reward or 0.0
            if ts.last():
                break
        actions.append(action), rewards.append(reward)
    ep = dict(ta=np.stack(actions), rewards=np.asarray(rewards, np.float32))
    if render_frames:
        ep["obs"] = stack_frames(np.stack(frames))
    return ep


class ShootingMPC:
    """Random-shooting MPC on the true simulator (mujoco.rollout from the current state); plan reuse between steps."""

    def __init__(self, env_id, substeps, num_candidates=64, horizon=20, hold=4, seed=0, cap=20.0, weight=0.05, hold_when_caught=True,
                 perturbed=0.0, noise=0.3, bang=False, deterministic=False, temperature=0.0):
        self.env_id, self.K, self.H, self.hold, self.cap, self.weight = env_id, num_candidates, horizon, hold, cap, weight
        self.substeps = substeps  # physics steps per env step (control_timestep / timestep)
        self.hold_when_caught, self.perturbed, self.noise = hold_when_caught, perturbed, noise
        self.bang = bang  # sample random plans from the corners of the action box (full torque) instead of uniformly
        self.rng, self.plan, self.data = np.random.default_rng(seed), None, None
        self.deterministic, self.fixed_plans = deterministic, None  # deterministic: one candidate set drawn once
        self.temperature = temperature

    def score(self, physics, states, sensordata):
        """(K, T, nstate), (K, T, nsensor) -> (K,) objective of each simulated trajectory."""
        model = physics.model.ptr
        if self.env_id == "finger_spin":  # reward: hinge velocity <= -15; shaped by the velocity itself
            v = -sensordata[:, :, model.sensor("hinge_velocity").adr[0]]
            return (v >= 15).sum(1) + self.weight * np.minimum(v, self.cap).sum(1)
        if self.env_id == "cheetah_run_backward":  # reward: min(-speed / 10, 1); scored by the capped backward speed
            v = -sensordata[:, :, model.sensor("torso_subtreelinvel").adr[0]]
            return np.minimum(v, self.cap).sum(1)
        if self.env_id.startswith("finger_turn"):  # reward: the spinner's tip inside the target circle; shaped by distance
            tip = sensordata[:, :, model.sensor("tip").adr[0] + np.array([0, 2])]
            target = sensordata[:, :, model.sensor("target").adr[0] + np.array([0, 2])]
            dist = np.linalg.norm(target - tip, axis=-1) - physics.named.model.site_size["target", 0]
            return (dist <= 0).sum(1) - self.weight * dist.sum(1)
        # cup_catch: qpos = cup_x, cup_z, ball_x, ball_z; reward: ball inside the cup's target box
        qpos = states[:, :, 1 : 1 + model.nq]
        cup = qpos[..., :2] + self.cup_offset
        ball = qpos[..., 2:4] + self.ball_offset
        inside = (np.abs(cup - ball) < self.half_size).all(-1)
        height = np.minimum(ball[..., 1] - cup[..., 1], 0.0).max(1)  # swing-up: highest ball point below the cup
        return inside.sum(1) + 5.0 * height - np.linalg.norm(cup - ball, axis=-1).mean(1)

    def __call__(self, physics):
        model, data = physics.model.ptr, physics.data.ptr
        if self.env_id == "cup_catch" and self.data is not None and physics.in_target() and self.hold_when_caught:
            self.plan = None
            return np.zeros(model.nu)  # caught: keep still (cheap), the cup's springs keep it centred
        if self.data is None:
            self.data = mujoco.MjData(model)
            if self.env_id == "cup_catch":  # world positions = qpos + offsets (slide joints)
                self.cup_offset = physics.named.data.site_xpos["target", ["x", "z"]] - physics.named.data.qpos[["cup_x", "cup_z"]]
                self.ball_offset = physics.named.data.xpos["ball", ["x", "z"]] - physics.named.data.qpos[["ball_x", "ball_z"]]
                self.half_size = physics.named.model.site_size["target", [0, 2]] - physics.named.model.geom_size["ball", 0]
        nu, segs = model.nu, -(-self.H // self.hold)
        if self.deterministic and self.fixed_plans is not None:
            plans = self.fixed_plans
        else:
            raw = self.rng.uniform(-1, 1, (self.K, segs, nu))
            if self.bang:
                raw = np.sign(raw)
            plans = np.repeat(raw, self.hold, axis=1)[:, : self.H]
            if self.deterministic:
                plans[1] = 0.0
                self.fixed_plans = plans
        if self.plan is not None and not self.deterministic:  # candidate 0: the previous best plan shifted by one step; candidate 1: zero action
            plans[0] = np.concatenate([self.plan[1:], self.plan[-1:]])
            plans[1] = 0.0
            n = int(self.K * self.perturbed)  # then noisy copies of the shifted plan (local search around it)
            plans[2 : 2 + n] = np.clip(plans[0] + self.noise * self.rng.standard_normal((n, self.H, nu)), -1, 1)
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        state = np.zeros(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, state, spec)
        controls = np.repeat(plans, ACTION_REPEAT * self.substeps, axis=1)
        states, sensordata = mujoco.rollout.rollout(model, self.data, state[None], controls)
        score = self.score(physics, states, sensordata)
        self.plan = plans[int(np.argmax(score))]
        if self.temperature > 0:  # MPPI: the softmax-weighted mean of the candidates' first actions
            w = np.exp((score - score.max()) / self.temperature)
            return (w / w.sum()) @ plans[:, 0]
        return self.plan[0]


# settings measured to work (experts/README.md); hold = agent steps each random action is held.
# finger_spin: the spinner loses half its speed in about 0.3 s, so it needs a full-torque flick every few steps:
# bang-bang plans changing every step, a short horizon (7 agent steps; longer ones scored worse) and many candidates.
MPC_SETTINGS = dict(finger_spin=dict(num_candidates=256, horizon=7, hold=1, perturbed=0.5, noise=0.6, bang=True, cap=100.0),
                    cup_catch=dict(num_candidates=32, horizon=10, hold=3),
                    finger_turn_easy=dict(num_candidates=64, horizon=10, hold=2, weight=1.0, perturbed=0.5),
                    cheetah_run_backward=dict(num_candidates=128, horizon=15, hold=1, cap=10.0, perturbed=0.5, noise=0.3))
CONTROLLERS = dict(point_mass_easy=PointMassPD, reacher_easy=ReacherPD, reacher_hard=ReacherPD)


def check_task(env_id):
    """One-line exit for an id that is not a DMControl task, or a task this script has no demonstrator for."""
    have = sorted(set(CONTROLLERS) | set(MPC_SETTINGS))
    if env_id not in have:
        raise SystemExit(f"error: no demonstrator for '{env_id}'; this script has: {', '.join(have)}")


def make_controller(args, env):
    substeps = int(round(env.control_timestep() / env.physics.model.opt.timestep))
    if args.env_id in MPC_SETTINGS:
        kwargs = dict(MPC_SETTINGS[args.env_id])
        kwargs.update({k: v for k, v in (("num_candidates", args.num_candidates), ("horizon", args.horizon)) if v})
        return ShootingMPC(args.env_id, substeps, seed=args.seed, deterministic=args.deterministic,
                           temperature=args.mppi_temperature, **kwargs)
    return CONTROLLERS[args.env_id]()


if __name__ == "__main__":
    args = tyro.cli(Args)
    check_task(args.env_id)
    out_dir = args.out_dir.format(env_id=args.env_id)
    writer = EpisodeWriter(out_dir, args.num_transitions, int(args.test_fraction * args.num_transitions), args.chunk_size,
                           args.num_previews, preview_fn=lambda obs: obs[:, 6:].transpose(0, 2, 3, 1))
    run_seed = args.seed + 7919 * writer.num_resumed_chunks  # a resumed run gets fresh episodes
    env = make_env(args.env_id, run_seed)
    controller = make_controller(args, env)
    noise_rng = np.random.default_rng(run_seed + 10**5)  # --action-noise
    total = args.num_transitions + int(args.test_fraction * args.num_transitions)
    pbar = tqdm(total=total, initial=min(writer.num_recorded, total), desc=args.env_id, unit="frame")
    start, episodes = time.time(), 0
    while not writer.done and not (args.max_episodes and episodes >= args.max_episodes):
        ep = run_episode(env, controller, rng=noise_rng, action_noise=args.action_noise)
        before = writer.num_recorded
        writer.add(ep)
        episodes += 1
        pbar.update(writer.num_recorded - before)
        pbar.set_postfix(ep_return=f"{np.mean(writer.returns):.0f}")
    for split in ("train", "test"):
        writer.flush(split)
    pbar.close()
    elapsed = time.time() - start
    print(f"{args.env_id}: {episodes} episodes, mean return {np.mean(writer.returns):.1f} +- {np.std(writer.returns):.1f}, "
          f"{elapsed:.0f} s ({500 * episodes / elapsed:.1f} frames/s)")
    rand = None
    if args.random_episodes:
        renv, rng = make_env(args.env_id, args.seed + 10**6), np.random.default_rng(args.seed)
        rand = float(np.mean([run_episode(renv, None, False, rng)["rewards"].sum() for _ in range(args.random_episodes)]))
    info = write_info(out_dir, env_id=args.env_id, suite="dmc", seed=args.seed, random_return_mean=rand,
                      paper_expert_return=PAPER_EXPERT_RETURN.get(args.env_id), demonstrator=(type(controller).__doc__ or type(controller).__name__)
                      + (" Deterministic: one candidate set, no plan reuse." if args.deterministic and args.env_id in MPC_SETTINGS else "")
                      + (f" MPPI: softmax(score / {args.mppi_temperature})-weighted first actions." if args.mppi_temperature else "")
                      + (f" Executed (and recorded) action = demonstrator's + N(0, {args.action_noise}^2), clipped." if args.action_noise else ""),
                      render={"height": 64, "width": 64, "camera_id": 0, "offsamples": 0, "shadowsize": 0,
                              "action_repeat": ACTION_REPEAT, "frame_stack": 3, "episode_length": 500})
    print({k: info[k] for k in ("num_transitions", "num_episodes", "ep_return_mean", "ep_return_std", "random_return_mean")})
    print(f"expert videos in {out_dir}; train on them with: python bcvlr_continuous.py --env-id {args.env_id} --video-dir {out_dir}")
