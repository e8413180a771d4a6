"""The driver's safety layer: every command passes here before it can reach the arm.

Rules (each counted, the first of each kind logged): reject wrongly sized or non-finite commands;
clamp to the joint and gripper limits; limit the step per tick (the arm's top speed at the
control rate, from :class:`~pushcut.deploy.piper.driver.DriverConfig`); keep every joint target
within ``max_relative_target`` of the **measured** joint position (LeRobot's
``max_relative_target`` / ``ensure_safe_goal_position``: relative to where the arm is, not to the
last command); after every enable the step limit ramps from zero to full over ``ramp_s``; hold the
last safe target when commands go stale (watchdog). When in doubt the answer is: hold still.

The gripper has no relative bound: a grasp commands the fingers closer than the object lets them
go, and the gripper's effort limit (``DriverConfig.gripper_effort``) bounds what that does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pushcut.configs import ranges
from pushcut.spec import GRIPPER_RANGE_M, JOINT_LIMITS

log = logging.getLogger(__name__)

LOWER = np.array([lo for lo, _ in JOINT_LIMITS] + [GRIPPER_RANGE_M[0]])
UPPER = np.array([hi for _, hi in JOINT_LIMITS] + [GRIPPER_RANGE_M[1]])
PLAUSIBLE_MARGIN = 0.5  # beyond the limits (rad, m) a reading is a sensor fault, not a pose


def implausible(state: np.ndarray) -> bool:
    """Whether a measured state (``[j1..j6]`` or ``[j1..j6, gripper]``) lies far outside the limits."""
    n = len(state)
    return bool(np.any(state < LOWER[:n] - PLAUSIBLE_MARGIN) or np.any(state > UPPER[:n] + PLAUSIBLE_MARGIN))


@ranges(max_relative_target=">0", max_gripper_step=">0", ramp_s=">0", watchdog_s=">0")
@dataclass(frozen=True)
class SafetyConfig:
    max_relative_target: float = 0.1  # rad: a joint target never leads the measured joint by more
    max_gripper_step: float = 0.005  # m per control tick
    ramp_s: float = 0.5  # after an enable the step limit grows from 0 to full over this time
    watchdog_s: float = 0.2  # no fresh command for this long: hold


class SafetyLayer:
    """Per-arm: 7-dim targets ``[j1..j6 (rad), gripper opening (m)]``.

    ``joint_step`` is the largest joint move per tick (rad, scalar or one per joint); ``lower`` and
    ``upper`` the 7-dim limits (the driver narrows them to the firmware's where those are tighter).
    """

    def __init__(self, cfg: SafetyConfig, joint_step, lower: np.ndarray = LOWER, upper: np.ndarray = UPPER):
        self.cfg = cfg
        self.counts: Counter[str] = Counter()
        self.lower, self.upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
        self.step = np.append(np.broadcast_to(np.asarray(joint_step, dtype=float), (6,)), cfg.max_gripper_step)
        self.last_target: np.ndarray | None = None
        self.last_command_time: float | None = None
        self._pending: np.ndarray | None = None
        self._ramp_from: float | None = None

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

    def target(self, measured: np.ndarray, now: float) -> np.ndarray:
        """The target to send this tick given the ``measured`` 7-dim state: the pending command made
        safe, or a hold."""
        measured = np.asarray(measured, dtype=np.float64)
        base = self.last_target if self.last_target is not None else measured
        stale = self.last_command_time is None or now - self.last_command_time > self.cfg.watchdog_s
        if stale:
            if self.last_command_time is not None:
                self._count("watchdog_hold", f"no command for {self.cfg.watchdog_s}s")
            want = base
        else:
            want = np.clip(self._pending, self.lower, self.upper)
            if np.any(want != self._pending):
                self._count("clamped_limits", "target outside joint/gripper limits")
        ramp = 1.0 if self._ramp_from is None else min(1.0, max(0.0, (now - self._ramp_from) / self.cfg.ramp_s))
        step = self.step * ramp
        new = base + np.clip(want - base, -step, step)
        if not stale and np.any(new != want):
            self._count("clamped_step", "step per tick above the arm's speed at the control rate")
        lead = self.cfg.max_relative_target
        joints = np.clip(new[:6], measured[:6] - lead, measured[:6] + lead)
        if np.any(joints != new[:6]):
            self._count("clamped_relative", f"joint target more than {lead} rad from the measured position")
            new[:6] = joints
        self.last_target = new
        return new.copy()

    def rebase(self, measured: np.ndarray, now: float) -> None:
        """Forget every command: hold ``measured`` and ramp the step limit in from zero."""
        self.last_target = np.asarray(measured, dtype=np.float64).copy()
        self.last_command_time = None
        self._pending = None
        self._ramp_from = now
