"""The environment interface every env in ``sim/`` implements (no torch here).

``reset(seed) -> Obs`` and ``step(actions) -> Step``; ``actions`` is one action ``(action_dim,)``
or an action chunk ``(chunk_len, action_dim)`` executed as one smoothed path. Observations carry
the camera images, the proprio vector and the instruction under the keys of ``pushcut.spec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pushcut import spec


@dataclass(frozen=True)
class Obs:
    images: dict[str, np.ndarray]  # camera -> uint8 (H, W, 3)
    proprio: np.ndarray  # float32 (proprio_dim,)
    instruction: str

    def as_dict(self) -> dict[str, Any]:
        return {spec.IMAGES: self.images, spec.PROPRIO: self.proprio, spec.INSTRUCTION: self.instruction}


@dataclass(frozen=True)
class Step:
    obs: Obs
    reward: float  # binary: 1.0 once the task has succeeded
    success: bool
    done: bool  # success or step limit reached; no further steps allowed
    steps: int  # control steps executed so far in the episode
    info: dict[str, Any] = field(default_factory=dict)


class Env(Protocol):
    action_dim: int
    proprio_dim: int
    max_steps: int
    instruction: str

    def reset(self, seed: int) -> Obs: ...

    def step(self, actions: np.ndarray) -> Step: ...

    def close(self) -> None: ...


def as_chunk(actions: np.ndarray, action_dim: int) -> np.ndarray:
    """Validate one action or a chunk and return it as float64 ``(T, action_dim)``.

    NaN/inf or a wrong size is an error, never silently executed.
    """
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != action_dim or a.shape[0] == 0:
        raise ValueError(f"expected actions of shape ({action_dim},) or (T, {action_dim}), got {np.shape(actions)}")
    if not np.all(np.isfinite(a)):
        raise ValueError("actions contain NaN or inf")
    return a
