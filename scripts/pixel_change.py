"""How much of a Procgen frame changes per step under uniform-random play, per game.

A latent action model learns from what changes between frames. Where the camera follows the agent (coinrun, jumper,
ninja, ...) an action moves most pixels; where it does not (bigfish, chaser, maze, ...) about 1% of the pixels change
per step, and a short (CPU-sized) stage 2 finds little to explain. Used to choose the games of `run_all.sh cpu`.

    python scripts/pixel_change.py                      # all 16 games, 8 envs x 200 steps each
    python scripts/pixel_change.py --games bigfish coinrun --steps 500
"""
import argparse
import contextlib
import io

import numpy as np

GAMES = ("bigfish bossfight caveflyer chaser climber coinrun dodgeball fruitbot heist jumper leaper maze miner ninja "
         "plunder starpilot").split()


def pixel_change(game, num_envs=8, steps=200, seed=0, threshold=30):
    """Mean share of pixels whose summed |RGB difference| to the previous frame exceeds `threshold` (episode starts
    excluded)."""
    with contextlib.redirect_stderr(io.StringIO()):  # procgen imports gym 0.26, which prints a deprecation notice
        from procgen import ProcgenGym3Env
    env = ProcgenGym3Env(num=num_envs, env_name=game, distribution_mode="easy", num_levels=0, start_level=0,
                         rand_seed=seed)
    rng = np.random.default_rng(seed)
    _, ob, _ = env.observe()
    shares = []
    for _ in range(steps):
        prev = ob["rgb"].astype(np.int16)
        env.act(rng.integers(15, size=num_envs).astype(np.int32))
        _, ob, first = env.observe()
        changed = (np.abs(ob["rgb"].astype(np.int16) - prev).sum(-1) > threshold).mean((1, 2))
        shares.extend(changed[~first])
    env.close()
    return float(np.mean(shares))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", nargs="+", default=GAMES, choices=GAMES, help="Procgen games (default: all 16)")
    parser.add_argument("--num-envs", type=int, default=8, help="parallel envs per game")
    parser.add_argument("--steps", type=int, default=200, help="random steps per env")
    parser.add_argument("--seed", type=int, default=0, help="seed of the levels and the random actions")
    a = parser.parse_args()
    for g in a.games:
        print(f"{g:10s} {100 * pixel_change(g, a.num_envs, a.steps, a.seed):5.1f}% of the pixels change per step")
