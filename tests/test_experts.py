"""Tests of the demonstrators in experts/: each one beats a uniform random policy on short real episodes (both
measured by the scripts themselves, nothing hard-coded), and the files they write have the documented layout and
load in the matching learner. Runs the scripts through their command line, as a user would (about 1-2 min)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def run_expert(script, out_dir, *args):
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    cmd = [sys.executable, os.path.join(ROOT, "experts", script), "--out-dir", str(out_dir), "--num-previews", "1", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(os.path.join(out_dir, "info.json")) as f:
        return json.load(f)


def load_split(out_dir, split="train"):
    files = sorted((f for f in os.listdir(os.path.join(out_dir, split)) if f.endswith(".npz")), key=lambda f: int(f[:-4]))
    return [dict(np.load(os.path.join(out_dir, split, f))) for f in files]


def check_chunks(chunks, obs_shape, act_dtype, act_dim=None):
    """Keys, shapes, dtypes and done / ep_returns semantics of every chunk."""
    assert chunks, "no chunk written"
    for d in chunks:
        n = len(d["done"])
        assert {"obs", "ta", "done", "rewards", "ep_returns"} <= set(d)
        assert d["obs"].dtype == np.uint8 and d["obs"].shape == (n, *obs_shape)
        assert d["ta"].dtype == act_dtype and len(d["ta"]) == n
        if act_dim:
            assert d["ta"].shape == (n, act_dim) and np.all(np.abs(d["ta"]) <= 1)
        assert d["done"].dtype == bool and d["rewards"].dtype == np.float32 and d["ep_returns"].dtype == np.float32
        assert d["done"][-1], "chunks hold complete episodes only"
        ends = np.flatnonzero(d["done"])
        for s, e in zip(np.r_[0, ends[:-1] + 1], ends + 1):  # one episode: constant ep_returns = sum of its rewards
            assert np.allclose(d["ep_returns"][s:e], d["rewards"][s:e].sum(), atol=1e-3)
        assert d["obs"].reshape(n, -1).std(0).max() > 0, "frames never change"


def check_frame_stacks(chunks):
    """Channels-first stacks of 3 frames, oldest first; the first frame of an episode is repeated."""
    for d in chunks:
        obs, ends = d["obs"], np.flatnonzero(d["done"])
        for s, e in zip(np.r_[0, ends[:-1] + 1], ends + 1):
            assert (obs[s, 0:3] == obs[s, 6:9]).all() and (obs[s, 3:6] == obs[s, 6:9]).all()
            assert (obs[s + 1 : e, 0:6] == obs[s : e - 1, 3:9]).all()


@pytest.fixture(scope="module")
def procgen_runs(tmp_path_factory):
    pytest.importorskip("procgen")
    runs = {}
    for game in ("bigfish", "fruitbot"):
        out = tmp_path_factory.mktemp("expert_data") / game
        action_set = ("--action-set", "1", "4", "7", "9") if game == "fruitbot" else ()  # LEFT, NOOP, RIGHT, D (key)
        info = run_expert("procgen_expert.py", out, "--env-id", game, "--num-transitions", "200", "--test-fraction", "0.5",
                          "--num-envs", "1", "--seed", "3", "--random-episodes", "30", *action_set)
        runs[game] = (str(out), info)
    return runs


@pytest.mark.parametrize("game", ["bigfish", "fruitbot"])
def test_procgen_planner_beats_random(procgen_runs, game):
    out, info = procgen_runs[game]
    train = load_split(out, "train")
    returns = np.concatenate([d["ep_returns"][d["done"]] for d in train])
    assert info["num_transitions"] >= 200 and info["num_test_transitions"] >= 100
    assert returns.mean() > info["random_return_mean"] + 3.0, (returns, info["random_return_mean"])


def test_procgen_action_set_is_the_only_actions_recorded(procgen_runs):
    out, info = procgen_runs["fruitbot"]
    actions = np.concatenate([d["ta"] for d in load_split(out)])
    assert set(np.unique(actions)) <= {1, 4, 7, 9} and len(np.unique(actions)) >= 2, np.unique(actions)
    assert "actions [1, 4, 7, 9]" in info["demonstrator"]
    bigfish_actions = np.concatenate([d["ta"] for d in load_split(procgen_runs["bigfish"][0])])
    assert len(np.unique(bigfish_actions)) > 4  # without --action-set, all 15 are candidates


def test_procgen_files(procgen_runs):
    out, info = procgen_runs["bigfish"]
    for split in ("train", "test"):
        check_chunks(load_split(out, split), (64, 64, 3), np.int64)
    assert os.path.exists(os.path.join(out, "previews", "ep0.mp4"))
    assert not [f for f in os.listdir(os.path.join(out, "train")) if f.endswith(".tmp")]
    bcvlr = pytest.importorskip("bcvlr")
    if not hasattr(bcvlr, "load_video_dataset"):
        pytest.skip("bcvlr.load_video_dataset does not exist yet")
    data = bcvlr.load_video_dataset(out)
    n = sum(len(d["done"]) for d in load_split(out))
    assert data["obs"].shape == (n, 64, 64, 3) and data["done"].sum() == info["num_episodes"] - sum(
        d["done"].sum() for d in load_split(out, "test"))
    assert np.isclose(data["video_return"], np.mean(np.concatenate([d["ep_returns"][d["done"]] for d in load_split(out)])))


def test_metaworld_reach_succeeds(tmp_path):
    pytest.importorskip("metaworld")
    out = tmp_path / "reach-v3"
    info = run_expert("metaworld_expert.py", out, "--env-id", "reach-v3", "--num-transitions", "500", "--random-episodes", "3")
    chunks = load_split(out)
    check_chunks(chunks, (9, 64, 64), np.float32, act_dim=4)
    check_frame_stacks(chunks)
    d = chunks[0]
    assert len(d["done"]) == 500 and d["success"].dtype == bool and d["success"].any()
    assert info["success_rate"] == 1.0 and info["random_success_rate"] < 1.0
    assert info["ep_return_mean"] > info["random_return_mean"]
    check_continuous_loader(out, "reach-v3")


def test_metaworld_action_repeat_records_one_frame_per_repeated_action(tmp_path):
    pytest.importorskip("metaworld")
    out = tmp_path / "reach-v3-r8"
    info = run_expert("metaworld_expert.py", out, "--env-id", "reach-v3", "--num-transitions", "126", "--random-episodes",
                      "2", "--action-repeat", "8")
    chunks = load_split(out)
    check_chunks(chunks, (9, 64, 64), np.float32, act_dim=4)
    check_frame_stacks(chunks)
    d = chunks[0]
    assert len(d["done"]) == 126 and np.flatnonzero(d["done"]).tolist() == [62, 125]  # 500 steps = 63 actions of 8
    assert d["success"].any() and info["success_rate"] == 1.0
    assert info["render"]["action_repeat"] == 8 and info["render"]["episode_length"] == 63
    assert info["ep_return_mean"] > info["random_return_mean"]  # rewards summed over the 8 steps of each action


@pytest.mark.parametrize("env_id", ["reacher_easy", "point_mass_easy", "finger_turn_easy"])
def test_dmc_controller_beats_random(tmp_path, env_id):
    pytest.importorskip("dm_control")
    out = tmp_path / env_id
    info = run_expert("dmc_expert.py", out, "--env-id", env_id, "--num-transitions", "1000", "--random-episodes", "3")
    chunks = load_split(out)
    check_chunks(chunks, (9, 64, 64), np.float32, act_dim=2)
    check_frame_stacks(chunks)
    assert info["num_transitions"] == 1000 and info["num_episodes"] == 2
    assert info["ep_return_mean"] > max(700.0, info["random_return_mean"] + 300.0), info
    check_continuous_loader(out, env_id)


def test_dmc_cheetah_run_backward_mpc_beats_random(tmp_path):
    """The paper's URLB task, built as the learner builds it (continuous_envs.py): a small MPC (16 candidates, 5 steps;
    measured 148 against random 23) runs backwards, 6-D actions, and the learner's loader reads the videos."""
    pytest.importorskip("dm_control")
    out = tmp_path / "cheetah"
    info = run_expert("dmc_expert.py", out, "--env-id", "cheetah_run_backward", "--num-transitions", "500",
                      "--random-episodes", "2", "--num-candidates", "16", "--horizon", "5")
    chunks = load_split(out)
    check_chunks(chunks, (9, 64, 64), np.float32, act_dim=6)
    check_frame_stacks(chunks)
    assert info["num_episodes"] == 1 and info["ep_return_mean"] > info["random_return_mean"] + 60.0, info
    check_continuous_loader(out, "cheetah_run_backward")


def test_dmc_expert_says_which_tasks_it_has(tmp_path):
    """A suite task without a demonstrator (or a misspelt one) ends with one line naming the tasks, no traceback."""
    pytest.importorskip("dm_control")
    for env_id in ("walker_walk", "finger_turn_easyy"):
        cmd = [sys.executable, os.path.join(ROOT, "experts", "dmc_expert.py"), "--env-id", env_id, "--out-dir", str(tmp_path / env_id)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().startswith("error:") and env_id in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / env_id / "train").exists() or not os.listdir(tmp_path / env_id / "train")


def test_dmc_resume_keeps_chunks(tmp_path):
    """A second run with a larger budget keeps the complete chunks on disk and only adds the missing episodes."""
    pytest.importorskip("dm_control")
    out = tmp_path / "point_mass_easy"
    run_expert("dmc_expert.py", out, "--env-id", "point_mass_easy", "--num-transitions", "500", "--random-episodes", "0",
               "--chunk-size", "500")
    first = np.load(out / "train" / "0.npz")["obs"]
    (out / "train" / "7.npz.tmp").write_bytes(b"half-written")  # what an interrupted write would leave behind
    info = run_expert("dmc_expert.py", out, "--env-id", "point_mass_easy", "--num-transitions", "1000", "--random-episodes", "0",
                      "--chunk-size", "500")
    assert sorted(os.listdir(out / "train")) == ["0.npz", "1.npz"]
    assert (np.load(out / "train" / "0.npz")["obs"] == first).all()
    assert info["num_transitions"] == 1000 and info["num_episodes"] == 2
    a, b = (np.load(out / "train" / f"{i}.npz")["obs"] for i in (0, 1))
    assert not (a[0] == b[0]).all(), "the resumed run must record new episodes"


def check_continuous_loader(out, env_id):
    bc = pytest.importorskip("bcvlr_continuous")
    if not hasattr(bc, "load_videos"):
        pytest.skip("bcvlr_continuous.load_videos does not exist yet")
    data = bc.load_videos(str(out), env_id)
    chunks = load_split(out)
    assert data.obs.shape == (sum(len(d["done"]) for d in chunks), 9, 64, 64)
    assert (data.done == np.concatenate([d["done"] for d in chunks])).all()
    assert np.isclose(data.video_return(), np.mean(np.concatenate([d["ep_returns"][d["done"]] for d in chunks])))


def import_expert(name):
    sys.path.insert(0, os.path.join(ROOT, "experts"))
    import importlib
    return importlib.import_module(name)


def test_dmc_deterministic_mpc_is_a_function_of_the_state():
    """--deterministic (issue 11): the MPC's action at a state does not depend on the history or on fresh draws;
    the original planner's does (so the test can fail)."""
    pytest.importorskip("dm_control")
    ex = import_expert("dmc_expert")
    env = ex.make_env("finger_spin", 0)
    env.reset()
    substeps = int(round(env.control_timestep() / env.physics.model.opt.timestep))
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, 2))
    state = env.physics.get_state().copy()
    for deterministic in (True, False):
        mpc = ex.ShootingMPC("finger_spin", substeps, num_candidates=16, horizon=4, hold=1, bang=False, perturbed=0.5,
                             noise=0.6, deterministic=deterministic, seed=1)
        first = []
        for detour in range(3):  # the same state, reached after a different history of calls each time
            for _ in range(detour):
                env.step(rng.uniform(-1, 1, 2))
                mpc(env.physics)
            with env.physics.reset_context():
                env.physics.set_state(state)
            first.append(np.asarray(mpc(env.physics)).copy())
        same = all(np.array_equal(first[0], a) for a in first[1:])
        assert same == deterministic, (deterministic, first)


def test_procgen_deterministic_planner_repeats_its_choice():
    """--deterministic (issue 11): from the same Procgen state the planner chooses the same actions every time."""
    pytest.importorskip("procgen")
    ex = import_expert("procgen_expert")
    choices = {}
    for deterministic in (True, False):
        args = ex.Args(env_id="coinrun", num_candidates=20, horizon=16, novelty_bonus=0.0, seed=2, deterministic=deterministic)
        env = ex.procgen.ProcgenGym3Env(num=1, env_name="coinrun", distribution_mode="easy", num_levels=0, start_level=0, rand_seed=5)
        for _ in range(10):
            env.act(np.array([7], np.int32))
        state = env.callmethod("get_state")
        planner = ex.Planner(args, 1, np.random.default_rng(0))
        choices[deterministic] = [planner.plan(state)[0].tolist() for _ in range(6)]
    assert all(c == choices[True][0] for c in choices[True]), choices[True]
    assert len(set(map(tuple, choices[False]))) > 1, choices[False]


def test_dmc_action_noise_is_executed_and_recorded():
    """--action-noise (issue 11): `ta` is the executed, noisy action (clipped to the action box); 0 leaves the
    demonstrator's own actions, so the recorded actions of the two differ from the first step on."""
    pytest.importorskip("dm_control")
    ex = import_expert("dmc_expert")
    eps = {}
    for noise in (0.0, 0.5):
        env = ex.make_env("point_mass_easy", 3)
        eps[noise] = ex.run_episode(env, ex.PointMassPD(), render_frames=False, rng=np.random.default_rng(0), action_noise=noise)
    clean, noisy = eps[0.0]["ta"], eps[0.5]["ta"]
    assert clean.shape == noisy.shape == (500, 2) and np.abs(noisy).max() <= 1.0
    assert not np.allclose(clean[0], noisy[0])
    assert np.abs(np.diff(noisy, axis=0)).mean() > 2 * np.abs(np.diff(clean, axis=0)).mean()  # noise: step-to-step jitter


def test_dmc_mppi_action_interpolates_between_best_and_mean():
    """--mppi-temperature: a tiny temperature acts with the best candidate's first action, a huge one with the mean of
    all candidates' first actions (the deterministic candidate set makes the two calls comparable)."""
    pytest.importorskip("dm_control")
    ex = import_expert("dmc_expert")
    env = ex.make_env("finger_spin", 0)
    env.reset()
    substeps = int(round(env.control_timestep() / env.physics.model.opt.timestep))
    acts = {}
    for t in (1e-6, 1e6):
        mpc = ex.ShootingMPC("finger_spin", substeps, num_candidates=16, horizon=4, hold=1, deterministic=True, temperature=t, seed=1)
        acts[t] = (np.asarray(mpc(env.physics)), mpc)
    best, mpc = acts[1e-6]
    assert np.allclose(best, mpc.plan[0])
    assert np.allclose(acts[1e6][0], acts[1e6][1].fixed_plans[:, 0].mean(0), atol=1e-4)
    assert not np.allclose(acts[1e6][0], best)
