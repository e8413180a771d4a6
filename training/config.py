"""Typed configs of the training entry points (sft, eval, train)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pushcut.configs import require
from pushcut.policy.config import PolicyConfig
from pushcut.sim.config import EnvConfig

ENV_ACTION_DIM = {"twin": 14, "libero": 7}


@dataclass(frozen=True, kw_only=True)
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "pushcut"
    entity: str | None = None


def check_policy_fits_env(policy: PolicyConfig, env: EnvConfig) -> None:
    require(
        policy.action_dim == ENV_ACTION_DIM[env.kind],
        f"policy.action_dim {policy.action_dim} does not match the {env.kind} env's {ENV_ACTION_DIM[env.kind]}",
    )
    missing = [c for c in policy.cameras if c not in env.cameras]
    require(not missing, f"policy camera(s) {missing} are not rendered by env.cameras {list(env.cameras)}")


@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    demos_dir: str = "demos"
    demos_per_task: int = 50
    tasks: tuple[str, ...] | None = None
    steps: int = 1500
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    eval_episodes: int = 0
    num_envs: int = 2
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        require(self.demos_per_task >= 1, "demos_per_task must be >= 1")
        require(self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1")
        require(self.lr > 0, "lr must be > 0")
        require(self.eval_episodes >= 0 and self.num_envs >= 1, "eval_episodes >= 0 and num_envs >= 1")
        check_policy_fits_env(self.policy, self.env)

    @property
    def task_list(self) -> tuple[str, ...]:
        return self.tasks or (self.env.task,)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    checkpoint: str | None = None
    bundle: str | None = None
    episodes: int = 50
    seed_start: int = 100_000
    num_envs: int = 2
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def __post_init__(self) -> None:
        require((self.checkpoint is None) != (self.bundle is None), "give exactly one of checkpoint= or bundle=")
        require(self.episodes >= 1 and self.num_envs >= 1, "episodes and num_envs must be >= 1")
