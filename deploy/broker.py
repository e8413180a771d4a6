"""The action-chunk broker (openpi's client/server split): one command per control tick.

``ActionChunkBroker`` hands out one command per control tick from the latest chunk, resampled
from the policy's step period to the control period along the same smoothed path the twin
executes (:mod:`pushcut.motion`), so the real controller reproduces the twin's motion; in
``async`` execution it splices the next chunk in at the takeover.
"""

from __future__ import annotations

import numpy as np

from pushcut.motion import spline


class ActionChunkBroker:
    """One smoothed command per control tick from the current chunk.

    ``substeps`` control ticks per policy step (e.g. 200 Hz control / 25 Hz policy steps = 8).
    ``set_chunk(chunk, current, keep)`` splices a chunk in after ``keep`` more commands of the
    current path (0: from the last command handed out), continuing its position and velocity;
    ``next()`` returns the next command, or None once the path is used up (the caller then holds
    position). ``planned(k)`` is the command ``k`` ticks ahead: where the arm will be then.
    """

    def __init__(self, substeps: int):
        if substeps < 1:
            raise ValueError("substeps must be >= 1")
        self.substeps = substeps
        self._path: np.ndarray | None = None
        self._velocity: np.ndarray | None = None
        self._i = 0
        self.last: np.ndarray | None = None
        self._last_velocity: np.ndarray | None = None

    def set_chunk(self, chunk: np.ndarray, current: np.ndarray | None = None, keep: int = 0) -> None:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or not np.all(np.isfinite(chunk)):
            raise ValueError("a chunk must be a finite (T, D) array")
        keep = max(0, min(int(keep), self.remaining))
        if keep:
            j = self._i + keep - 1
            start, tangent = self._path[j], self._velocity[j]
            prefix = slice(self._i, j + 1)
        elif self.last is not None:
            start, tangent, prefix = self.last, self._last_velocity, slice(0, 0)
        else:
            start = chunk[0] if current is None else np.asarray(current, dtype=np.float64)
            tangent, prefix = None, slice(0, 0)
        path, velocity = spline(start, chunk, self.substeps, tangent)
        if keep:
            path, velocity = np.vstack([self._path[prefix], path]), np.vstack([self._velocity[prefix], velocity])
        self._path, self._velocity, self._i = path, velocity, 0

    def next(self) -> np.ndarray | None:
        if self._path is None or self._i >= len(self._path):
            if self._last_velocity is not None:
                self._last_velocity = np.zeros_like(self._last_velocity)  # used up: at rest
            return None
        self.last, self._last_velocity = self._path[self._i], self._velocity[self._i]
        self._i += 1
        return self.last.copy()

    def planned(self, ticks: int) -> np.ndarray | None:
        """The command ``ticks`` ahead (the path's end beyond it; the last one handed out at 0)."""
        if ticks <= 0 or self.remaining == 0:
            return None if self.last is None else self.last.copy()
        return self._path[self._i + min(ticks, self.remaining) - 1].copy()

    @property
    def remaining(self) -> int:
        return 0 if self._path is None else len(self._path) - self._i

    def reset(self) -> None:
        self._path, self._velocity, self._i, self.last, self._last_velocity = None, None, 0, None, None
