"""The robot-side policy interface and the action-chunk broker (openpi's client/server split).

``Policy``: ``infer(obs) -> (chunk_len, action_dim)`` and ``reset()``. ``ActionChunkBroker``
hands out one command per control tick from the latest chunk, resampled from the policy's
step period to the control period along the same smoothed path the twin executes (a C1 cubic
through the waypoints), so the real controller reproduces the twin's motion.

Two ways to execute chunks (``execution``):

- ``sync``: a chunk runs to its end, where the path comes to rest; the next inference starts
  only then, on frames taken after the last command, so the arm waits for every inference.
- ``async``: the next inference starts while the current chunk still runs, early enough that it
  is back before the chunk's last segment; its observation carries the command the arm will
  have reached when the new chunk takes over (the proprio of a chunk boundary), and the new
  chunk is *spliced* there: the commands up to the takeover are kept, and the new path starts
  from the old one's position and velocity (``spline(..., start_tangent=)``), so the command path
  is C1 by construction and the arm never stops between chunks.

Why a splice and not temporal ensembling (ACT's, or LeRobot's weighted average of overlapping
chunks): a parallel-decoded chunk is one draw over 256 bins per token, and two chunks from
nearby frames can choose different motions (a reach that goes left of the bell, one that goes
right); averaging them commands a motion that is neither. Real-time chunking (RTC) avoids that by
inpainting the executed prefix into the next chunk, which needs an iterative (flow) decoder; a
decoder that emits all tokens in one pass cannot be conditioned on a prefix, so the prefix is
passed the way the policy was trained to read it, as the proprio at the boundary, and the
splice joins the paths. The prefix the arm has been told to follow is never changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

EXECUTION_MODES = ("sync", "async")


class Policy(Protocol):
    def infer(self, obs: Mapping) -> np.ndarray: ...

    def reset(self) -> None: ...


def spline(start: np.ndarray, waypoints: np.ndarray, substeps: int,
           start_tangent: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(T * substeps, D)`` through ``waypoints`` (T, D) from ``start`` (D,), and their
    velocities (per waypoint period, same shape).

    Catmull-Rom tangents inside the chunk, zero velocity at its end, and at its start
    ``start_tangent`` (per waypoint period; zero when None): given the velocity of the path it
    continues, the joined path is C1.
    """
    pts = np.vstack([np.asarray(start, dtype=np.float64)[None], np.asarray(waypoints, dtype=np.float64)])
    tangents = np.zeros_like(pts)
    if len(pts) > 2:
        tangents[1:-1] = 0.5 * (pts[2:] - pts[:-2])
    if start_tangent is not None:
        tangents[0] = start_tangent
    s = (np.arange(1, substeps + 1) / substeps)[:, None]  # (S, 1)
    p0, p1, m0, m1 = pts[:-1, None], pts[1:, None], tangents[:-1, None], tangents[1:, None]
    path = ((2 * s**3 - 3 * s**2 + 1) * p0 + (s**3 - 2 * s**2 + s) * m0
            + (-2 * s**3 + 3 * s**2) * p1 + (s**3 - s**2) * m1)
    velocity = (6 * s**2 - 6 * s) * (p0 - p1) + (3 * s**2 - 4 * s + 1) * m0 + (3 * s**2 - 2 * s) * m1
    return path.reshape(-1, pts.shape[1]), velocity.reshape(-1, pts.shape[1])


def smooth_path(start: np.ndarray, waypoints: np.ndarray, substeps: int) -> np.ndarray:
    """The path of a chunk executed from rest (``spline`` with zero velocity at both ends)."""
    return spline(start, waypoints, substeps)[0]


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
