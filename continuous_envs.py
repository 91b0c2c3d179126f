"""Pixel environments of bcvlr_continuous.py: DMControl (with URLB's cheetah_run_backward and jaco_reach_* tasks) and
Metaworld v3 as gymnasium envs of 64x64 RGB frames, stacked 3 deep, with action repeat. They are environment plumbing,
not BCV-LR; to run the learner on another task, replace `make_env` (and `check_env_id` in the learner)."""
import gymnasium as gym
import numpy as np


def is_metaworld(env_id: str) -> bool:
    return env_id.endswith("-v3")


DMC_ALIASES = {"cup_catch": ("ball_in_cup", "catch"), "cheetah_run_backward": ("cheetah", "run_backward")}


def load_cheetah_run_backward(seed):
    """URLB's cheetah `run_backward`: the suite's cheetah run task, rewarded for running in the -x direction. As in URLB's
    cheetah.xml the floor is drawn 200 m long instead of 100 m, so it stays visible behind the start."""
    from dm_control.rl import control
    from dm_control.suite import cheetah
    from dm_control.utils import rewards

    class RunBackward(cheetah.Cheetah):
        def get_reward(self, physics):
            speed = cheetah._RUN_SPEED  # 10 m/s, as in the suite's run task
            bounds = (speed, float("inf"))
            return rewards.tolerance(-physics.speed(), bounds=bounds, margin=speed, value_at_margin=0, sigmoid="linear")

    xml, assets = cheetah.get_model_and_assets()
    physics = cheetah.Physics.from_xml_string(xml.replace(b'size="100 .8 .5"', b'size="200 .8 .5"'), assets)
    return control.Environment(physics, RunBackward(random=seed), time_limit=cheetah._DEFAULT_TIME_LIMIT)


JACO_TARGETS = {"top_left": (-0.09, 0.09), "top_right": (0.09, 0.09), "bottom_left": (-0.09, -0.09),
                "bottom_right": (0.09, -0.09)}


def load_jaco_reach(target, seed):
    """URLB's Jaco `reach_<target>`: dm_control's manipulation Reach task (Jaco arm, Duplo brick as target) with the brick
    always at one fixed corner; 10 s episodes at a 0.04 s control step (250 env steps). Pixels from camera `front_close`."""
    from dm_control import composer
    from dm_control.entities import props
    from dm_control.manipulation import reach
    from dm_control.manipulation.shared import arenas, constants, observations, robots, workspaces

    x, y = JACO_TARGETS[target]
    workspace = reach._DUPLO_WORKSPACE._replace(target_bbox=workspaces.BoundingBox(lower=(x, y, 0.001), upper=(x, y, 0.001)))
    obs = observations.PERFECT_FEATURES  # no camera observables: we render the pixels ourselves
    prop = props.Duplo(observable_options=observations.make_options(obs, observations.FREEPROP_OBSERVABLES))
    task = reach.Reach(arena=arenas.Standard(), arm=robots.make_arm(obs_settings=obs), hand=robots.make_hand(obs_settings=obs),
                       prop=prop, obs_settings=obs, workspace=workspace, control_timestep=constants.CONTROL_TIMESTEP)
    return composer.Environment(task, time_limit=10.0, random_state=seed)


class PixelEnv(gym.Env):
    """A DMControl or Metaworld v3 (MT1) task from 64x64 RGB pixels, fast render settings (no MSAA, no shadows,
    dependencies.md section 2), actions in [-1, 1]^A, `action_repeat` simulator steps per action (rewards summed).
    DMControl: actions rescaled to the actuator range, camera 0 (Jaco: front_close), 1000 frames. Metaworld: camera
    corner2 flipped upright, 500 steps, info["success"] = 1.0 if solved at any step inside this agent step."""

    def __init__(self, env_id, seed, action_repeat, size=64):
        self.metaworld, self.action_repeat, self.size = is_metaworld(env_id), action_repeat, size
        if self.metaworld:
            import metaworld  # noqa: F401  (registers Meta-World/MT1)

            self._env = gym.make("Meta-World/MT1", env_name=env_id, seed=seed, render_mode="rgb_array",
                                 camera_name="corner2", width=size, height=size)
            model, shape = self._env.unwrapped.model, self._env.action_space.shape
        else:
            from dm_control import suite

            self.camera = "front_close" if env_id.startswith("jaco_reach_") else 0
            if env_id.startswith("jaco_reach_"):
                self._env = load_jaco_reach(env_id[len("jaco_reach_") :], seed)
            elif env_id == "cheetah_run_backward":
                self._env = load_cheetah_run_backward(seed)
            else:
                domain, task = DMC_ALIASES.get(env_id) or next((d, t) for d, t in suite.ALL_TASKS if f"{d}_{t}" == env_id)
                self._env = suite.load(domain, task, task_kwargs={"random": seed})
            spec = self._env.action_spec()
            self._low, self._high = spec.minimum.astype(np.float32), spec.maximum.astype(np.float32)
            model, shape = self._env.physics.model, spec.shape
        model.vis.quality.offsamples, model.vis.quality.shadowsize = 0, 0
        self._camera = self._camera_physics = None  # DMControl: one Camera for all frames (_frame)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape, np.float32)
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)

    def _frame(self):
        if self.metaworld:
            return np.ascontiguousarray(self._env.render()[::-1, ::-1])  # corner cameras render upside down
        # `physics.render` builds a Camera (and its MjvScene) for every frame: 2/3 of a 64x64 frame's cost on our CPU.
        # One Camera per physics renders the same pixels (its render() is what physics.render calls; test_continuous);
        # it returns the same array every time, hence the copy.
        physics = self._env.physics
        if self._camera is None or self._camera_physics is not physics:  # composer envs may rebuild physics
            from dm_control.mujoco.engine import Camera

            if self._camera is not None:
                self._camera._scene.free()  # as physics.render does with its camera's scene
            self._camera, self._camera_physics = Camera(physics, self.size, self.size, self.camera), physics
        return self._camera.render().copy()

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._env.reset()
        return self._frame(), {}

    def step(self, action):
        action, reward, success, terminated, truncated = np.clip(action, -1.0, 1.0), 0.0, 0.0, False, False
        for _ in range(self.action_repeat):
            if self.metaworld:
                _, r, terminated, truncated, info = self._env.step(action)
                success = max(success, float(info["success"]))
            else:  # [-1, 1] -> [low, high]
                time_step = self._env.step(self._low + (action + 1.0) / 2.0 * (self._high - self._low))
                r, truncated = time_step.reward or 0.0, time_step.last()
            reward += r
            if terminated or truncated:
                break
        return self._frame(), reward, terminated, truncated, {"success": success} if self.metaworld else {}

    def close(self):
        if self.metaworld:
            self._env.close()  # frees the EGL context now (otherwise an ignored traceback is printed at exit)


def frame_stack(env, k=3):
    """Observation = the last k frames channels-first, oldest first: k x [H, W, 3] -> [3k, H, W] uint8. At reset the first
    frame is repeated k times (gymnasium's FrameStackObservation, padding 'reset', as DrQ-v2), exactly as in the videos."""
    h, w, c = env.observation_space.shape
    env = gym.wrappers.FrameStackObservation(env, k, padding_type="reset")  # [k, H, W, 3]
    space = gym.spaces.Box(0, 255, (k * c, h, w), np.uint8)
    return gym.wrappers.TransformObservation(env, lambda o: o.transpose(0, 3, 1, 2).reshape(k * c, h, w), space)


def make_env(env_id, seed, action_repeat=-1, max_episode_steps=0, frame_stack_size=3):
    """The env of agent and experts: 64x64 RGB, frame stack 3 -> [9, 64, 64] uint8, action repeat, actions in [-1, 1]."""
    action_repeat = action_repeat if action_repeat > 0 else (1 if is_metaworld(env_id) else 2)
    env = PixelEnv(env_id, seed, action_repeat)
    if max_episode_steps > 0:
        env = gym.wrappers.TimeLimit(env, max_episode_steps)
    env = frame_stack(env, frame_stack_size)
    env.action_space.seed(seed)
    return env
