"""numpy <-> ROS message conversions shared by the nodes (images, joint states, the 14-dim action)."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, JointState

from pushcut.deploy.piper import units
from pushcut.spec import ARM_JOINTS, ARMS, DOF_PER_ARM, GRIPPER

JOINT_NAMES = [*ARM_JOINTS, GRIPPER]  # piper_ros: joint1..joint6 (rad) + gripper (m)


def stamp_to_s(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def image_msg(img: np.ndarray, stamp: Time, frame_id: str) -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "rgb8"
    msg.step = int(img.shape[1] * 3)
    msg.data = np.ascontiguousarray(img, dtype=np.uint8).tobytes()
    return msg


def image_array(msg: Image) -> np.ndarray:
    """An ``rgb8``/``bgr8`` Image -> (H, W, 3) uint8 RGB; ValueError naming what is wrong otherwise."""
    if msg.encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding {msg.encoding!r}, expected rgb8 or bgr8")
    if msg.height < 1 or msg.width < 1 or msg.step < 3 * msg.width or msg.step % 3:
        raise ValueError(f"inconsistent size {msg.width}x{msg.height}, step {msg.step}")
    if len(msg.data) != msg.step * msg.height:
        raise ValueError(f"{len(msg.data)} bytes for {msg.height} rows of {msg.step}: truncated or padded")
    img = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step // 3, 3)[:, : msg.width]
    return img[..., ::-1].copy() if msg.encoding == "bgr8" else img.copy()


def arm_state_msg(q7: np.ndarray, stamp: Time) -> JointState:
    """7 values ``[j1..j6 rad, gripper m]`` as a piper_ros-style JointState."""
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(JOINT_NAMES)
    msg.position = [float(v) for v in q7]
    return msg


def arm_array(msg: JointState) -> np.ndarray:
    """A JointState (any order, by name) -> ``[j1..j6 rad, gripper m]``; ValueError when a joint is
    missing or a position is not finite."""
    index = {n: i for i, n in enumerate(msg.name)}
    missing = [n for n in JOINT_NAMES if n not in index]
    if missing or len(msg.position) < len(msg.name):
        raise ValueError(f"joint state lacks {missing or 'positions'}")
    q = np.array([msg.position[index[n]] for n in JOINT_NAMES], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        raise ValueError(f"non-finite positions {q.tolist()}")
    return q


def split_action(a14: np.ndarray) -> dict[str, np.ndarray]:
    """Policy action (gripper normalised) -> per-arm command (gripper in m)."""
    out = {}
    for k, arm in enumerate(ARMS):
        a = np.asarray(a14[k * DOF_PER_ARM : (k + 1) * DOF_PER_ARM], dtype=np.float64).copy()
        a[6] = units.gripper_normalised_to_m(a[6])
        out[arm] = a
    return out


def join_state(per_arm: dict[str, np.ndarray]) -> np.ndarray:
    """Per-arm states (gripper in m) -> the 14-dim proprio (gripper normalised)."""
    parts = []
    for arm in ARMS:
        a = np.asarray(per_arm[arm], dtype=np.float64).copy()
        a[6] = units.gripper_m_to_normalised(a[6])
        parts.append(a)
    return np.concatenate(parts)
