"""``make_env(cfg)``: the one place that maps an ``EnvConfig`` to an environment."""

from __future__ import annotations

from pushcut.sim.config import EnvConfig
from pushcut.sim.core import Env

ACTION_DIM = {"twin": 14, "libero": 7}  # per env kind
PROPRIO_DIM = {"twin": 14, "libero": 8}


def robot_bounds(cfg: EnvConfig) -> dict[str, tuple[list[float], list[float]]]:
    """The embodiment's own action (and, where it has them, proprio) bounds, without building the env.

    Twin: the Piper's joint limits and the normalised gripper range, for actions and proprio alike.
    LIBERO: none; as in OpenVLA-OFT and SimpleVLA-RL its actions are normalised by the demos' own
    q01/q99 (the OSC box [-1, 1] is far wider than what a demo's deltas use), the gripper aside
    (``action_mask``).
    """
    if cfg.kind == "twin":
        from pushcut import spec

        lo, hi = spec.dual_arm_limits()
        return {"action": (lo, hi), "proprio": (lo, hi)}
    return {}


def action_mask(cfg: EnvConfig) -> list[bool] | None:
    """Which action dims the statistics normalise (OpenVLA's dataset ``mask``): LIBERO's gripper,
    already -1 open / +1 close, is left as it is; None: all of them."""
    return [True] * 6 + [False] if cfg.kind == "libero" else None


def make_env(cfg: EnvConfig) -> Env:
    if cfg.kind == "twin":
        from pushcut.sim.twin.env import TwinEnv

        return TwinEnv(cfg)
    from pushcut.sim.libero import LiberoEnv

    return LiberoEnv(cfg)
