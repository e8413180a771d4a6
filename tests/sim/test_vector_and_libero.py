"""The vectorised env keeps persistent workers; a LIBERO task resets and steps."""

import numpy as np
import pytest

from pushcut.sim.config import EnvConfig
from pushcut.sim.twin.env import TwinEnv
from pushcut.sim.vector import VectorEnv


def test_vector_env_matches_single_env():
    cfg = EnvConfig(task="click_bell", image_size=(24, 24))
    with VectorEnv(cfg, num_envs=2) as venv:
        pids = [p.pid for p in venv._procs]
        obs = venv.reset([7, 8])
        steps = venv.step([np.tile(o.proprio, (3, 1)) for o in obs])
        assert [s.steps for s in steps] == [3, 3]
        steps = venv.step([None, np.tile(obs[1].proprio, (2, 1))])
        assert steps[0] is None and steps[1].steps == 5
        venv.reset([9, 10])
        assert [p.pid for p in venv._procs] == pids  # persistent workers, not one per episode
        single = TwinEnv(cfg)
        np.testing.assert_array_equal(single.reset(9).images["head"], venv.reset([9, 1])[0].images["head"])
        single.close()
        with pytest.raises(RuntimeError, match="NaN"):
            venv.step([np.full(14, np.nan), None])


def test_vector_env_reports_bad_config_from_worker():
    with pytest.raises(RuntimeError, match="task_ids"):
        VectorEnv(EnvConfig(kind="libero", task="libero_spatial", cameras=("agentview",), task_ids=(99,)), 1)


def test_libero_task_resets_and_steps():
    from pushcut.sim.libero import NOOP, LiberoEnv

    env = LiberoEnv(
        EnvConfig(kind="libero", task="libero_spatial", task_ids=(0,), cameras=("agentview",), image_size=(32, 32),
                  physics_hz=500, action_hz=20)
    )
    obs = env.reset(seed=0)
    assert obs.images["agentview"].shape == (32, 32, 3) and obs.images["agentview"].std() > 1
    assert obs.proprio.shape == (8,) and np.all(np.isfinite(obs.proprio))
    assert "bowl" in obs.instruction
    step = env.step(np.tile(NOOP, (3, 1)))
    assert step.steps == 3 and not step.success and step.reward == 0.0
    env.close()
