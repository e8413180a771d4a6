"""Normalisation bounds of SFT: the one-demo trap and the robot's limits."""

import numpy as np

from pushcut import spec
from pushcut.policy.action_tokenizer import ActionTokenizer, Normalizer
from pushcut.sim.config import EnvConfig
from pushcut.sim.demos import DemoSet
from pushcut.sim.registry import robot_bounds
from pushcut.training.sft import norm_statistics


def _one_right_arm_demo() -> DemoSet:
    """Like one click_bell demo: the right arm reaches, the left arm never moves."""
    t = np.linspace(0, 1, 50)[:, None]
    acts = np.zeros((50, spec.DUAL_ARM_DIM))
    acts[:, 1], acts[:, 2], acts[:, 6] = 1.2, -1.1, 1.0  # left arm parked, gripper open
    acts[:, 7:13] = t * np.array([0.8, 1.4, -0.6, 0.0, 0.9, 0.0])
    acts[:, 13] = 1.0 - t[:, 0]
    return DemoSet(meta={}, episodes=[{"actions": acts, "obs_proprio": acts.astype(np.float32)}])


def _round_trip(stats: dict, a: np.ndarray) -> np.ndarray:
    norm = Normalizer(stats["action"], "min_max", spec.DUAL_ARM_DIM)
    tok = ActionTokenizer(256)
    return norm.unnormalize(tok.from_bins(tok.to_bins(norm.normalize(a))))


def test_demo_bounds_freeze_what_one_demo_does_not_move():
    stats = norm_statistics([_one_right_arm_demo()])
    norm = Normalizer(stats["action"], "min_max", spec.DUAL_ARM_DIM)
    assert norm.constant[:7].all()  # the left arm can never be commanded to move
    reach_left = np.array([-0.9, 1.5, -1.0, 0.0, 0.6, 0.0, 0.0, 0, 1.2, -1.1, 0, 0.9, 0, 1.0])
    assert np.abs(_round_trip(stats, reach_left) - reach_left).max() > 0.5


def test_robot_bounds_span_the_limits_for_every_dimension():
    twin = EnvConfig(task="click_bell")
    stats = norm_statistics([_one_right_arm_demo()], robot_bounds(twin))
    lo, hi = spec.dual_arm_limits()
    for key in ("action", "proprio"):
        assert stats[key]["min"] == lo and stats[key]["max"] == hi
        assert stats[key]["q01"] == lo and stats[key]["q99"] == hi
    norm = Normalizer(stats["action"], "min_max", spec.DUAL_ARM_DIM)
    assert not norm.constant.any()
    rng = np.random.default_rng(0)
    a = rng.uniform(lo, hi, size=(100, spec.DUAL_ARM_DIM))
    half_bin = (np.array(hi) - np.array(lo)) / 256 / 2
    assert np.all(np.abs(_round_trip(stats, a) - a) <= half_bin + 1e-12)
    # LIBERO: only actions have natural bounds (the OSC box); its proprio keeps the demos' stats
    libero = robot_bounds(EnvConfig(kind="libero", task="libero_spatial", cameras=("agentview",)))
    assert libero == {"action": ([-1.0] * 7, [1.0] * 7)}
