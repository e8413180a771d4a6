"""SFT on one demo: normalisation bounds (the robot's limits) and soft bin targets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pushcut import spec
from pushcut.policy.action_tokenizer import ActionTokenizer, Normalizer
from pushcut.sim.config import EnvConfig
from pushcut.sim.demos import DemoSet
from pushcut.sim.registry import action_mask, robot_bounds
from pushcut.training.sft import norm_statistics, token_loss


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
    # LIBERO: no bounds of its own; the demos' q01/q99 normalise, the gripper left alone
    libero = EnvConfig(kind="libero", task="libero_spatial", cameras=("agentview",))
    assert robot_bounds(libero) == {} and action_mask(libero) == [True] * 6 + [False]


def test_masked_dims_pass_through_and_the_others_use_q01_q99():
    """OpenVLA's mask by hand: dim 0 spans q01 -0.2 .. q99 0.6, so 0.2 is its middle (0) and 0.6 its
    top (1); the gripper (mask false) keeps its -1 / +1 and is only clipped, both ways."""
    stats = {"q01": [-0.2, -1.0], "q99": [0.6, 1.0], "mask": [True, False]}
    norm = Normalizer(stats, "q01_q99", 2)
    np.testing.assert_allclose(norm.normalize([[0.2, -1.0], [0.6, 1.0], [1.4, 3.0]]), [[0, -1], [1, 1], [1, 1]])
    np.testing.assert_allclose(norm.unnormalize([[0.0, -1.0], [-1.0, 0.3]]), [[0.2, -1.0], [-0.2, 0.3]])
    with pytest.raises(ValueError, match="mask"):
        Normalizer(stats | {"mask": [True]}, "q01_q99", 2)
    with pytest.raises(ValueError, match="true/false"):  # "false" is truthy: never read as a mask
        Normalizer(stats | {"mask": [True, "false"]}, "q01_q99", 2)


def _fit(target_bin: int, smoothing: float, steps: int = 600) -> np.ndarray:
    """The distribution free logits converge to under token_loss on one constant target."""
    logits = torch.zeros(1, 256, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        token_loss(logits, torch.tensor([target_bin]), smoothing).backward()
        opt.step()
    return torch.softmax(logits.detach(), -1)[0].numpy()


def test_one_hot_targets_are_plain_cross_entropy():
    logits, target = torch.randn(3, 5, 256), torch.randint(0, 256, (3, 5))
    torch.testing.assert_close(token_loss(logits, target), F.cross_entropy(logits.flatten(0, 1), target.flatten()))
    torch.testing.assert_close(token_loss(logits, target, 0.0), token_loss(logits, target))


def test_bin_smoothing_learns_a_bump_around_the_target_not_a_spike():
    spike, bump = _fit(100, 0.0), _fit(100, 2.0)
    assert spike.argmax() == 100 and spike[100] > 0.95  # one demo, one-hot: a near-delta
    assert bump.argmax() == 100 and bump[100] < 0.3
    bins = np.arange(256)
    mean = (bump * bins).sum()
    std = np.sqrt((bump * (bins - mean) ** 2).sum())
    assert abs(mean - 100) < 0.1 and abs(std - 2.0) < 0.2  # the Gaussian target's moments
    assert bump[97:104].sum() > 0.85 and bump[:90].sum() + bump[111:].sum() < 1e-3
