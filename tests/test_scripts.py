"""scripts/pixel_change.py on real Procgen envs: a game whose camera follows the agent changes far more pixels per step."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

from pixel_change import pixel_change


def test_camera_following_game_changes_more_pixels_than_a_fixed_view():
    fixed, following = pixel_change("bigfish", num_envs=2, steps=30), pixel_change("coinrun", num_envs=2, steps=30)
    assert 0.0 < fixed < 0.05 and following > 0.1
