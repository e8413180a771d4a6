"""Command paths: how an action chunk becomes motion, on the twin and on the robot alike.

A chunk of waypoints (one per policy step) is executed as one C1 cubic through them, sampled at
``substeps`` points per policy step (:func:`spline`, :func:`smooth_path`); the twin steps its
physics along it and the robot's chunk broker (``pushcut.deploy.broker``) streams it to the arms,
so both move the same way.

Two ways to execute chunks (``execution``, :data:`EXECUTION_MODES`):

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

Part of the ground floor: imports numpy only.
"""

from __future__ import annotations

import numpy as np

EXECUTION_MODES = ("sync", "async")


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
