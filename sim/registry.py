"""``make_env(cfg)``: the one place that maps an ``EnvConfig`` to an environment."""

from __future__ import annotations

from pushcut.sim.config import EnvConfig
from pushcut.sim.core import Env


def make_env(cfg: EnvConfig) -> Env:
    if cfg.kind == "twin":
        from pushcut.sim.twin.env import TwinEnv

        return TwinEnv(cfg)
    from pushcut.sim.libero import LiberoEnv

    return LiberoEnv(cfg)
