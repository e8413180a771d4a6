"""Guided zeroing of a Piper through the SDK: joint zero and gripper zero and range.

Joint zero (vendor procedure): release one joint, move it by hand to its zero mark (joints 2 and
3 have no marks: use their rest pose), then ``JointConfig(n, 0xAE)`` makes the current position
zero. Gripper: release it, close it fully by hand, ``GripperCtrl(0, 1000, 0x00, 0xAE)``; then
open it fully by hand to measure its range. Each step asks the operator through ``prompt`` (the
terminal by default) and verifies the reading afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pushcut.calibration_files import ArmCalibration, CalibrationError
from pushcut.deploy.piper.driver import PiperArm

ZERO_TOL = 0.002  # rad
HINTS = {2: "its rest pose (no mark)", 3: "its rest pose (no mark)"}


def _settle(arm: PiperArm, seconds: float = 0.1) -> None:
    time.sleep(seconds)


def joint_zero(arm: PiperArm, arm_name: str, joints: Sequence[int] = (1, 2, 3, 4, 5, 6),
               prompt: Callable[[str], object] = input) -> ArmCalibration:
    offsets = [0.0] * 6
    for j in joints:
        arm.sdk.DisableArm(j)
        _settle(arm)
        prompt(f"[{arm_name}] joint {j} is released: move it by hand to {HINTS.get(j, 'its zero mark')}, "
               "then press Enter")
        before = arm.feedback().q[j - 1]
        arm.sdk.JointConfig(j, 0xAE)
        _settle(arm)
        after = arm.feedback().q[j - 1]
        if abs(after) > ZERO_TOL:
            raise CalibrationError(f"joint {j} reads {after:.4f} rad after zeroing; the arm did not take the zero")
        offsets[j - 1] = float(before)
        arm.sdk.EnableArm(j)
    return ArmCalibration(arm=arm_name, can_port=arm.cfg.can_port, joint_zero_offsets=offsets,
                          gripper_range_m=[0.0, 0.07])


def gripper_zero(arm: PiperArm, cal: ArmCalibration, prompt: Callable[[str], object] = input) -> ArmCalibration:
    arm.sdk.GripperCtrl(0, 0, 0x00, 0)  # release
    prompt(f"[{cal.arm}] gripper released: close it fully by hand, then press Enter")
    arm.sdk.GripperCtrl(0, 1000, 0x00, 0xAE)
    _settle(arm)
    closed = arm.feedback().gripper
    if abs(closed) > 0.0005:
        raise CalibrationError(f"gripper reads {closed * 1000:.2f} mm after zeroing; it did not take the zero")
    prompt(f"[{cal.arm}] open the gripper fully by hand, then press Enter")
    _settle(arm)
    opened = arm.feedback().gripper
    if opened < 0.02:
        raise CalibrationError(f"gripper opened to only {opened * 1000:.1f} mm; open it fully and retry")
    cal.gripper_range_m = [0.0, float(opened)]
    return cal
