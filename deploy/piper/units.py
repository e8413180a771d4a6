"""Unit conversions between ROS/pushcut units and the Piper's CAN units (one tested place).

Joints: rad <-> 0.001 degree integers. Gripper: metres of total opening <-> 0.001 mm
integers; the policy's normalised gripper (0 closed .. 1 open) <-> metres over the SDK's
0 .. 0.07 m range. Effort: N*m <-> 0.001 N*m.
"""

from __future__ import annotations

import math

from pushcut.spec import GRIPPER_RANGE_M

MILLIDEG_PER_RAD = 180_000.0 / math.pi


def rad_to_millideg(rad: float) -> int:
    return round(rad * MILLIDEG_PER_RAD)


def millideg_to_rad(v: int) -> float:
    return v / MILLIDEG_PER_RAD


def m_to_micrometre(m: float) -> int:
    """Metres -> the SDK's gripper unit (0.001 mm = 1 um)."""
    return round(m * 1_000_000)


def micrometre_to_m(v: int) -> float:
    return v / 1_000_000


def nm_to_milli(nm: float) -> int:
    return round(nm * 1000)


def gripper_normalised_to_m(g: float) -> float:
    lo, hi = GRIPPER_RANGE_M
    return lo + min(max(g, 0.0), 1.0) * (hi - lo)


def gripper_m_to_normalised(m: float) -> float:
    lo, hi = GRIPPER_RANGE_M
    return min(max((m - lo) / (hi - lo), 0.0), 1.0)
