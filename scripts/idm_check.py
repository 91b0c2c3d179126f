"""Can p learn to read the real action from frames at a given update budget? The best case of L_ft's action term.

Online, BCV-LR trains d(p(frames)) to predict the agent's own actions (the action term of L_ft). This script isolates
that term: it collects transitions of a uniform-random policy (true actions, no videos), trains a fresh decoder d on
top of the learner's own IDM p (fresh, or p and f from an `offline.pt`) with that loss alone, and reports the held-out
loss every few updates next to the loss of always predicting the training actions' marginal ("chance"). If the
held-out loss stays at chance for the number of fine-tuning updates a run gets (`--ft-updates` x iterations), no
amount of latent-action pre-training or cloning can make that run's decoded actions right.

    python scripts/idm_check.py --env-id coinrun --updates 400                  # Procgen: p and f from bcvlr.py
    python scripts/idm_check.py --env-id reacher_easy --updates 500 --batch-size 128
    python scripts/idm_check.py --env-id coinrun --offline-checkpoint runs/<run>/offline.pt   # start from a run's p, f
    python scripts/idm_check.py --env-id coinrun --video-dir expert_data/coinrun --transitions 10000 --updates 3000

With `--video-dir` it trains on the expert videos' windows and their true actions instead of random play: how well a
supervised p reads the demonstrator's actions at the budget, which bounds what stage 2's latent actions can carry
(Procgen also reports the held-out accuracy of always predicting the most frequent action).

The held-out transitions are the last `--val-fraction` of the collection in time, so they are not neighbours of
training frames. f is random unless `--offline-checkpoint` gives one (it is frozen either way, as online).
"""
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Args:
    env_id: str = "coinrun"
    """a Procgen game (bcvlr.py's networks, 15 discrete actions) or a DMControl/Metaworld task (bcvlr_continuous.py's)"""
    transitions: int = 8000
    """random-policy env steps to collect (Procgen: summed over --num-envs)"""
    num_envs: int = 32
    """Procgen: parallel envs"""
    updates: int = 400
    """gradient updates of d(p(.))"""
    batch_size: int = 64
    """transitions per update"""
    idm_lr: float = 3e-4
    """Adam learning rate of p (bcvlr.py --ft-idm-lr; 0 keeps p frozen, as in the no-finetune ablation)"""
    decoder_lr: float = 1e-3
    """Adam learning rate of d (with --reference-cnn: of the whole pixel CNN; there 1e-3 collapsed it to the mean action
    on cup_catch and cheetah_run, whose actions it reads at 1e-4: README "Where it fails", item 2)"""
    eval_every: int = 100
    """updates between held-out evaluations"""
    val_fraction: float = 0.1
    """share of the collected transitions (the last ones) held out"""
    encoder_channels: int = 8
    """channels of f (ignored with --offline-checkpoint)"""
    impala_scale: int = 1
    """width of p's IMPALA trunk (ignored with --offline-checkpoint)"""
    offline_checkpoint: Optional[str] = None
    """offline.pt of a bcvlr.py / bcvlr_continuous.py run: start from its f and p instead of fresh ones"""
    seed: int = 0
    """seed of the envs, the random policy and the initialisation"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    out: Optional[str] = None
    """also write the curve as JSON to this file"""
    video_dir: Optional[str] = None
    """train and hold out on these expert videos' windows and true actions (the first --transitions, in time order)
    instead of collecting random play: how well a supervised p can read the demonstrator's actions, the best case
    of the latent action model of stage 2 on the same data"""
    action_repeat: int = -1
    """DMControl/Metaworld: simulator steps per agent action in the random play (-1: bcvlr_continuous.py's default, 2 for
    DMControl and 1 for Metaworld); a larger repeat lets the action move the scene further between two frames"""
    action_hold: int = 1
    """DMControl/Metaworld: the random action is drawn anew every this many agent steps (1: every step). Metaworld's
    hand follows a mocap that integrates the actions, so a held action moves it further than a fresh one each step"""
    reference_cnn: bool = False
    """instead of the learner's f and p, a plain CNN on the raw pixels of (o_t, o_{t+1}) (4 convs, 3 of stride 2, 32
    channels, MLP 256): not BCV-LR, a reference for whether the frames carry the action at this budget"""


def collect_procgen(bcvlr, args, rng):
    """Windows (o_{t-1}, o_t, o_{t+1}) inside one episode with the random action a_t, in collection order."""
    envs = bcvlr.make_env(args.env_id, args.num_envs, args.seed)
    obs = envs.reset()["rgb"]
    prev, prev_valid, windows, actions = obs.copy(), np.zeros(args.num_envs, bool), [], []
    for _ in range(max(args.transitions // args.num_envs, 3)):
        action = rng.integers(bcvlr.NUM_ACTIONS, size=args.num_envs)
        nxt, _, done, _ = envs.step(action)
        nxt = nxt["rgb"]
        for i in np.flatnonzero(prev_valid & ~done):
            windows.append(np.stack([prev[i], obs[i], nxt[i]]))
            actions.append(action[i])
        prev, prev_valid, obs = obs, ~done, nxt
    envs.close()
    return np.stack(windows), np.array(actions)


def collect_continuous(cont, args, rng):
    """Pairs (o_t, o_{t+1}) of frame stacks inside one episode with the random action a_t, in collection order."""
    env = cont.make_env(args.env_id, args.seed, args.action_repeat)
    dim = env.action_space.shape[0]
    obs, _ = env.reset(seed=args.seed)
    pairs, actions = [], []
    for t in range(args.transitions):
        if t % max(1, args.action_hold) == 0:
            action = rng.uniform(-1, 1, dim).astype(np.float32)
        nxt, _, terminated, truncated, _ = env.step(action)
        if not (terminated or truncated):
            pairs.append(np.stack([obs, nxt]))
            actions.append(action)
            obs = nxt
        else:
            obs, _ = env.reset()
    env.close()
    return np.stack(pairs), np.stack(actions)


def video_windows_procgen(bcvlr, args):
    """The videos' windows (o_{t-1}, o_t, o_{t+1}) inside one episode, in time order, with a_t (at most --transitions)."""
    try:
        data = bcvlr.load_video_dataset(args.video_dir, env_id=args.env_id)
    except bcvlr.DataError as e:
        raise SystemExit(f"error: {e}")
    starts = bcvlr.window_starts(data["done"])[: args.transitions]
    return data["obs"][starts[:, None] + np.arange(3)], video_actions(data.get("ta"), starts + 1, args)


def video_pairs_continuous(cont, args):
    """The videos' pairs (o_t, o_{t+1}) inside one episode, in time order, with a_t (at most --transitions)."""
    try:
        videos = cont.load_videos(args.video_dir, args.env_id)
    except cont.DataError as e:
        raise SystemExit(f"error: {e}")
    starts = videos.valid[: args.transitions]
    return videos.obs[starts[:, None] + np.arange(2)], video_actions(videos.ta, starts, args)


def video_actions(ta, idx, args):
    if ta is None:
        raise SystemExit(f"error: the videos in {args.video_dir} carry no true actions (`ta`), which this check needs")
    return np.asarray(ta)[idx]


def reference_cnn(in_ch, out_dim):
    """[B, in_ch, 64, 64] -> [B, out_dim]: the plain pixel CNN of --reference-cnn."""
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(in_ch, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, out_dim))


def main(args):
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    import bcvlr

    discrete = args.env_id in bcvlr.PROCGEN_RETURNS
    if args.offline_checkpoint and not os.path.isfile(args.offline_checkpoint):
        raise SystemExit(f"error: --offline-checkpoint {args.offline_checkpoint} does not exist")
    ckpt = torch.load(args.offline_checkpoint, map_location="cpu", weights_only=False) if args.offline_checkpoint else None
    encoder_keys = "net." if discrete else "convnet."  # bcvlr.py's Procgen encoder vs the continuous DrQ encoder
    if ckpt is not None and not (isinstance(ckpt, dict) and all(k in ckpt for k in ("encoder", "idm", "args"))
                                 and all(k.startswith(encoder_keys) or k in ("feat_mean", "feat_std") for k in ckpt["encoder"])):
        raise SystemExit(f"error: {args.offline_checkpoint} is not an offline.pt of "
                         f"{'bcvlr.py' if discrete else 'bcvlr_continuous.py'} (the learner of {args.env_id})")
    if discrete:
        run_args = bcvlr.Args(encoder_channels=args.encoder_channels, impala_scale=args.impala_scale)
        if ckpt:
            run_args = bcvlr.Args(**{k: v for k, v in ckpt["args"].items() if k in bcvlr.Args.__dataclass_fields__})
        run_args.la_dim = run_args.vq_num_codebooks * run_args.vq_num_latents * run_args.vq_dim
        f, p, d = bcvlr.Encoder(run_args.encoder_channels, run_args.feature_pool), bcvlr.IDM(run_args), bcvlr.make_decoder(run_args.la_dim)
        if ckpt:
            f.load_state_dict(ckpt["encoder"])
            p.load_state_dict(ckpt["idm"])
        data, acts = video_windows_procgen(bcvlr, args) if args.video_dir else collect_procgen(bcvlr, args, rng)

        def predict(idx):  # window [B, 3, 64, 64, 3] uint8 -> logits [B, 15]
            window = bcvlr.normalize(torch.from_numpy(data[idx]).permute(0, 1, 4, 2, 3))
            return d(p.latent_action(bcvlr.encode_window(f, window)))

        loss_fn = lambda out, y: F.cross_entropy(out, torch.from_numpy(y))  # noqa: E731
    else:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import bcvlr_continuous as cont

        try:
            cont.check_env_id(args.env_id)
        except cont.DataError as e:
            raise SystemExit(f"error: {e} (or one of the 16 Procgen games)")
        run_args = cont.Args(encoder_channels=args.encoder_channels, impala_scale=args.impala_scale)
        if ckpt:
            run_args = cont.Args(**{k: v for k, v in ckpt["args"].items() if k in cont.Args.__dataclass_fields__})
        run_args.la_dim = run_args.vq_num_codebooks * run_args.vq_num_latents * run_args.vq_dim
        data, acts = video_pairs_continuous(cont, args) if args.video_dir else collect_continuous(cont, args, rng)
        f, size = cont.Encoder(9, run_args.encoder_channels, run_args.feature_pool), 32 // run_args.feature_pool
        p, d = cont.IDM(run_args, (run_args.encoder_channels, size, size)), cont.make_decoder(run_args.la_dim, acts.shape[1])
        if ckpt:
            f.load_state_dict(ckpt["encoder"])
            p.load_state_dict(ckpt["idm"])

        def predict(idx):  # window (o_t, o_{t+1}) [B, 2, 9, 64, 64] uint8 -> action [B, A]
            return d(p.latent_action(cont.encode_window(f, torch.from_numpy(data[idx]))))

        loss_fn = lambda out, y: F.mse_loss(out, torch.from_numpy(y))  # noqa: E731
    if args.reference_cnn:  # d(p(f(.))) -> d(pixels): d is the plain CNN (trained at --decoder-lr), f and p unused
        d = reference_cnn(6 if discrete else 18, bcvlr.NUM_ACTIONS if discrete else acts.shape[1])

        def predict(idx):  # Procgen: frames t, t+1 of the window; continuous: both 9-channel stacks
            x = torch.from_numpy(data[idx][:, 1:] if discrete else data[idx])
            x = x.permute(0, 1, 4, 2, 3) if discrete else x
            return d(x.flatten(1, 2).float() / 255.0 - 0.5)

    f.requires_grad_(False)
    p.requires_grad_(args.idm_lr > 0)  # a frozen p (no-finetune ablation) needs no backward pass of its own
    n_val = max(int(len(data) * args.val_fraction), 1)
    if len(data) - n_val < args.batch_size:
        raise SystemExit(f"error: only {len(data)} transitions collected; raise --transitions or lower --batch-size")
    train, val = np.arange(len(data) - n_val), np.arange(len(data) - n_val, len(data))
    if discrete:  # chance = cross-entropy of predicting the training actions' marginal distribution
        marginal = np.bincount(acts[train], minlength=bcvlr.NUM_ACTIONS) / len(train) + 1e-12
        chance = float(-np.log(marginal[acts[val]]).mean())
        majority = float((acts[val] == marginal.argmax()).mean())  # held-out accuracy of the most frequent action
    else:  # chance = MSE of predicting the training actions' mean
        chance = float(((acts[val] - acts[train].mean(0)) ** 2).mean())
        majority = None
    groups = [{"params": d.parameters(), "lr": args.decoder_lr}]
    if args.idm_lr > 0 and not args.reference_cnn:
        groups.append({"params": p.parameters(), "lr": args.idm_lr})
    optimizer = torch.optim.Adam(groups)
    name = "cross-entropy" if discrete else "MSE"
    source = f"video ({args.video_dir})" if args.video_dir else "random-policy"
    print(f"{args.env_id}: {len(train)} train / {n_val} held-out {source} transitions; chance held-out {name} "
          f"{chance:.4f}" + (f", most frequent action's accuracy {majority:.3f}" if majority is not None else ""))

    def evaluate():
        p.eval()
        with torch.no_grad():
            out = torch.cat([predict(b) for b in np.array_split(val, max(len(val) // 256, 1))])
        p.train(args.idm_lr > 0)  # VQ EMA updates as in fine-tuning; a frozen p stays in eval mode
        res = {"loss": loss_fn(out, acts[val]).item()}
        if discrete:
            res["accuracy"] = (out.argmax(-1).numpy() == acts[val]).mean().item()
        return res

    curve, start = [{"update": 0, **evaluate()}], time.time()
    for update in range(1, args.updates + 1):
        idx = rng.choice(train, size=args.batch_size)
        loss = loss_fn(predict(idx), acts[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if update % args.eval_every == 0 or update == args.updates:
            curve.append({"update": update, "train_loss": loss.item(), **evaluate()})
            acc = f", accuracy {curve[-1]['accuracy']:.3f}" if discrete else ""
            print(f"update {update}: train {name} {loss.item():.4f}, held-out {name} {curve[-1]['loss']:.4f} "
                  f"(chance {chance:.4f}){acc}; {time.time() - start:.0f} s", flush=True)
    result = {"env_id": args.env_id, "metric": name, "chance": chance, "majority_accuracy": majority, "train_transitions": len(train),
              "val_transitions": n_val, "curve": curve, "args": vars(args)}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args))
