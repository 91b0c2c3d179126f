"""Shared fixtures: small real Procgen datasets in LAPO's npz layout, written by the tests themselves."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def record_procgen(env_id, num_frames, seed):
    """Uniform-random play of one Procgen env: obs [N, 64, 64, 3] uint8, ta, done (last frame of an episode), rewards.
    Episodes are contiguous, as in the expert-data format; the recording stops at an episode end."""
    from procgen import ProcgenGym3Env

    env = ProcgenGym3Env(num=1, env_name=env_id, distribution_mode="easy", num_levels=0, start_level=0, rand_seed=seed)
    rng = np.random.default_rng(seed)
    obs, ta, rewards, done = [], [], [], []
    _, ob, _ = env.observe()
    while True:
        a = rng.integers(15)
        obs.append(ob["rgb"][0])
        env.act(np.array([a], dtype=np.int32))
        rew, ob, first = env.observe()
        ta.append(a)
        rewards.append(rew[0])
        done.append(bool(first[0]))  # the next observation starts a new episode
        if len(obs) >= num_frames and done[-1]:
            break
        if len(obs) >= 3 * num_frames:  # very long episode: cut it (marked as an episode end)
            done[-1] = True
            break
    return {"obs": np.stack(obs), "ta": np.array(ta, dtype=np.int64), "done": np.array(done),
            "rewards": np.array(rewards, dtype=np.float32)}


def write_lapo_dataset(path, data, chunk=None):
    """Write `data` as LAPO-style chunks train/0.npz, train/1.npz, ... (chunk boundaries at episode ends)."""
    os.makedirs(os.path.join(path, "train"), exist_ok=True)
    n = len(data["obs"])
    bounds = sorted({0, n, *(int(e) for e in np.flatnonzero(data["done"]) + 1)})
    if chunk:  # group whole episodes into chunks of about `chunk` frames
        groups, start = [], 0
        for e in bounds[1:]:
            if e - start >= chunk or e == bounds[-1]:
                groups.append((start, e))
                start = e
    else:
        groups = [(0, bounds[-1])]
    for i, (s, e) in enumerate(groups):
        np.savez(os.path.join(path, "train", f"{i}.npz"), **{k: v[s:e] for k, v in data.items()})
    return path


@pytest.fixture(scope="session")
def procgen_data():
    pytest.importorskip("procgen")
    return record_procgen("bigfish", 1500, seed=0)


@pytest.fixture(scope="session")
def procgen_dir(tmp_path_factory, procgen_data):
    return write_lapo_dataset(str(tmp_path_factory.mktemp("expert_data") / "bigfish"), procgen_data, chunk=600)
