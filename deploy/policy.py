"""The robot-side policy interface and the action-chunk broker (openpi's client/server split).

``Policy``: ``infer(obs) -> (chunk_len, action_dim)`` and ``reset()``. ``ActionChunkBroker``
hands out one command per control tick from the latest chunk, resampled from the policy's
step period to the control period along the same smoothed path the twin executes (C1 cubic
through the waypoints, zero velocity at the chunk's ends), so the real controller reproduces the
twin's motion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np


class Policy(Protocol):
    def infer(self, obs: Mapping) -> np.ndarray: ...

    def reset(self) -> None: ...


def smooth_path(start: np.ndarray, waypoints: np.ndarray, substeps: int) -> np.ndarray:
    """Targets ``(T * substeps, D)`` through ``waypoints`` (T, D) from ``start`` (D,).

    Catmull-Rom tangents inside the chunk and zero velocity at both ends: the twin executes
    chunks along exactly this path (``pushcut.sim.twin.env`` uses this function).
    """
    pts = np.vstack([np.asarray(start, dtype=np.float64)[None], np.asarray(waypoints, dtype=np.float64)])
    tangents = np.zeros_like(pts)
    if len(pts) > 2:
        tangents[1:-1] = 0.5 * (pts[2:] - pts[:-2])
    s = np.arange(1, substeps + 1) / substeps  # (S,)
    h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
    h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
    p0, p1, m0, m1 = pts[:-1, None], pts[1:, None], tangents[:-1, None], tangents[1:, None]
    path = h00[:, None] * p0 + h10[:, None] * m0 + h01[:, None] * p1 + h11[:, None] * m1  # (T, S, D)
    return path.reshape(-1, pts.shape[1])


class ActionChunkBroker:
    """One smoothed command per control tick from the current chunk.

    ``substeps`` control ticks per policy step (e.g. 200 Hz control / 25 Hz policy steps = 8).
    ``set_chunk`` starts a new path from the last command handed out; ``next()`` returns the
    next command, or None once the chunk is used up (the caller then holds position).
    """

    def __init__(self, substeps: int):
        if substeps < 1:
            raise ValueError("substeps must be >= 1")
        self.substeps = substeps
        self._path: np.ndarray | None = None
        self._i = 0
        self.last: np.ndarray | None = None

    def set_chunk(self, chunk: np.ndarray, current: np.ndarray | None = None) -> None:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or not np.all(np.isfinite(chunk)):
            raise ValueError("a chunk must be a finite (T, D) array")
        start = self.last if self.last is not None else (chunk[0] if current is None else np.asarray(current))
        self._path = smooth_path(start, chunk, self.substeps)
        self._i = 0

    def next(self) -> np.ndarray | None:
        if self._path is None or self._i >= len(self._path):
            return None
        self.last = self._path[self._i]
        self._i += 1
        return self.last.copy()

    @property
    def remaining(self) -> int:
        return 0 if self._path is None else len(self._path) - self._i

    def reset(self) -> None:
        self._path, self._i, self.last = None, 0, None
