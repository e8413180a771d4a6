"""``make_env(cfg)``: the one place that maps an ``EnvConfig`` to an environment."""

from __future__ import annotations

from pushcut.sim.config import EnvConfig
from pushcut.sim.core import Env

ACTION_DIM = {"twin": 14, "libero": 7}  # per env kind
PROPRIO_DIM = {"twin": 14, "libero": 8}


def robot_bounds(cfg: EnvConfig) -> dict[str, tuple[list[float], list[float]]]:
    """The embodiment's own action (and, where it has them, proprio) bounds, without building the env.

    Twin: the Piper's joint limits and the normalised gripper range, for actions and proprio alike.
    LIBERO: the OSC controller's [-1, 1] action box (its proprio has no natural bounds).
    """
    if cfg.kind == "twin":
        from pushcut import spec

        lo, hi = spec.dual_arm_limits()
        return {"action": (lo, hi), "proprio": (lo, hi)}
    return {"action": ([-1.0] * 7, [1.0] * 7)}


def make_env(cfg: EnvConfig) -> Env:
    if cfg.kind == "twin":
        from pushcut.sim.twin.env import TwinEnv

        return TwinEnv(cfg)
    from pushcut.sim.libero import LiberoEnv

    return LiberoEnv(cfg)
