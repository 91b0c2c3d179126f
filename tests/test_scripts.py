"""scripts/ on real envs: pixel_change.py (a game whose camera follows the agent changes far more pixels per step) and
idm_check.py (a supervised inverse model of random play, measured against chance) and ssl_check.py (where the action
is readable in the continuous videos, and what stage 1 does), action_stats.py (how far from uniform a policy acts)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

from pixel_change import pixel_change


def test_camera_following_game_changes_more_pixels_than_a_fixed_view():
    fixed, following = pixel_change("bigfish", num_envs=2, steps=30), pixel_change("coinrun", num_envs=2, steps=30)
    assert 0.0 < fixed < 0.05 and following > 0.1


def _idm_check(**kw):
    from idm_check import Args, main

    return main(Args(**kw))


def test_idm_check_procgen_reports_a_held_out_curve_against_chance(tmp_path):
    out = tmp_path / "curve.json"
    res = _idm_check(env_id="coinrun", transitions=640, num_envs=8, updates=6, eval_every=3, batch_size=16, out=str(out))
    assert [c["update"] for c in res["curve"]] == [0, 3, 6]
    assert abs(res["chance"] - np.log(15)) < 0.15  # uniform-random play over 15 actions
    assert all(np.isfinite(c["loss"]) and 0.0 <= c["accuracy"] <= 1.0 for c in res["curve"])
    assert res["train_transitions"] + res["val_transitions"] > 500 and json.loads(out.read_text())["metric"] == "cross-entropy"


def test_idm_check_continuous_chance_is_the_variance_of_uniform_actions():
    res = _idm_check(env_id="reacher_easy", transitions=300, updates=2, eval_every=1, batch_size=16)
    assert res["metric"] == "MSE" and abs(res["chance"] - 1 / 3) < 0.15  # Var(U[-1, 1]) = 1/3
    assert [c["update"] for c in res["curve"]] == [0, 1, 2]


def test_idm_check_action_repeat_reaches_the_env():
    # DMControl episodes are 1 000 simulator steps: 250 agent steps at action repeat 4 (500 at the default 2), and the
    # pair that crosses an episode's end is dropped, so 260 random steps give one pair less with --action-repeat 4
    pairs = lambda res: res["train_transitions"] + res["val_transitions"]  # noqa: E731
    assert pairs(_idm_check(env_id="reacher_easy", transitions=260, updates=1, eval_every=1, batch_size=16, action_repeat=4)) == 259
    assert pairs(_idm_check(env_id="reacher_easy", transitions=260, updates=1, eval_every=1, batch_size=16)) == 260


def test_idm_check_unknown_env_is_one_line_error():
    with pytest.raises(SystemExit, match="error: unknown env id"):
        _idm_check(env_id="not-a-task", updates=1)


def test_idm_check_bad_checkpoint_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="error: --offline-checkpoint .* does not exist"):
        _idm_check(env_id="coinrun", updates=1, offline_checkpoint=str(tmp_path / "missing.pt"))
    bad = tmp_path / "other.pt"
    torch.save({"encoder": {"convnet.0.weight": torch.zeros(1)}, "idm": {}, "args": {}}, bad)  # a continuous one
    with pytest.raises(SystemExit, match="is not an offline.pt of bcvlr.py"):
        _idm_check(env_id="coinrun", updates=1, offline_checkpoint=str(bad))


def test_idm_check_loads_an_offline_checkpoint_of_the_cpu_scale(tmp_path):
    # an offline.pt of `--scale cpu`: pooled maps and f's standardisation buffers (feat_mean, feat_std)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bcvlr_continuous as cont

    a = cont.Args(**cont.CPU_SCALE)
    a.la_dim = a.vq_num_codebooks * a.vq_num_latents * a.vq_dim
    f, p = cont.Encoder(9, a.encoder_channels, a.feature_pool), cont.IDM(a, (a.encoder_channels, 16, 16))
    torch.save({"encoder": f.state_dict(), "idm": p.state_dict(), "args": vars(a)}, tmp_path / "offline.pt")
    res = _idm_check(env_id="reacher_easy", transitions=300, updates=1, eval_every=1, batch_size=16,
                     offline_checkpoint=str(tmp_path / "offline.pt"))
    assert res["metric"] == "MSE" and [c["update"] for c in res["curve"]] == [0, 1]


def test_idm_check_reference_cnn_trains_a_pixel_cnn_in_both_suites():
    for env_id, extra in (("coinrun", dict(transitions=320, num_envs=8)), ("reacher_easy", dict(transitions=200))):
        res = _idm_check(env_id=env_id, updates=4, eval_every=2, batch_size=16, reference_cnn=True, **extra)
        assert [c["update"] for c in res["curve"]] == [0, 2, 4]
        assert all(np.isfinite(c["loss"]) for c in res["curve"])
        assert res["curve"][-1]["train_loss"] > 0


def moving_square_videos(folder, pairs=800, seed=0):
    """Two-frame episodes of a 10x10 square at a random column that the 1-D action moves sideways by 8 a_t pixels; a_t is
    independent of the first frame, so the action can be read from the transition (o_t, o_{t+1}) and not from o_t."""
    rng = np.random.default_rng(seed)
    ta = rng.uniform(-1, 1, size=(2 * pairs, 1)).astype(np.float32)
    obs = rng.integers(0, 20, size=(2 * pairs, 9, 64, 64), dtype=np.uint8)
    for i, col in zip(range(0, 2 * pairs, 2), rng.uniform(12, 42, size=pairs)):
        for k, c in enumerate((col, col + 8 * ta[i, 0])):
            obs[i + k, :, 27:37, int(round(c)) : int(round(c)) + 10] = 255
    (folder / "train").mkdir(parents=True)
    np.savez(folder / "train" / "0.npz", obs=obs, ta=ta, done=np.arange(2 * pairs) % 2 == 1)


def test_ssl_check_reads_the_action_from_the_transition_and_reports_stage_one(tmp_path):
    from ssl_check import Args, main

    moving_square_videos(tmp_path / "squares")
    res = main(Args(video_dir=str(tmp_path / "squares"), env_id="squares", steps=(2,), ssl_batch_size=8, pairs=600,
                    encoder_channels=8, pixels=True, out=str(tmp_path / "ssl.json")))
    probes = {(p["step"], p["input"]): p for p in res["probes"]}
    assert probes[(0, "pixels(o_t+1)-pixels(o_t)")]["ratio"] < 0.5  # the transition shows the action
    assert probes[(0, "pixels(o_t)")]["ratio"] > 0.8  # o_t alone does not: a broken probe or split cannot pass both
    assert probes[(0, "f(o_t+1)-f(o_t)")]["ratio"] < probes[(0, "f(o_t)")]["ratio"]
    assert (2, "both f") in probes and [r["step"] for r in res["ssl"]] == [1, 2]
    assert all(np.isfinite(r["loss"]) and -1.0 <= r["sample_cosine"] <= 1.0 and r["logit_std"] >= 0 for r in res["ssl"])
    assert json.loads((tmp_path / "ssl.json").read_text())["ssl"][-1]["ln_k"] == pytest.approx(np.log(512))


def test_ssl_check_videos_without_actions_is_one_line_error(tmp_path):
    from ssl_check import Args, main

    (tmp_path / "v" / "train").mkdir(parents=True)
    np.savez(tmp_path / "v" / "train" / "0.npz", obs=np.zeros((40, 9, 64, 64), np.uint8))
    with pytest.raises(SystemExit, match="carry no true actions"):
        main(Args(video_dir=str(tmp_path / "v"), steps=()))
    with pytest.raises(SystemExit, match="error: video folder .* not found"):
        main(Args(video_dir=str(tmp_path / "missing"), steps=()))


def test_action_stats_tells_a_uniform_policy_from_a_decided_one(tmp_path, procgen_dir, procgen_data):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bcvlr
    from action_stats import Args, main

    a = bcvlr.Args(**bcvlr.CPU_SCALE)
    encoder = bcvlr.Encoder(a.encoder_channels, a.feature_pool)
    policy, decoder = bcvlr.LatentPolicy(encoder, a), bcvlr.make_decoder(a.la_dim)
    paths = []
    for name, bias in (("uniform", 0.0), ("always3", 20.0)):
        with torch.no_grad():
            decoder[-1].weight.zero_(), decoder[-1].bias.zero_()
            decoder[-1].bias[3] = bias  # logits do not depend on the frame: uniform, or action 3 with probability ~1
        paths.append(str(tmp_path / f"{name}.cleanrl_model"))
        torch.save({"policy": policy.state_dict(), "decoder": decoder.state_dict(), "args": vars(a)}, paths[-1])
    rows = main(Args(models=tuple(paths), video_dir=procgen_dir, frames=300, out=str(tmp_path / "s.json")))
    videos, uniform, always3 = rows
    share3 = float((procgen_data["ta"][:300] == 3).mean())
    assert abs(uniform["frame_entropy"] - np.log(15)) < 1e-4 and abs(uniform["marginal_entropy"] - np.log(15)) < 1e-4
    assert always3["frame_entropy"] < 1e-3 and always3["top"][0] == 3 and abs(always3["agreement"] - share3) < 1e-9
    assert 2.0 < videos["marginal_entropy"] <= np.log(15) + 1e-9  # random play: close to uniform
    assert json.loads((tmp_path / "s.json").read_text())[2]["variant"] == "bcvlr"
    with pytest.raises(SystemExit, match="error: no model file"):
        main(Args(models=(str(tmp_path / "missing.cleanrl_model"),), video_dir=procgen_dir, frames=50))


def test_idm_check_trains_on_expert_videos_in_both_suites(tmp_path, procgen_dir, procgen_data):
    res = _idm_check(env_id="bigfish", video_dir=procgen_dir, transitions=500, updates=2, eval_every=1, batch_size=16)
    assert res["train_transitions"] + res["val_transitions"] == 500  # the first 500 windows of the videos
    import bcvlr

    starts = bcvlr.window_starts(procgen_data["done"])[:500]
    acts = procgen_data["ta"][starts + 1]  # a_t of each window (o_{t-1}, o_t, o_{t+1}); the last 50 are held out
    most_frequent = np.bincount(acts[:450], minlength=15).argmax()
    assert res["majority_accuracy"] == pytest.approx(float((acts[450:] == most_frequent).mean()))
    assert [c["update"] for c in res["curve"]] == [0, 1, 2]
    moving_square_videos(tmp_path / "squares", pairs=100)
    res = _idm_check(env_id="reacher_easy", video_dir=str(tmp_path / "squares"), transitions=1000, updates=2,
                     eval_every=2, batch_size=16)
    assert res["train_transitions"] + res["val_transitions"] == 100 and res["majority_accuracy"] is None  # 1 pair per episode
    with pytest.raises(SystemExit, match="carry no true actions"):
        (tmp_path / "noacts" / "train").mkdir(parents=True)
        np.savez(tmp_path / "noacts" / "train" / "0.npz", obs=np.zeros((40, 9, 64, 64), np.uint8))
        _idm_check(env_id="reacher_easy", video_dir=str(tmp_path / "noacts"), updates=1)


def _save_model(path, args, policy, decoder):
    torch.save({"policy": policy.state_dict(), "decoder": decoder.state_dict(), "args": vars(args)}, path)


def test_evaluate_script_reproduces_the_learners_own_evaluation(tmp_path):
    """scripts/evaluate.py loads pi and d from a .cleanrl_model of either file and gets the returns that the learner's
    own evaluate gives with the same networks and env seed; bad files are one-line errors."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import bcvlr
    import bcvlr_continuous as cont
    from evaluate import Args, main

    torch.manual_seed(0)
    a = cont.Args(**cont.CPU_SCALE, env_id="walker_walk", seed=3, action_repeat=2, max_episode_steps=15)
    a.la_dim = a.vq_num_codebooks * a.vq_num_latents * a.vq_dim
    policy = cont.LatentPolicy(cont.Encoder(9, a.encoder_channels, a.feature_pool), a, a.encoder_channels * 16 * 16)
    decoder = cont.make_decoder(a.la_dim, 6)  # walker: 6 joints, a dense reward
    torch.nn.init.normal_(decoder[-1].weight, std=1.0)  # actions far from 0, so that returns depend on the weights
    _save_model(tmp_path / "c.cleanrl_model", a, policy, decoder)
    res = main(Args(model=str(tmp_path / "c.cleanrl_model"), episodes=3, out=str(tmp_path / "c.json")))
    with torch.no_grad():
        expected, _ = cont.evaluate(cont.make_env("walker_walk", 3, 2, 15), policy.eval(), decoder.eval(), "cpu", 3)
    assert res["returns"] == [round(float(r), 2) for r in expected] and res["eval_seed"] == 3 and res["success_rate"] is None
    decoder[-1].weight.data.neg_()  # other weights act otherwise: the returns above are those of the saved networks
    _save_model(tmp_path / "c2.cleanrl_model", a, policy, decoder)
    assert main(Args(model=str(tmp_path / "c2.cleanrl_model"), episodes=3))["returns"] != res["returns"]
    assert json.loads((tmp_path / "c.json").read_text())["episodes"] == 3

    b = bcvlr.Args(**bcvlr.CPU_SCALE, env_id="coinrun", seed=5)
    b.la_dim = b.vq_num_codebooks * b.vq_num_latents * b.vq_dim
    policy, decoder = bcvlr.LatentPolicy(bcvlr.Encoder(b.encoder_channels, b.feature_pool), b), bcvlr.make_decoder(b.la_dim)
    _save_model(tmp_path / "p.cleanrl_model", b, policy, decoder)
    res = main(Args(model=str(tmp_path / "p.cleanrl_model"), episodes=2))
    torch.manual_seed(5 + 1_000_003)
    with torch.no_grad():
        expected = bcvlr.evaluate(policy.eval(), decoder.eval(), "coinrun", 2, 5 + 1_000_003, "cpu")
    assert res["returns"] == [round(float(r), 2) for r in expected] and res["eval_seed"] == 5 + 1_000_003

    with pytest.raises(SystemExit, match="error: no model file at"):
        main(Args(model=str(tmp_path / "missing.cleanrl_model")))
    torch.save({"encoder": {}, "args": {}}, tmp_path / "offline.pt")
    with pytest.raises(SystemExit, match="is not a .cleanrl_model of bcvlr.py or bcvlr_continuous.py"):
        main(Args(model=str(tmp_path / "offline.pt")))


def test_idm_check_action_hold_keeps_the_random_action_for_k_steps():
    import bcvlr_continuous as cont
    from idm_check import Args, collect_continuous

    _, held = collect_continuous(cont, Args(env_id="reacher_easy", transitions=12, action_hold=4), np.random.default_rng(0))
    assert len(held) == 12 and all(np.array_equal(held[i], held[i - i % 4]) for i in range(12))
    assert not np.array_equal(held[3], held[4]) and not np.array_equal(held[7], held[8])
    _, fresh = collect_continuous(cont, Args(env_id="reacher_easy", transitions=12), np.random.default_rng(0))
    assert len({a.tobytes() for a in fresh}) == 12  # default: a new action every step
