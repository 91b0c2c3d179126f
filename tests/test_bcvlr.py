"""Tests of bcvlr.py: every network and loss, the video loaders on real small files, every bad-input case, tiny
end-to-end runs on real Procgen frames, and one learning test."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT, write_lapo_dataset

import bcvlr
from bcvlr import (IDM, Args, CURLHead, DataError, Encoder, LatentPolicy, ReconDecoder, VectorQuantizerEMA, WorldModel,
                   bc_loss, curl_loss, encode_window, finetune_loss, latent_dynamics_loss, load_video_dataset,
                   make_decoder, random_shift, recon_loss, window_starts)

torch.set_num_threads(2)
TINY = ("--impala-scale 1 --wm-scale 4 --encoder-channels 2 --ssl-steps 4 --ssl-batch-size 8 --lam-steps 6 "
        "--lam-batch-size 8 --bc-steps 6 --bc-batch-size 8 --probe-every 3 --probe-windows 64 --total-timesteps 512 "
        "--num-envs 4 --num-steps 32 --warmup-steps 16 --ft-updates 2 --ft-batch-size 16 --online-bc-updates 2 "
        "--eval-episodes 2 --no-cuda")


def args_of(**kw):
    a = Args(**kw)
    a.la_dim = a.vq_num_codebooks * a.vq_num_latents * a.vq_dim
    return a


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- networks at the paper's sizes (spec section 3.1)
def test_network_shapes_and_paper_sizes():
    a = args_of()
    enc = Encoder(16)
    x = torch.rand(2, 3, 64, 64) - 0.5
    feats = enc(x)
    assert feats.shape == (2, 16, 64, 64)
    assert n_params(enc) == 9728 and n_params(ReconDecoder(16)) == 771
    idm, wm, pi, dec = IDM(a), WorldModel(32, 16, 128, base=24), LatentPolicy(enc, a), make_decoder(128)
    assert abs(n_params(idm) - 3.7e6) < 0.05e6 and abs(n_params(wm) - 7.8e6) < 0.1e6
    assert abs(n_params(pi.trunk) - 3.7e6) < 0.05e6 and abs(n_params(dec) - 59e3) < 1e3
    window = torch.stack([feats, feats, feats], 1)  # [B, 3, C, H, W]
    la, la_q, commit, perp = idm(window)
    assert la.shape == la_q.shape == (2, 128) and commit.ndim == 0 and 1.0 <= perp.item() <= 2 * 64
    pred = wm(window[:, :2].flatten(1, 2), la_q)
    assert pred.shape == (2, 16, 64, 64) and pred.abs().max() <= 0.5
    assert pi(x).shape == (2, 128) and dec(la).shape == (2, 15)
    assert not any(p.requires_grad for p in pi.encoder.parameters())  # pi's copy of f is frozen
    head = CURLHead((16, 64, 64))
    assert head.projector(feats.flatten(1)).shape == (2, 256)


def test_variant_name_tells_every_control_apart():
    names = [bcvlr.variant_name(bcvlr.Args(**kw)) for kw in (dict(), dict(finetune_latent_actions=False), dict(true_action_bc=True),
             dict(labelled_video_transitions=10), dict(labelled_video_transitions=10, finetune_latent_actions=False))]
    assert names == ["bcvlr", "no_finetune", "true_action_bc", "labelled_video", "labelled_video_no_finetune"]


def test_random_shift_crop_variant_is_a_crop_of_the_padded_image():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    for _ in range(5):
        y = random_shift(x, pad=1, bilinear=False)
        assert y.shape == x.shape
        for b in range(2):
            assert any(torch.equal(y[b], padded[b, :, i : i + 5, j : j + 5]) for i in range(3) for j in range(3))
    assert torch.equal(random_shift(x, pad=0, bilinear=False), x)


def test_random_shift_official_bilinear_against_hand_computed_values():
    # pad 1 on a 4x4 image: the padded image has 6 columns; output column j with shift s samples padded column
    # u = (j + s) * 6/5 - 0.5 (align_corners=False), bilinearly, with zeros outside the padded image.
    ones = torch.ones(64, 1, 4, 4)
    half = torch.ones(4, 4)
    s0 = half.clone(); s0[0, :] *= 0.5; s0[:, 0] *= 0.5  # noqa: E702  shift 0: u = -0.5 at j = 0 -> half a zero pixel
    s2 = half.clone(); s2[-1, :] *= 0.5; s2[:, -1] *= 0.5  # noqa: E702  shift 2: u = 5.5 at j = 3
    rows = {0: s0[:, 1], 1: half[:, 1], 2: s2[:, 1]}  # per-axis factors of the constant image
    candidates = [rows[sy][:, None] * rows[sx][None, :] for sy in range(3) for sx in range(3)]
    torch.manual_seed(0)
    y = random_shift(ones, pad=1)
    seen = set()
    for b in range(64):
        match = [k for k, c in enumerate(candidates) if torch.allclose(y[b, 0], c, atol=1e-6)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 9  # every one of the 9 offsets occurs in 64 draws
    assert abs(y[:, 0, 0, 0].min().item() - 0.25) < 1e-6  # the corner of shift (0, 0): half x half
    # columns 0..3 of a horizontal ramp: shift 0 -> (0, 0, 0.9, 2.1); 1 -> (0, 0.9, 2.1, 3.0); 2 -> (0.9, 2.1, 3.0, 1.5)
    ramp = torch.arange(4.0).expand(256, 1, 4, 4).contiguous()
    expected = [torch.tensor(v) for v in ([0, 0, 0.9, 2.1], [0, 0.9, 2.1, 3.0], [0.9, 2.1, 3.0, 1.5])]
    out = random_shift(ramp, pad=1)[:, 0, 1:3]  # rows 1-2 are inside the image for every vertical shift
    for b in range(256):
        assert torch.allclose(out[b, 0], out[b, 1], atol=1e-5) and any(torch.allclose(out[b, 0], e, atol=1e-5) for e in expected)


def test_recon_decoder_has_the_official_init():
    # orthogonal weights with gain sqrt(2) and zero biases: what `--no-train-recon-decoder` keeps for the whole stage
    rec = ReconDecoder(16)
    for conv in [m for m in rec.modules() if isinstance(m, nn.Conv2d)]:
        w = conv.weight.flatten(1)  # [out, in * 3 * 3], out <= in * 9: orthonormal rows scaled by sqrt(2)
        assert torch.allclose(w @ w.T, 2 * torch.eye(len(w)), atol=1e-4)
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_curl_loss_identical_pairs_beat_shuffled_pairs():
    torch.manual_seed(0)
    head = CURLHead((4, 8, 8))
    head.predictor = nn.Identity()
    nn.init.eye_(head.W.weight)
    head.W.weight.data *= 10
    feats = torch.randn(32, 4, 8, 8)
    same = curl_loss(head, head.projector, feats, feats)
    shuffled = curl_loss(head, head.projector, feats, feats[torch.randperm(32)])
    assert same.item() < 0.1 < 1.0 < shuffled.item()
    # the same value written out: -mean_i log softmax_j(q_i . W k_j)[i]
    q = head.projector(feats.flatten(1))
    logits = q @ head.W(q).T
    assert torch.allclose(same, -torch.log_softmax(logits, 1).diag().mean(), atol=1e-5)


def test_recon_loss_trains_encoder_and_decoder():
    enc, rec = Encoder(4), ReconDecoder(4)
    img = torch.rand(3, 3, 64, 64) - 0.5
    loss = recon_loss(rec, enc(img), img)
    loss.backward()
    assert loss.item() > 0 and enc.net[0].weight.grad.abs().sum() > 0 and rec.net[0].weight.grad.abs().sum() > 0


def test_vq_straight_through_and_nearest_code():
    vq = VectorQuantizerEMA().eval()
    la = torch.randn(5, 128, requires_grad=True)
    la_q, commit, _ = vq(la)
    codes = la_q.view(5, 2, 16, 4)  # the official layout: codebooks x dims x latents
    for b in range(5):
        for n in range(2):
            for h in range(4):
                dists = ((vq.codebook[n] - la.view(5, 2, 16, 4)[b, n, :, h]) ** 2).sum(-1)
                assert torch.allclose(codes[b, n, :, h], vq.codebook[n, dists.argmin()], atol=1e-6)
    g = torch.randn(5, 128)
    (la_q * g).sum().backward()
    assert torch.allclose(la.grad, g)  # straight-through: d la_q / d la = identity
    la.grad = None
    commit.backward()
    assert torch.allclose(la.grad, 0.05 * 2 * (la - la_q).detach() / la.numel(), atol=1e-7)


def test_vq_ema_update_only_in_train_mode():
    vq = VectorQuantizerEMA(decay=0.0)
    la = torch.zeros(64, 128) + 0.3
    before = vq.codebook.clone()
    vq.eval()(la)
    assert torch.equal(vq.codebook, before)
    la_q, _, perp = vq.train()(la)
    nearest = ((before[0] - 0.3) ** 2).sum(-1).argmin()  # the code every input picked
    assert torch.allclose(la_q[0].view(2, 16, 4)[0, :, 0], before[0, nearest])  # la_q = the code before the update
    assert torch.allclose(vq.codebook[0, nearest], torch.full((16,), 0.3), atol=1e-3)  # code moved onto its inputs
    assert abs(perp.item() - 2.0) < 1e-4  # one code per codebook in use: perplexity 1 + 1


def test_losses_route_gradients_to_the_right_modules():
    torch.manual_seed(0)
    a = args_of(encoder_channels=2, impala_scale=1, wm_scale=4)
    enc = Encoder(2).requires_grad_(False)
    idm, wm, dec, pi = IDM(a), WorldModel(4, 2, 128, base=4), make_decoder(128), LatentPolicy(enc, a)
    window = torch.rand(4, 3, 3, 64, 64) - 0.5
    feats = encode_window(enc, window)
    loss, la, _ = latent_dynamics_loss(idm, wm, feats)
    loss.backward()
    assert torch.isfinite(loss) and idm.trunk.head[-1].weight.grad is not None and wm.head[-1].weight.grad is not None
    assert all(p.grad is None for p in enc.parameters())
    idm.zero_grad()
    bc = bc_loss(pi, idm, feats)
    bc.backward()
    assert pi.trunk.head[-1].weight.grad is not None and idm.trunk.head[-1].weight.grad is None  # target is sg(la)
    actions = torch.randint(15, (4,))
    total, ce, dyn = finetune_loss(idm, wm, dec, feats, actions, wm_coef=15.0)
    assert torch.allclose(total, ce + 15.0 * dyn)
    total0, ce0, _ = finetune_loss(idm.eval(), wm.eval(), dec, feats, actions, wm_coef=0.0)
    assert torch.allclose(total0, ce0)
    idm.zero_grad(), wm.zero_grad(), dec.zero_grad()  # the ablation: p fixed, no dynamics term, only d gets gradients
    total1, ce1, dyn1 = finetune_loss(idm, wm, dec, feats, actions, wm_coef=15.0, finetune_idm=False)
    total1.backward()
    assert torch.allclose(total1, ce) and dyn1.item() == 0.0 and dec[0].weight.grad is not None
    assert all(p.grad is None for p in list(idm.parameters()) + list(wm.parameters()))


def test_cached_features_equal_uncached(procgen_data):
    # f is frozen after stage 1: the cached features of the video frames must give the same numbers as encoding batches
    torch.manual_seed(0)
    obs = torch.from_numpy(procgen_data["obs"][:60])
    starts = torch.from_numpy(bcvlr.window_starts(np.arange(60) % 20 == 19))
    a = args_of(encoder_channels=2, impala_scale=1, feature_pool=4)
    enc = Encoder(2, pool=4).requires_grad_(False)
    enc.feat_mean.uniform_(), enc.feat_std.uniform_(0.5, 2)  # --feature-norm on
    assert enc.maps(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)  # stage 1 trains on the full maps
    idm, wm, pi = IDM(a).eval(), WorldModel(4, 2, 128, size=16, base=4).eval(), LatentPolicy(enc, a)
    idx = bcvlr.sample_starts(starts, 8)
    uncached = bcvlr.window_features(enc, obs, idx, "cpu")
    cache = bcvlr.cache_features(enc, obs, "cpu", max_gb=1.0)
    cached = bcvlr.window_features(enc, obs, idx, "cpu", cache)
    assert cache.shape == (60, 2, 16, 16) and cached.shape == (8, 3, 2, 16, 16) and torch.allclose(cached, uncached, atol=1e-6)
    for loss in (lambda f: latent_dynamics_loss(idm, wm, f)[0], lambda f: bc_loss(pi, idm, f)):
        assert torch.allclose(loss(cached), loss(uncached), rtol=1e-5, atol=1e-7)
    o_t = bcvlr.normalize(obs[idx + 1].permute(0, 3, 1, 2))
    assert torch.allclose(pi(o_t), pi.from_features(cached[:, 1]), atol=1e-5)  # = pi(o_t)
    assert bcvlr.cache_features(enc, obs, "cpu", max_gb=1e-6) is None  # over the limit: batches are encoded as drawn


def test_stored_labels_give_the_same_bc_loss_as_labels_per_batch(procgen_data):
    # while p is fixed, z = p(window) of every video window is computed once (label_windows): same BC batches, same loss
    torch.manual_seed(0)
    obs = torch.from_numpy(procgen_data["obs"][:60])
    starts = torch.from_numpy(bcvlr.window_starts(np.arange(60) % 20 == 19))
    a = args_of(encoder_channels=2, impala_scale=1, feature_pool=4)
    enc = Encoder(2, pool=4).requires_grad_(False)
    idm, pi = IDM(a).eval(), LatentPolicy(enc, a)
    assert bcvlr.label_windows(idm, enc, obs, starts, "cpu", None, num_samples=2 * len(starts) - 1) is None  # per batch
    for cache in (None, bcvlr.cache_features(enc, obs, "cpu", max_gb=1.0)):
        labels = bcvlr.label_windows(idm, enc, obs, starts, "cpu", cache, num_samples=2 * len(starts))
        losses = []
        for lab in (None, labels):
            torch.manual_seed(1)  # the same windows drawn
            feats, target = bcvlr.bc_batch(enc, obs, starts, 16, "cpu", cache, lab)
            assert (target is None) == (lab is None) and feats.ndim == (5 if lab is None else 4)
            losses.append(bc_loss(pi, idm, feats, target))
        assert losses[0].item() > 0 and torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # a p that moved: the stored labels are stale, the loss differs (so the test can fail)
        idm.trunk.head[-1].bias.add_(1.0)
    torch.manual_seed(1)
    assert not torch.allclose(bc_loss(pi, idm, *bcvlr.bc_batch(enc, obs, starts, 16, "cpu", cache, None)), losses[1])


def test_window_masking_at_episode_ends():
    done = np.array([0, 0, 0, 1, 0, 0, 1, 0, 0, 0], dtype=bool)  # episodes: frames 0-3, 4-6, 7-9
    starts = window_starts(done)
    assert starts.tolist() == [0, 1, 4, 7]
    for s in starts:  # no window contains an episode end before its last frame
        assert not done[s : s + 2].any()


# ---------------------------------------------------------------- loaders on real small files
def test_load_lapo_npz_chunks(procgen_dir, procgen_data):
    d = load_video_dataset(procgen_dir)
    n = len(procgen_data["obs"])
    assert d["obs"].shape == (n, 64, 64, 3) and d["obs"].dtype == np.uint8
    assert np.array_equal(d["obs"], procgen_data["obs"]) and np.array_equal(d["ta"], procgen_data["ta"])
    assert d["done"].sum() >= procgen_data["done"].sum() and d["done"][-1]
    ends = np.flatnonzero(procgen_data["done"])
    returns = [procgen_data["rewards"][s : e + 1].sum() for s, e in zip(np.r_[0, ends[:-1] + 1], ends)]
    assert d["video_return"] == pytest.approx(np.mean(returns))
    small = load_video_dataset(procgen_dir, max_frames=700)
    assert len(small["obs"]) == 700 and small["done"][-1]


def test_load_video_files(tmp_path, procgen_data):
    import imageio.v3 as iio
    import imageio_ffmpeg

    frames = procgen_data["obs"][:40]
    w = imageio_ffmpeg.write_frames(str(tmp_path / "ep0.mp4"), (64, 64), fps=15, macro_block_size=16,
                                    pix_fmt_out="yuv444p", output_params=["-crf", "0"])
    w.send(None)
    for f in frames:
        w.send(np.ascontiguousarray(f))
    w.close()
    big = frames.repeat(2, axis=1).repeat(2, axis=2)  # a 128 x 128 episode, resized to 64 x 64 by the loader
    iio.imwrite(tmp_path / "ep1.gif", list(big[:30] + np.arange(30, dtype=np.uint8)[:, None, None, None]), loop=0)
    d = load_video_dataset(str(tmp_path))
    assert d["obs"].shape[1:] == (64, 64, 3) and d["obs"].dtype == np.uint8
    assert len(d["obs"]) == 70 and d["done"].sum() == 2 and d["done"][39] and d["done"][-1]
    assert np.abs(d["obs"][:40].astype(int) - frames.astype(int)).mean() < 3  # near-lossless mp4 round trip
    assert "ta" not in d and d["video_return"] is None


# ---------------------------------------------------------------- bad input: one line, exit 1, no traceback
def run_bcvlr(cmd, cwd, timeout=600):
    return subprocess.run(f"{sys.executable} {os.path.join(ROOT, 'bcvlr.py')} {cmd}", shell=True, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _bad_inputs(tmp_path, procgen_data):
    good = {k: v[:200] for k, v in procgen_data.items()}
    cases = {}
    cases["missing"] = (f"--env-id bigfish --video-dir {tmp_path}/nothing", "experts/procgen_expert.py --env-id bigfish")
    os.makedirs(tmp_path / "empty")
    cases["empty"] = (f"--video-dir {tmp_path}/empty", "holds no expert videos")
    os.makedirs(tmp_path / "corrupt/train")
    (tmp_path / "corrupt/train/0.npz").write_bytes(os.urandom(2000))
    cases["corrupted npz"] = (f"--video-dir {tmp_path}/corrupt", "corrupted")
    os.makedirs(tmp_path / "badmp4")
    (tmp_path / "badmp4/ep0.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    cases["corrupted mp4"] = (f"--video-dir {tmp_path}/badmp4", "corrupted")
    write_lapo_dataset(str(tmp_path / "shape"), {**good, "obs": np.zeros((200, 84, 84, 3), np.uint8)})
    cases["wrong shape"] = (f"--video-dir {tmp_path}/shape", "expected (N, 64, 64, 3) uint8")
    write_lapo_dataset(str(tmp_path / "dtype"), {**good, "obs": good["obs"].astype(np.float32)})
    cases["wrong dtype"] = (f"--video-dir {tmp_path}/dtype", "expected (N, 64, 64, 3) uint8")
    write_lapo_dataset(str(tmp_path / "few"), {k: v[:100] for k, v in good.items()})
    cases["too few frames"] = (f"--video-dir {tmp_path}/few", "usable 3-frame windows")
    cases["unknown env"] = ("--env-id notagame", "unknown env id 'notagame'")
    write_lapo_dataset(str(tmp_path / "nota"), {k: v for k, v in good.items() if k != "ta"})
    small = "--ssl-batch-size 8 --lam-batch-size 8 --bc-batch-size 8"
    cases["ceiling without ta"] = (f"--video-dir {tmp_path}/nota {small} --true-action-bc", "carry none")
    cases["labelled without ta"] = (f"--video-dir {tmp_path}/nota {small} --labelled-video-transitions 50", "carry none")
    cases["missing checkpoint"] = (f"--video-dir {tmp_path}/shape --offline-checkpoint {tmp_path}/none.pt", "expected")
    write_lapo_dataset(str(tmp_path / "good"), good)
    cases["epsilon"] = (f"--video-dir {tmp_path}/good {small} --expl-epsilon 1.5", "--expl-epsilon is a probability")
    return cases


def test_bad_inputs_fail_with_one_clear_line(tmp_path, procgen_data):
    for name, (cmd, expected) in _bad_inputs(tmp_path, procgen_data).items():
        r = run_bcvlr(cmd, cwd=tmp_path)
        assert r.returncode == 1, (name, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and expected in last, (name, last)


# ---------------------------------------------------------------- tiny end-to-end runs on real Procgen
def _results(cwd):
    runs = sorted(os.listdir(os.path.join(cwd, "runs")))
    return [os.path.join(cwd, "runs", r) for r in runs]


def test_end_to_end_determinism_checkpoint_and_video(tmp_path, procgen_dir):
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        r = run_bcvlr(f"--env-id bigfish --video-dir {procgen_dir} {TINY} --capture-video --seed 3", cwd=tmp_path / name)
        assert r.returncode == 0, r.stderr[-3000:]
    (run_a,), (run_b,) = _results(tmp_path / "a"), _results(tmp_path / "b")
    res_a, res_b = (json.load(open(os.path.join(r, "results.json"))) for r in (run_a, run_b))
    for key in ("episodic_return_mean", "eval_episodes", "video_return", "env_steps", "wall_clock_s"):
        assert key in res_a
    assert res_a["env_steps"] == 512 and res_a["eval_episodes"] == 2 and not res_a["interrupted"]
    assert res_a["video_return"] is not None and res_a["video_normalized_score"] is not None
    # same seed on CPU -> the same run
    assert res_a["episodic_return_mean"] == res_b["episodic_return_mean"]
    ckpt_a, ckpt_b = (torch.load(os.path.join(r, "bcvlr.cleanrl_model")) for r in (run_a, run_b))
    for k, v in ckpt_a["decoder"].items():
        assert torch.equal(v, ckpt_b["decoder"][k])
    assert os.path.getsize(os.path.join(tmp_path, "a", "videos", os.path.basename(run_a) + "-eval", "episode0.mp4")) > 0
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_a))
    # the online stage alone from the offline checkpoint, with another seed
    os.makedirs(tmp_path / "c")
    r = run_bcvlr(f"--env-id bigfish --video-dir {procgen_dir} {TINY} --seed 4 "
                  f"--offline-checkpoint {os.path.join(run_a, 'offline.pt')}", cwd=tmp_path / "c")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "offline stages 1-3 done" in r.stdout and "stage 1:" not in r.stderr
    assert json.load(open(os.path.join(_results(tmp_path / "c")[0], "results.json")))["env_steps"] == 512


def test_bf16_runs_end_to_end_with_stored_labels(tmp_path, procgen_dir):
    # --bf16 autocasts every update's forward pass (on CPU too, emulated): p's labels are bf16 there and must be stored
    # in the fp32 label table (the first GPU run crashed there: "Index put requires the source and destination dtypes
    # match"); 100 windows x 2 <= 25 x 8 samples, so stage 3 takes the stored-label path
    r = run_bcvlr(f"--env-id bigfish --video-dir {procgen_dir} {TINY} --bf16 --num-video-transitions 100 --bc-steps 25",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stage 3: p labelled the" in r.stdout
    res = json.load(open(os.path.join(_results(tmp_path)[0], "results.json")))
    assert res["args"]["bf16"] is True and np.isfinite(res["episodic_return_mean"]) and res["env_steps"] == 512


def test_sigterm_saves_the_model_and_results(tmp_path, procgen_dir):
    # `kill` / SLURM's preemption (SIGTERM) take Ctrl-C's path: model saved, final evaluation, results.json "interrupted"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = f"{sys.executable} {os.path.join(ROOT, 'bcvlr.py')} --env-id bigfish --video-dir {procgen_dir} {TINY} --total-timesteps 1000000"
    proc = subprocess.Popen(cmd.split(), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # the online stage has begun: the first training episode ended
        if line.startswith("global_step="):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "interrupted: saving" in rest
    (run,) = _results(tmp_path)
    res = json.load(open(os.path.join(run, "results.json")))
    assert res["interrupted"] is True and 0 < res["env_steps"] < 1000000 and res["eval_episodes"] == 2
    assert os.path.exists(os.path.join(run, "bcvlr.cleanrl_model"))


def test_world_model_tile_conv_equals_the_conv_of_the_built_tile():
    # w's first conv reads cat(ctx, la_q tiled over the image); conv3x3_with_tile never builds the tile: same output
    # and same gradients (to float rounding) as F.conv2d on the explicit concatenation, at odd sizes and edges too
    torch.manual_seed(0)
    conv = nn.Conv2d(5 + 7, 6, 3, padding=1)
    for h, w in [(1, 1), (2, 5), (9, 9)]:
        ctx, v = torch.randn(3, 5, h, w, requires_grad=True), torch.randn(3, 7, requires_grad=True)
        ref = F.conv2d(torch.cat([ctx, v[:, :, None, None].expand(-1, -1, h, w)], 1), conv.weight, conv.bias, padding=1)
        out = bcvlr.conv3x3_with_tile(conv, ctx, v)
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
        g = torch.randn_like(ref)
        grads_ref = torch.autograd.grad(ref, (ctx, v, conv.weight, conv.bias), g)
        grads = torch.autograd.grad(out, (ctx, v, conv.weight, conv.bias), g)
        for a, b in zip(grads, grads_ref):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    wrong = bcvlr.conv3x3_with_tile(conv, ctx, v.flip(0))  # the tile is per sample: another sample's la_q changes the output
    assert not torch.allclose(wrong, out, atol=1e-3)


def test_world_model_output_bound_is_a_switch():
    # official: tanh/2 in [-0.5, 0.5]; `--no-wm-tanh`: linear, so w can fit f-features outside that range
    torch.manual_seed(0)
    ctx, la_q = torch.randn(8, 4, 64, 64), torch.randn(8, 128)
    target = 2.0 * torch.ones(8, 2, 64, 64)  # feature values beyond the official bound
    losses = {}
    for tanh in (True, False):
        torch.manual_seed(0)
        wm = WorldModel(4, 2, 128, base=4, tanh=tanh)
        assert (wm(ctx, la_q).abs() <= 0.5).all() == tanh
        opt = torch.optim.Adam(wm.parameters(), lr=1e-2)
        for _ in range(30):
            loss = F.mse_loss(wm(ctx, la_q), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[tanh] = loss.item()
    assert losses[True] > (2.0 - 0.5) ** 2 - 1e-3  # cannot get closer than the bound
    assert losses[False] < 0.5 * losses[True]


def test_end_to_end_multitask_and_ablations(tmp_path, procgen_data):
    # two games' videos (real frames) for pre-training, online on a third game; all ablation switches on
    write_lapo_dataset(str(tmp_path / "data" / "bigfish"), procgen_data)
    write_lapo_dataset(str(tmp_path / "data" / "maze"), {k: v[:600] for k, v in procgen_data.items()})
    r = run_bcvlr(f"--env-id starpilot --video-env-ids bigfish maze --video-dir {tmp_path}/data/{{env_id}} {TINY} "
                  "--no-ssl-encoder --no-finetune-latent-actions --ft-wm-coef 0 --num-video-transitions 500 --no-wm-tanh "
                  "--no-train-recon-decoder --no-bilinear-shift --scale cpu --num-threads 1 --expl-epsilon 0.5",
                  cwd=tmp_path)  # the cpu scale, with TINY's explicit sizes winning over it
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch threads: 1; scale: cpu" in r.stdout  # --num-threads reaches torch
    assert "1000 frames" in r.stdout and "from bigfish, maze" in r.stdout
    res = json.load(open(os.path.join(_results(tmp_path)[0], "results.json")))
    assert res["env_id"] == "starpilot" and res["video_return"] is None and res["args"]["ssl_encoder"] is False
    assert res["args"]["wm_tanh"] is False and res["args"]["feature_pool"] == 4 and res["args"]["encoder_channels"] == 2
    assert res["args"]["expl_epsilon"] == 0.5


def _square_frames(n, seed):
    """Synthetic frames whose action is visible: a bright 12x12 square at column 12 a (a in 0..4) on dim noise."""
    rng = np.random.default_rng(seed)
    ta = rng.integers(5, size=n)
    obs = rng.integers(0, 40, size=(n, 64, 64, 3), dtype=np.uint8)
    for i, a in enumerate(ta):
        obs[i, 26:38, 12 * a : 12 * a + 12] = 255
    return obs, ta


def test_end_to_end_controls_and_the_ceiling_learns(tmp_path, procgen_dir):
    # the ceiling (--true-action-bc) on frames that show their action must learn it: a broken ceiling cannot pass
    obs, ta = _square_frames(600, seed=0)
    done = np.zeros(600, bool)
    done[199::200] = True
    write_lapo_dataset(str(tmp_path / "squares"), {"obs": obs, "ta": ta, "done": done})
    r = run_bcvlr(f"--env-id bigfish --video-dir {tmp_path}/squares {TINY} --no-ssl-encoder --true-action-bc "
                  "--bc-steps 150 --bc-batch-size 32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stage 2" not in r.stderr and "stage 3" not in r.stderr and "control: true-action BC" in r.stderr
    (run,) = _results(tmp_path)
    res = json.load(open(os.path.join(run, "results.json")))
    assert res["variant"] == "true_action_bc" and res["env_steps"] == 0 and res["eval_episodes"] == 2
    model = torch.load(os.path.join(run, "bcvlr.cleanrl_model"))
    a = args_of(encoder_channels=2, impala_scale=1)
    policy, decoder = LatentPolicy(Encoder(2), a), make_decoder(a.la_dim)
    policy.load_state_dict(model["policy"])
    decoder.load_state_dict(model["decoder"])
    test_obs, test_ta = _square_frames(500, seed=1)  # fresh frames
    with torch.no_grad():
        pred = decoder(policy(bcvlr.normalize(torch.from_numpy(test_obs).permute(0, 3, 1, 2)))).argmax(-1).numpy()
    assert (pred == test_ta).mean() > 0.8  # chance: 0.2
    # experts/policy_expert.py records this policy as a demonstrator: every recorded action is the one pi + d
    # choose (greedy) on the frame recorded with it, so frames and actions are aligned (issue 11)
    out = tmp_path / "policy_videos"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experts", "policy_expert.py"), "--model",
                        os.path.join(run, "bcvlr.cleanrl_model"), "--num-transitions", "150", "--num-envs", "2", "--greedy",
                        "--random-episodes", "0", "--num-previews", "0", "--out-dir", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    data = bcvlr.load_video_dataset(str(out))
    assert len(data["obs"]) >= 150 and json.load(open(out / "info.json"))["env_id"] == "bigfish"
    with torch.no_grad():
        chosen = decoder(policy(bcvlr.normalize(torch.from_numpy(data["obs"]).permute(0, 3, 1, 2)))).argmax(-1).numpy()
    assert (chosen == data["ta"]).all()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experts", "policy_expert.py"), "--model", str(out / "info.json")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in r.stderr
    # the rebuttal's offline variant: L_ft on labelled video windows, re-cloning, no env interaction
    os.makedirs(tmp_path / "labelled")
    r = run_bcvlr(f"--env-id bigfish --video-dir {procgen_dir} {TINY} --labelled-video-transitions 100",
                  cwd=tmp_path / "labelled")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(os.path.join(_results(tmp_path / "labelled")[0], "results.json")))
    assert res["variant"] == "labelled_video" and res["env_steps"] == 0 and np.isfinite(res["episodic_return_mean"])


# ---------------------------------------------------------------- learning: latent actions carry the true actions
def _panned_windows(frames, n, seed, shift=6):
    """3-frame windows cut from real Procgen frames (upscaled x2) by a camera that pans with a known action:
    0 = stay, 1 = right, 2 = left, 3 = down, 4 = up. Returns uint8 windows [n, 3, 64, 64, 3] and the actions [n]."""
    big = torch.from_numpy(frames).repeat_interleave(2, 1).repeat_interleave(2, 2)  # [N, 128, 128, 3]
    moves = torch.tensor([[0, 0], [0, shift], [0, -shift], [shift, 0], [-shift, 0]])
    g = torch.Generator().manual_seed(seed)
    idx, act = torch.randint(len(big), (n,), generator=g), torch.randint(5, (n,), generator=g)
    y0, x0 = torch.randint(16, 48, (2, n), generator=g)
    win = [torch.stack([big[i, y + s * dy : y + s * dy + 64, x + s * dx : x + s * dx + 64] for s in range(3)])
           for i, a, y, x in zip(idx, act, y0, x0) for dy, dx in [moves[a].tolist()]]
    return torch.stack(win), act


def test_latent_action_model_discovers_actions_without_labels(procgen_data):
    """Stage 2 alone (L_la, no action labels) on 1000 windows of real Procgen frames whose motion is set by a known
    action: afterwards p's latent actions predict that action (probe on held-out windows) far above chance and
    clearly better than the same probe on the untrained model."""
    torch.manual_seed(0)
    windows, act = _panned_windows(procgen_data["obs"][:300], 1000, seed=0)
    obs = windows.reshape(-1, 64, 64, 3)  # one 3-frame "episode" per window
    starts = torch.arange(0, len(obs), 3)
    ta = torch.zeros(len(obs), dtype=torch.long)
    ta[starts + 1] = act  # the action of window i is the one taken at its middle frame
    a = args_of(encoder_channels=2, impala_scale=1, wm_scale=4, vq_decay=0.95)
    enc = Encoder(2).requires_grad_(False)
    idm, wm = IDM(a), WorldModel(4, 2, 128, base=4)
    before, _ = bcvlr.probe_latent_actions(idm, enc, obs, starts, ta, "cpu", n=1000)
    opt = torch.optim.AdamW(list(idm.parameters()) + list(wm.parameters()), lr=1e-3)
    for _ in range(500):
        idx = starts[torch.randint(len(starts), (16,))]
        loss, _, _ = latent_dynamics_loss(idm, wm, encode_window(enc, bcvlr.windows_at(obs, idx, "cpu")))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, _ = bcvlr.probe_latent_actions(idm, enc, obs, starts, ta, "cpu", n=1000)
    chance = np.bincount(act.numpy(), minlength=5).max() / len(act)
    print(f"probe accuracy: untrained {before:.3f}, trained {after:.3f}, chance {chance:.3f}")
    assert after > 2.5 * chance and after > before + 0.08, (before, after, chance)


def test_probe_reads_actions_that_are_there():
    """The diagnostic probe itself: an IDM whose latent action is the one-hot true action scores ~100%."""
    class OneHotIDM(nn.Module):
        def latent_action(self, window_feats):  # [B, 3, 1, 64, 64]: frame 0's first pixel is the stored action
            return nn.functional.one_hot(window_feats[:, 0, 0, 0, 0].long(), 128).float()

    obs = torch.zeros(600, 64, 64, 3, dtype=torch.uint8)
    ta = torch.randint(15, (600,))
    obs[:, 0, 0, 0] = torch.roll(ta, -1).byte() + 128  # frame i carries the action of frame i + 1
    starts = torch.arange(0, 598)
    enc = lambda x: ((x[:, :1] + 0.5) * 255 - 128).round()  # recovers the stored byte
    acc, majority = bcvlr.probe_latent_actions(OneHotIDM(), enc, obs, starts, ta, "cpu", n=512)
    assert acc > 0.95 and majority < 0.2, (acc, majority)


def test_data_error_is_raised_not_exited(tmp_path):
    with pytest.raises(DataError):
        load_video_dataset(str(tmp_path / "missing"))
    with pytest.raises(DataError):
        bcvlr.check_env_id("pong")


@pytest.mark.parametrize("module", ["bcvlr", "bcvlr_continuous"])
def test_claim_run_dir_gives_runs_started_together_their_own_folders(tmp_path, monkeypatch, module):
    """BCV-LR and its ablation launched in the same second with the same seed once wrote into one folder."""
    mod = __import__(module)
    monkeypatch.chdir(tmp_path)
    names = [mod.claim_run_dir("fruitbot__bcvlr__1__1700000000") for _ in range(3)]
    assert names == ["fruitbot__bcvlr__1__1700000000", "fruitbot__bcvlr__1__1700000000_2", "fruitbot__bcvlr__1__1700000000_3"]
    assert all((tmp_path / "runs" / n).is_dir() for n in names)
