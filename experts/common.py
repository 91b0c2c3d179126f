# Shared helpers for the demonstrator scripts: chunked, atomic, resumable writing of expert videos in the
# layout the learners read (expert_data/<env_id>/{train,test}/<int>.npz), mp4 previews and info.json.
# Format: see the "Expert-video data formats" section of the project's conventions (experts/README.md).
import glob
import json
import os

import numpy as np


def save_npz_atomic(path, **arrays):
    """np.savez to `<path>.tmp`, then os.replace: an interrupted run never leaves a half-written .npz."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def chunk_files(split_dir):
    """Complete chunks of one split, in numeric order of their integer file stems."""
    files = [f for f in glob.glob(os.path.join(split_dir, "*.npz")) if os.path.basename(f)[:-4].isdigit()]
    return sorted(files, key=lambda f: int(os.path.basename(f)[:-4]))


def write_preview(path, frames, fps=15, scale=4):
    """frames: (T, H, W, 3) uint8 -> mp4 upscaled x`scale` (imageio_ffmpeg, see dependencies.md section 5).
    Previews are optional: without a working imageio_ffmpeg (an offline GPU node, README) they are skipped with a note."""
    try:
        import imageio_ffmpeg
    except ImportError as e:  # also imageio_ffmpeg 0.3.0 under setuptools >= 82 (no pkg_resources)
        print(f"preview {path} skipped: imageio_ffmpeg does not import ({e}); the chunks are written as usual")
        return

    frames = np.repeat(np.repeat(np.asarray(frames), scale, axis=1), scale, axis=2)
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(path + ".tmp.mp4", (w, h), fps=fps, codec="libx264", quality=8, macro_block_size=16)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    os.replace(path + ".tmp.mp4", path)


class EpisodeWriter:
    """Collects complete episodes and writes them chunk by chunk: train first, then test.

    An episode is a dict of equal-length arrays: obs, ta, rewards (+ success for Metaworld). done and ep_returns
    are added here. On restart, complete chunks already on disk are kept and counted (resume)."""

    def __init__(self, out_dir, num_train, num_test, chunk_size, num_previews=2, preview_fn=None):
        self.out_dir, self.chunk_size, self.preview_fn = out_dir, chunk_size, preview_fn
        self.target = {"train": num_train, "test": num_test}
        self.count, self.next_idx, self.buffer = {}, {}, {"train": [], "test": []}
        for split in ("train", "test"):
            split_dir = os.path.join(out_dir, split)
            os.makedirs(split_dir, exist_ok=True)
            for tmp in glob.glob(os.path.join(split_dir, "*.tmp")):
                os.remove(tmp)  # left over by an interrupted write
            files = chunk_files(split_dir)
            self.count[split] = sum(len(np.load(f)["done"]) for f in files)
            self.next_idx[split] = int(os.path.basename(files[-1])[:-4]) + 1 if files else 0
        self.num_resumed_chunks = self.next_idx["train"] + self.next_idx["test"]
        os.makedirs(os.path.join(out_dir, "previews"), exist_ok=True)
        self.previews_left = max(0, num_previews - len(glob.glob(os.path.join(out_dir, "previews", "ep*.mp4"))))
        self.returns = []  # returns of the episodes recorded in this run

    @property
    def split(self):
        for split in ("train", "test"):
            if self.count[split] < self.target[split]:
                return split
        return None

    @property
    def done(self):
        return self.split is None

    @property
    def num_recorded(self):
        return self.count["train"] + self.count["test"]

    def add(self, episode):
        split = self.split
        if split is None:
            return
        n = len(episode["rewards"])
        ret = float(np.sum(episode["rewards"]))
        episode = dict(episode)
        episode["done"] = np.zeros(n, bool)
        episode["done"][-1] = True
        episode["ep_returns"] = np.full(n, ret, np.float32)
        self.buffer[split].append(episode)
        self.count[split] += n
        self.returns.append(ret)
        if self.previews_left > 0 and self.preview_fn is not None:
            k = len(glob.glob(os.path.join(self.out_dir, "previews", "ep*.mp4")))
            write_preview(os.path.join(self.out_dir, "previews", f"ep{k}.mp4"), self.preview_fn(episode["obs"]))
            self.previews_left -= 1
        if sum(len(e["rewards"]) for e in self.buffer[split]) >= self.chunk_size or self.count[split] >= self.target[split]:
            self.flush(split)

    def flush(self, split):
        episodes = self.buffer[split]
        if not episodes:
            return
        arrays = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
        save_npz_atomic(os.path.join(self.out_dir, split, f"{self.next_idx[split]}.npz"), **arrays)
        self.next_idx[split] += 1
        self.buffer[split] = []


class EpisodeBuffers:
    """The running episode of each env of a vectorised discrete-action env (Procgen): append one step per env, pop an
    env's episode when it ends, as the dict of arrays that EpisodeWriter.add takes."""

    def __init__(self, num_envs):
        self.episodes = [dict(obs=[], ta=[], rewards=[]) for _ in range(num_envs)]

    def append(self, e, obs, action, reward):
        ep = self.episodes[e]
        ep["obs"].append(obs), ep["ta"].append(action), ep["rewards"].append(reward)

    def pop(self, e):
        ep, self.episodes[e] = self.episodes[e], dict(obs=[], ta=[], rewards=[])
        return dict(obs=np.stack(ep["obs"]).astype(np.uint8), ta=np.asarray(ep["ta"], np.int64),
                    rewards=np.asarray(ep["rewards"], np.float32))


def episode_returns(out_dir, split="train"):
    """Per-episode returns of all complete chunks of a split (episodes end where done is True)."""
    rets = []
    for f in chunk_files(os.path.join(out_dir, split)):
        d = np.load(f)
        rets += list(d["ep_returns"][d["done"]])
    return np.asarray(rets, np.float64)


def write_info(out_dir, **info):
    """info.json summarising everything on disk (all splits), written atomically."""
    rets = np.concatenate([episode_returns(out_dir, s) for s in ("train", "test")])
    info = dict(info)
    counts = {s: int(sum(len(np.load(f)["done"]) for f in chunk_files(os.path.join(out_dir, s)))) for s in ("train", "test")}
    info["num_transitions"], info["num_test_transitions"] = counts["train"], counts["test"]
    info["num_episodes"] = int(len(rets))
    info["ep_return_mean"] = float(rets.mean()) if len(rets) else float("nan")
    info["ep_return_std"] = float(rets.std()) if len(rets) else float("nan")
    with open(os.path.join(out_dir, "info.json.tmp"), "w") as f:
        json.dump(info, f, indent=2)
    os.replace(os.path.join(out_dir, "info.json.tmp"), os.path.join(out_dir, "info.json"))
    return info
