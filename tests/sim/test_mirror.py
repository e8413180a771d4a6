"""The workcell's mirror symmetry: a mirrored pose reaches the mirrored point, a mirrored scene
renders as the flipped image, and a mirrored expert demo solves the mirrored task."""

import mujoco
import numpy as np
import pytest

from pushcut import spec
from pushcut.configs import ConfigError, compose, from_hydra
from pushcut.sim.config import EnvConfig
from pushcut.sim.expert import run_expert
from pushcut.sim.twin.env import TwinEnv
from pushcut.sim.twin.kinematics import HOME, ArmKinematics
from pushcut.sim.twin.mirror import mirror_dual_arm, mirror_episode, mirror_image
from pushcut.training.config import SFTConfig

_LO, _HI = (np.array(v) for v in spec.dual_arm_limits())
FLIP_X = np.diag([-1.0, 1.0, 1.0])


def test_mirror_swaps_arms_and_is_its_own_inverse():
    rng = np.random.default_rng(0)
    q = rng.uniform(_LO, _HI, size=(5, 14)).astype(np.float32)
    m = mirror_dual_arm(q)
    assert m.dtype == np.float32
    np.testing.assert_array_equal(mirror_dual_arm(m), q)
    np.testing.assert_array_equal(np.abs(m[:, :7]), np.abs(q[:, 7:]))  # the left arm is the right one's image
    assert np.all(m >= _LO) and np.all(m <= _HI)  # limits are symmetric where joints are negated
    home = np.concatenate([HOME, [1.0], HOME, [1.0]])
    np.testing.assert_array_equal(mirror_dual_arm(home), home)  # both arms start in the same (symmetric) pose
    with pytest.raises(ValueError, match="14 dual-arm dims"):
        mirror_dual_arm(np.zeros(7))


def test_mirrored_pose_reaches_the_mirrored_point():
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(16, 16)))
    left, right = ArmKinematics(env.model, "left"), ArmKinematics(env.model, "right")
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = np.clip(np.concatenate([HOME + rng.normal(0, 0.3, 6), [0.5]] * 2), _LO, _HI)
        m = mirror_dual_arm(q)
        assert np.linalg.norm(left.fk(m[:6])[0] - FLIP_X @ right.fk(q[7:13])[0]) < 0.004
        assert np.linalg.norm(right.fk(m[7:13])[0] - FLIP_X @ left.fk(q[:6])[0]) < 0.004
    env.close()


def _mirror_bell(env: TwinEnv) -> None:
    x, y = env.layout["bell"]
    env.model.body_pos[env.task.bell] = (-x, y, 0.0)
    env.task.arm = "right" if env.task.arm == "left" else "left"


def test_mirrored_scene_renders_as_the_flipped_image():
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(64, 64)))
    env.reset(seed=3)
    q = np.clip(env.proprio() + np.random.default_rng(2).normal(0, 0.2, 14), _LO, _HI)
    env._set_arm_qpos(q)
    mujoco.mj_forward(env.model, env.data)
    view = env.render("head")
    _mirror_bell(env)
    env._set_arm_qpos(mirror_dual_arm(q))
    mujoco.mj_forward(env.model, env.data)
    mirrored = env.render("head").astype(int)
    assert np.abs(mirror_image(view) - mirrored).mean() < 1.0  # the same picture, up to a few edge pixels
    assert np.abs(view - mirrored).mean() > 3.0  # while the scene itself did change
    env.close()


def test_mirrored_expert_demo_solves_the_mirrored_task():
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(16, 16)))
    actions = []
    assert run_expert(env, 7, chunk_len=25, on_chunk=lambda obs, chunk: actions.append(chunk))
    episode = {"actions": np.concatenate(actions), "obs_proprio": np.zeros((1, 14), np.float32),
               "images_head": np.zeros((1, 16, 16, 3), np.uint8), "seed": np.int64(7)}
    mirrored = mirror_episode(episode, ("head",))
    env.reset(7)
    _mirror_bell(env)
    mujoco.mj_forward(env.model, env.data)
    assert not env.task.success(env.data, env.gripper_opening())
    for s in range(0, len(mirrored["actions"]), 25):
        step = env.step(mirrored["actions"][s : s + 25])
        if step.done:
            break
    assert step.success
    env.close()


def test_mirroring_is_refused_where_the_scene_is_not_symmetric():
    with pytest.raises(ValueError, match="cannot mirror camera"):
        mirror_episode({"actions": np.zeros((1, 14))}, ("head", "left_wrist"))
    with pytest.raises(ConfigError, match="mirror_demos"):
        from_hydra(SFTConfig, compose("sft", ["mirror_demos=true", "env=libero_object", "policy=tiny_libero"]))
    with pytest.raises(ConfigError, match="mirror_demos"):
        from_hydra(SFTConfig, compose("sft", ["mirror_demos=true", "env.cameras=[head,left_wrist]",
                                              "policy.cameras=[head,left_wrist]"]))


def test_sft_trains_on_the_demo_and_its_mirror_image(tmp_path):
    from pushcut.training.config import WandbConfig
    from pushcut.training.sft import demo_sets
    from tests.training.conftest import MICRO_ENV, MICRO_POLICY

    cfg = SFTConfig(env=MICRO_ENV, policy=MICRO_POLICY, demos_dir=str(tmp_path), demos_per_task=1, mirror_demos=True,
                    wandb=WandbConfig(mode="disabled"))
    (episodes,) = (s.episodes for s in demo_sets(cfg))
    assert len(episodes) == 2
    demo, image = episodes
    np.testing.assert_array_equal(image["actions"], mirror_dual_arm(demo["actions"]))
    np.testing.assert_array_equal(image["obs_proprio"], mirror_dual_arm(demo["obs_proprio"]))
    np.testing.assert_array_equal(image["images_head"], demo["images_head"][:, :, ::-1])
    moved = np.abs(demo["actions"] - demo["actions"][0]).max(0)  # the demo moves one arm, its image the other
    moved_image = np.abs(image["actions"] - image["actions"][0]).max(0)
    assert (moved[:6].max() > 0.1) != (moved[7:13].max() > 0.1)
    np.testing.assert_allclose(moved_image, np.concatenate([moved[7:], moved[:7]]), atol=1e-6)
