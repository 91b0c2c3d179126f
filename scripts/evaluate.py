"""Evaluate a saved policy again, with as many episodes as you like: pi + d of a `runs/<run>/*.cleanrl_model`.

A run's final evaluation uses `--eval-episodes` episodes (5 at `--scale cpu` in the continuous file), which is noisy
where an episode either succeeds or not (reacher_easy) or varies a lot (finger_spin). This script loads the policy pi
and the action decoder d that the run saved, and runs the learner's own `evaluate` for --episodes episodes in a fresh
env, seeded as the run's evaluation env unless --seed says otherwise:

    python scripts/evaluate.py runs/<run>/bcvlr_continuous.cleanrl_model --episodes 20    # DMControl, Metaworld
    python scripts/evaluate.py runs/<run>/bcvlr.cleanrl_model --episodes 64 --out eval.json  # Procgen

Which learner wrote the file is read from the run's args inside it (the continuous file's have `action_repeat`).
Prints the mean and std over episodes (and the success rate for Metaworld); --out writes them with every episode's
return as JSON.
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experts")]  # the learners; experts/policy_expert.py's loader of bcvlr.py models


@dataclass
class Args:
    model: tyro.conf.Positional[str]
    """a `.cleanrl_model` file written by bcvlr.py or bcvlr_continuous.py (`--save-model`, on by default)"""
    episodes: int = 20
    """evaluation episodes"""
    seed: Optional[int] = None
    """seed of the evaluation env; default: the run's own (bcvlr.py: seed + 1000003; continuous: the run's seed, as
    its evaluation env, which the official code seeds like the training env)"""
    out: Optional[str] = None
    """write the result as JSON here"""
    num_threads: int = 1
    """torch threads"""


def load(path):
    """(learner module, the run's args, pi, d) from a .cleanrl_model; a one-line error for anything else."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: no model file at {path}")
    error = f"error: {path} is not a .cleanrl_model of bcvlr.py or bcvlr_continuous.py"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        run = argparse.Namespace(**ckpt["args"])
        policy_state, decoder_state = ckpt["policy"], ckpt["decoder"]
    except Exception as e:
        raise SystemExit(f"{error} ({type(e).__name__}: {e})")
    if not hasattr(run, "action_repeat"):  # bcvlr.py: the loader that experts/policy_expert.py records such models with
        from policy_expert import bcvlr, load_policy

        policy, decoder, run = load_policy(path)
        return bcvlr, run, policy, decoder
    import bcvlr_continuous as learner

    try:
        size = 32 // run.feature_pool
        policy = learner.LatentPolicy(learner.Encoder(9, run.encoder_channels, run.feature_pool), run,
                                      run.encoder_channels * size * size)
        act_dim = [w for w in decoder_state.values() if w.dim() == 2][-1].shape[0]  # d's last Linear
        decoder = learner.make_decoder(run.la_dim, act_dim)
        policy.load_state_dict(policy_state)
        decoder.load_state_dict(decoder_state)
    except Exception as e:  # a run with other shapes, or a file of another kind
        raise SystemExit(f"{error} ({type(e).__name__}: {e})")
    return learner, run, policy.eval(), decoder.eval()


def main(args):
    torch.set_num_threads(args.num_threads)
    if args.episodes < 1:
        raise SystemExit("error: --episodes must be at least 1")
    learner, run, policy, decoder = load(args.model)
    continuous = learner.__name__ == "bcvlr_continuous"
    seed = args.seed if args.seed is not None else (run.seed if continuous else run.seed + 1_000_003)
    success = None
    torch.manual_seed(seed)  # bcvlr.py samples its actions (as in training), the continuous file acts deterministically
    with torch.no_grad():
        if continuous:
            env = learner.make_env(run.env_id, seed, run.action_repeat, run.max_episode_steps)
            returns, successes = learner.evaluate(env, policy, decoder, "cpu", args.episodes)
            env.close()
            success = float(np.mean(successes)) if learner.is_metaworld(run.env_id) else None
        else:
            returns = learner.evaluate(policy, decoder, run.env_id, args.episodes, seed, "cpu")
    returns = np.asarray(returns, dtype=float)
    result = {"model": args.model, "env_id": run.env_id, "eval_seed": seed, "episodes": args.episodes,
              "return_mean": float(returns.mean()), "return_std": float(returns.std()), "success_rate": success,
              "returns": returns.round(2).tolist()}
    print(f"{run.env_id}: return {result['return_mean']:.1f} +- {result['return_std']:.1f} over {args.episodes} episodes "
          f"(eval seed {seed})" + (f", success {success:.2f}" if success is not None else ""))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
