"""The driver's safety layer: every command passes here before it can reach the arm.

Rules (each counted, the first of each kind logged): reject wrongly sized or non-finite commands;
clamp to the SDK's joint and gripper limits; limit the step per tick relative to the last sent
target (LeRobot's ``max_relative_target``); hold the last safe target when commands go stale
(watchdog). When in doubt the answer is: hold still.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pushcut.spec import GRIPPER_RANGE_M, JOINT_LIMITS

log = logging.getLogger(__name__)

LOWER = np.array([lo for lo, _ in JOINT_LIMITS] + [GRIPPER_RANGE_M[0]])
UPPER = np.array([hi for _, hi in JOINT_LIMITS] + [GRIPPER_RANGE_M[1]])


@dataclass(frozen=True)
class SafetyConfig:
    max_joint_step: float = 0.05  # rad per control tick (10 rad/s at 200 Hz)
    max_gripper_step: float = 0.005  # m per control tick
    watchdog_s: float = 0.2  # no fresh command for this long: hold


class SafetyLayer:
    """Per-arm: 7-dim targets ``[j1..j6 (rad), gripper opening (m)]``."""

    def __init__(self, cfg: SafetyConfig = SafetyConfig()):
        self.cfg = cfg
        self.counts: Counter[str] = Counter()
        self.last_target: np.ndarray | None = None
        self.last_command_time: float | None = None
        self._step = np.array([cfg.max_joint_step] * 6 + [cfg.max_gripper_step])

    def _count(self, what: str, detail: str) -> None:
        if self.counts[what] == 0:
            log.warning("safety: %s (%s); further occurrences are only counted", what, detail)
        self.counts[what] += 1

    def accept(self, command, now: float) -> bool:
        """Validate a new command; returns False (and counts why) if it must be dropped."""
        try:
            c = np.asarray(command, dtype=np.float64)
        except (TypeError, ValueError):
            self._count("rejected_malformed", "not numeric")
            return False
        if c.shape != (7,):
            self._count("rejected_size", f"shape {c.shape}, expected (7,)")
            return False
        if not np.all(np.isfinite(c)):
            self._count("rejected_nonfinite", "NaN or inf")
            return False
        self._pending = c
        self.last_command_time = now
        return True

    def target(self, current: np.ndarray, now: float) -> np.ndarray:
        """The target to send this tick: the pending command, made safe, or a hold."""
        base = self.last_target if self.last_target is not None else np.asarray(current, dtype=np.float64)
        stale = self.last_command_time is None or now - self.last_command_time > self.cfg.watchdog_s
        if stale:
            if self.last_command_time is not None:
                self._count("watchdog_hold", f"no command for {self.cfg.watchdog_s}s")
            self.last_target = base
            return base.copy()
        want = self._pending
        clamped = np.clip(want, LOWER, UPPER)
        if np.any(clamped != want):
            self._count("clamped_limits", "target outside joint/gripper limits")
        delta = np.clip(clamped - base, -self._step, self._step)
        if np.any(delta != clamped - base):
            self._count("clamped_step", "step per tick above max_relative_target")
        self.last_target = base + delta
        return self.last_target.copy()

    def reset(self) -> None:
        self.last_target = None
        self.last_command_time = None
