"""The contracts every stage shares: observation/action keys and the Piper's limits.

Plain Python with no dependencies, so the twin (sim/), the policy, the torch-free engine (deploy/)
and the ROS 2 nodes all import the same constants instead of scattering string literals.
Limits are the piper_sdk parameter table's (../shared/reference/piper.md), not the URDF's.
"""

from __future__ import annotations

# --- observation keys --------------------------------------------------------------------------
IMAGES = "images"  # dict camera name -> uint8 (H, W, 3)
PROPRIO = "proprio"  # float32 (proprio_dim,)
INSTRUCTION = "instruction"  # str

# --- cameras of the dual-arm workcell ---------------------------------------------------------
HEAD_CAMERA = "head"
LEFT_WRIST_CAMERA = "left_wrist"
RIGHT_WRIST_CAMERA = "right_wrist"
TWIN_CAMERAS = (HEAD_CAMERA, LEFT_WRIST_CAMERA, RIGHT_WRIST_CAMERA)
HEAD_FOVY_DEG = 37.0  # D435-like head camera, as in RoboTwin 2.0
HEAD_NATIVE_SIZE = (240, 320)  # (height, width)

# --- the dual-arm action / proprio layout -----------------------------------------------------
ARMS = ("left", "right")
ARM_JOINTS = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
GRIPPER = "gripper"
DOF_PER_ARM = len(ARM_JOINTS) + 1  # 6 joints + gripper
DUAL_ARM_DIM = 2 * DOF_PER_ARM  # [left j1..j6, left gripper, right j1..j6, right gripper]

# Joint limits in rad from the SDK's parameter table; clamp to these.
JOINT_LIMITS = (
    (-2.6179, 2.6179),
    (0.0, 3.14),
    (-2.967, 0.0),
    (-1.745, 1.745),
    (-1.22, 1.22),
    (-2.0944, 2.0944),
)
GRIPPER_RANGE_M = (0.0, 0.07)  # total opening between the fingers
# The joints' top speed in rad/s: the SDK's max_joint_spd setting spans [0, 3000] x 0.001 rad/s
# for every joint (piper_sdk ArmMsgMotorAngleLimitMaxSpdSet). The twin and the CAN emulator move
# no faster, so what RL learns in the twin is what the arm can do.
JOINT_MAX_SPEED = 3.0
GRIPPER_NORMALISED = (0.0, 1.0)  # 0 closed, 1 open (RoboTwin convention)


def dual_arm_names() -> list[str]:
    """Names of the 14 dual-arm dimensions, in action order (``left_joint1`` ... ``right_gripper``)."""
    return [f"{arm}_{j}" for arm in ARMS for j in (*ARM_JOINTS, GRIPPER)]


def dual_arm_limits() -> tuple[list[float], list[float]]:
    """Lower and upper bounds of the 14-dim action (gripper normalised to [0, 1])."""
    lo = [lim[0] for lim in JOINT_LIMITS] + [GRIPPER_NORMALISED[0]]
    hi = [lim[1] for lim in JOINT_LIMITS] + [GRIPPER_NORMALISED[1]]
    return lo * 2, hi * 2
