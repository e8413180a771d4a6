"""MJCF of the dual-arm AgileX Piper workcell, generated from the published kinematics.

Two 6-DoF Piper arms 0.6 m apart (body offsets and axes from the piper_ros URDF as carried by
MuJoCo Menagerie; joint limits from the piper_sdk parameter table) with primitive collision
geometry, a parallel gripper of two slides (0 .. 0.035 m each, 0.07 m total), a table whose top
is the plane z = 0, a D435-like head camera (fovy 37) and a wrist camera on each arm.
Task objects (bell, bowls) are added by the task modules through :class:`SceneObjects`.

Collision bits: 1 = everything solid; arm links use contype 2 / conaffinity 1 so that links of
the arms never collide with each other (the twin has no self-collision model) but do touch the
table and the objects; the finger pads are ordinary solids; bowl walls use contype 4 / conaffinity 1 so that walls of
two bowls never touch each other (they nest), while walls still touch table, grippers and bowl
bottoms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pushcut.spec import ARMS, HEAD_FOVY_DEG, JOINT_LIMITS

ARM_BASE_X = 0.3  # arms at x = -0.3 (left) and +0.3 (right): 0.6 m apart
ARM_BASE_Y = -0.38
FINGER_TRAVEL = 0.035  # per finger
TCP_OFFSET = 0.175  # along link6 z: between the finger pads
BOWL_BOTTOM_R = 0.028
BOWL_BOTTOM_HALF_H = 0.004
BOWL_WALL_START_R = 0.031
BOWL_WALL_LEN = 0.045
BOWL_WALL_TILT = math.radians(35)
BOWL_NEST_HEIGHT = 2 * BOWL_BOTTOM_HALF_H  # z offset of a nested bowl over the one below
BELL_TOP_Z = 0.034

# Kinematic chain: (body, pos in parent, quat wxyz in parent, joint limit index)
_CHAIN = (
    ("link1", (0, 0, 0.123), (0.707105, 0, 0, -0.707108)),
    ("link2", (0, 0, 0), (0.5, 0.5, -0.5, -0.5)),
    ("link3", (0.28358, 0.028726, 0), (0.998726, 0, 0, 0.0504536)),
    ("link4", (-0.24221, 0.068514, 0), (0.544767, -0.544769, -0.450809, 0.450808)),
    ("link5", (0, 0, 0), (0.707105, 0.707108, 0, 0)),
    ("link6", (0, 0.091, 0.0014165), (0, 0, -0.707105, -0.707108)),
)
# Primitive geometry of each link, in the link's own frame.
_LINK_GEOMS = {
    "link1": '<geom type="sphere" size="0.045" rgba="{grey}"/>',
    "link2": '<geom type="capsule" fromto="0 0 0 0.28358 0.028726 0" size="0.032" rgba="{grey}"/>',
    "link3": '<geom type="capsule" fromto="0 0 0 -0.24221 0.068514 0" size="0.028" rgba="{light}"/>',
    "link4": '<geom type="sphere" size="0.03" rgba="{grey}"/>',
    "link5": '<geom type="capsule" fromto="0 0 0 0 0.08 0.0014" size="0.028" rgba="{light}"/>',
    "link6": (
        '<geom type="cylinder" pos="0 0 0.05" size="0.03 0.045" rgba="{grey}"/>'
        '<geom type="box" pos="0 0 0.12" size="0.022 0.048 0.015" rgba="{dark}"/>'
    ),
}
_MASS = {"link1": 0.1, "link2": 0.29, "link3": 0.29, "link4": 0.13, "link5": 0.14, "link6": 0.5}
_KP = (300, 300, 300, 100, 100, 60)
_KV = (25, 25, 20, 6, 6, 4)


def look_at_quat(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """wxyz quaternion of a MuJoCo camera at ``eye`` looking at ``target`` (camera looks along -z)."""
    eye, target, up = (np.asarray(v, dtype=float) for v in (eye, target, up))
    z = eye - target
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-8:
        x = np.cross((0.0, 1.0, 0.0), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return mat_to_quat(np.stack([x, y, z], axis=1))


def mat_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> wxyz quaternion."""
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(m, dtype=float).reshape(9))
    return q


@dataclass(frozen=True)
class HeadCamera:
    """Pose and lens of the head camera; a calibration file replaces them for sim-to-real.

    ``quat`` (wxyz, MuJoCo camera frame) overrides ``target``; ``intrinsics`` =
    (fx, fy, cx, cy, width, height) in OpenCV pixels overrides ``fovy``.
    """

    pos: tuple[float, float, float] = (0.0, -0.78, 0.72)
    target: tuple[float, float, float] = (0.0, -0.12, 0.0)
    fovy: float = HEAD_FOVY_DEG
    quat: tuple[float, float, float, float] | None = None
    intrinsics: tuple[float, float, float, float, int, int] | None = None

    @classmethod
    def from_calibration(cls, cal) -> HeadCamera:
        """From a ``pushcut.calibration_files.CameraCalibration`` with world-frame extrinsics."""
        if cal.T_base_camera is None or cal.frame != "world":
            raise ValueError(f"calibration of {cal.camera!r} has no world-frame extrinsics (run hand-eye first)")
        T = np.asarray(cal.T_base_camera, dtype=float)
        R_mj = T[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenCV camera frame -> MuJoCo's
        K = np.asarray(cal.K, dtype=float)
        return cls(pos=tuple(T[:3, 3]), quat=tuple(mat_to_quat(R_mj)), fovy=cal.fovy_deg,
                   intrinsics=(K[0, 0], K[1, 1], K[0, 2], K[1, 2], cal.width, cal.height))

    def xml(self) -> str:
        quat = self.quat if self.quat is not None else look_at_quat(np.array(self.pos), np.array(self.target))
        lens = f'fovy="{self.fovy}"'
        if self.intrinsics is not None:
            fx, fy, cx, cy, w, h = self.intrinsics
            # MuJoCo: principal point as an offset from the image centre, ((w-1)/2, (h-1)/2) in OpenCV
            lens = (f'resolution="{w} {h}" focalpixel="{fx} {fy}"'
                    f' principalpixel="{(w - 1) / 2 - cx} {(h - 1) / 2 - cy}"'
                    f' sensorsize="{w * 1e-5} {h * 1e-5}"')
        return f'<camera name="head" pos="{_fmt(self.pos)}" quat="{_fmt(quat)}" {lens}/>'


@dataclass
class SceneObjects:
    """XML fragments that task modules add to the world and to the equality section."""

    bodies: list[str] = field(default_factory=list)
    equalities: list[str] = field(default_factory=list)


def distractor_bodies(n: int) -> list[str]:
    """``n`` visual-only bodies (no collisions, no mass to speak of) below the floor, where nothing
    sees them until domain randomisation places some on the table (``sim.twin.randomize``)."""
    return [f'<body name="distractor_{i}" pos="0 0 -1"><geom type="box" size="0.02 0.02 0.02" '
            f'contype="0" conaffinity="0" mass="0.001" rgba="0.5 0.5 0.5 1"/></body>' for i in range(n)]


def _fmt(v) -> str:
    return " ".join(f"{x:.6g}" for x in v)


def _arm_xml(arm: str) -> str:
    colors = {"grey": "0.55 0.55 0.58 1", "light": "0.85 0.85 0.87 1", "dark": "0.12 0.12 0.12 1"}
    x = -ARM_BASE_X if arm == "left" else ARM_BASE_X
    # Rotate the base so that the arm's zero-yaw direction faces +y (towards the table).
    xml = [
        f'<body name="{arm}_base" pos="{x} {ARM_BASE_Y} 0" quat="0.707107 0 0 0.707107" childclass="link">',
        f'<geom type="cylinder" pos="0 0 0.05" size="0.05 0.05" rgba="{colors["dark"]}"/>',
    ]
    for i, (name, pos, quat) in enumerate(_CHAIN):
        lo, hi = JOINT_LIMITS[i]
        xml.append(
            f'<body name="{arm}_{name}" pos="{_fmt(pos)}" quat="{_fmt(quat)}" gravcomp="1">'
            f'<inertial pos="0 0 0" mass="{_MASS[name]}" diaginertia="0.002 0.002 0.002"/>'
            f'<joint name="{arm}_joint{i + 1}" axis="0 0 1" range="{lo} {hi}" armature="0.05"/>'
            + _LINK_GEOMS[name].format(**colors)
        )
    # Gripper: two fingers sliding along link6's y axis; pads from z=0.135 to z=0.185.
    for side, sign in (("a", 1), ("b", -1)):
        xml.append(
            f'<body name="{arm}_finger_{side}" pos="0 0 0.135" gravcomp="1" childclass="main">'
            f'<inertial pos="0 0 0.025" mass="0.03" diaginertia="1e-5 1e-5 1e-5"/>'
            f'<joint name="{arm}_finger_{side}" type="slide" axis="0 {sign} 0" range="0 {FINGER_TRAVEL}"'
            f' armature="0.01" damping="2"/>'
            f'<geom name="{arm}_pad_{side}" type="box" pos="0 {sign * 0.006} 0.025" size="0.012 0.006 0.025"'
            f' friction="1.5 0.01 0.001" rgba="{colors["dark"]}"/>'
            "</body>"
        )
    wrist_eye = np.array([0.075, 0.0, 0.04])
    wrist_quat = look_at_quat(wrist_eye, np.array([0.0, 0.0, 0.2]), up=(1.0, 0.0, 0.0))
    xml.append(
        f'<site name="{arm}_tcp" pos="0 0 {TCP_OFFSET}" size="0.006" rgba="1 0 0 0.0"/>'
        f'<camera name="{arm}_wrist" pos="{_fmt(wrist_eye)}" quat="{_fmt(wrist_quat)}" fovy="60"/>'
    )
    xml.append("</body>" * len(_CHAIN))
    xml.append("</body>")
    return "".join(xml)


def _actuators_xml(arm: str) -> str:
    out = []
    for i in range(6):
        lo, hi = JOINT_LIMITS[i]
        out.append(
            f'<position name="{arm}_joint{i + 1}" joint="{arm}_joint{i + 1}" kp="{_KP[i]}" kv="{_KV[i]}"'
            f' ctrlrange="{lo} {hi}"/>'
        )
    for side in ("a", "b"):
        out.append(
            f'<position name="{arm}_finger_{side}" joint="{arm}_finger_{side}" kp="400" kv="10"'
            f' ctrlrange="0 {FINGER_TRAVEL}" forcerange="-20 20"/>'
        )
    return "".join(out)


def bell_xml(pos: tuple[float, float]) -> str:
    """A desk bell: a wide base and a button whose top is at ``BELL_TOP_Z``."""
    return (
        f'<body name="bell" pos="{pos[0]:.5f} {pos[1]:.5f} 0">'
        '<geom name="bell_base" type="cylinder" pos="0 0 0.012" size="0.035 0.012" rgba="0.75 0.6 0.15 1"/>'
        '<geom name="bell_button" type="cylinder" pos="0 0 0.029" size="0.012 0.005" rgba="0.2 0.2 0.22 1"/>'
        f'<site name="bell_top" pos="0 0 {BELL_TOP_Z}" size="0.005" rgba="0 0 0 0"/>'
        "</body>"
    )


def bowl_xml(name: str, pos: tuple[float, float], rgba: str, n_walls: int = 12) -> str:
    """A nesting bowl: a bottom disc and a ring of outward-tilted wall plates."""
    geoms = [
        (f'<geom name="{name}_bottom" type="cylinder" pos="0 0 {BOWL_BOTTOM_HALF_H}"'
         f' size="{BOWL_BOTTOM_R} {BOWL_BOTTOM_HALF_H}" rgba="{rgba}" mass="0.04"/>')
    ]
    width = 2 * math.pi * (BOWL_WALL_START_R + 0.5 * BOWL_WALL_LEN * math.sin(BOWL_WALL_TILT)) / n_walls
    for k in range(n_walls):
        th = 2 * math.pi * k / n_walls
        r = BOWL_WALL_START_R + 0.5 * BOWL_WALL_LEN * math.sin(BOWL_WALL_TILT)
        z = 0.5 * BOWL_WALL_LEN * math.cos(BOWL_WALL_TILT)
        # wall plate: local x radial (thickness), y tangential (width), z along the wall
        rot = np.array(
            [[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]]
        ) @ np.array(
            [
                [math.cos(BOWL_WALL_TILT), 0, math.sin(BOWL_WALL_TILT)],
                [0, 1, 0],
                [-math.sin(BOWL_WALL_TILT), 0, math.cos(BOWL_WALL_TILT)],
            ]
        )
        geoms.append(
            f'<geom name="{name}_wall{k}" type="box" pos="{r * math.cos(th):.5f} {r * math.sin(th):.5f} {z:.5f}"'
            f' quat="{_fmt(mat_to_quat(rot))}" size="0.0015 {width / 2 + 0.001:.5f} {BOWL_WALL_LEN / 2}"'
            f' contype="4" conaffinity="1" rgba="{rgba}" mass="0.005"/>'
        )
    return (
        f'<body name="{name}" pos="{pos[0]:.5f} {pos[1]:.5f} 0.0005">'
        f'<freejoint name="{name}_free"/>' + "".join(geoms) + "</body>"
    )


def grasp_weld_xml(arm: str, body: str) -> str:
    """An inactive weld between an arm's link6 and an object; activated on a closed grasp."""
    return f'<weld name="grasp_{arm}_{body}" body1="{arm}_link6" body2="{body}" active="false" solref="0.01 1"/>'


def build_mjcf(objects: SceneObjects, head: HeadCamera = HeadCamera(), offscreen=(320, 240)) -> str:
    """The complete MJCF string of the workcell with the given task objects."""
    arms = "".join(_arm_xml(a) for a in ARMS)
    actuators = "".join(_actuators_xml(a) for a in ARMS)
    couplings = "".join(
        f'<joint joint1="{a}_finger_a" joint2="{a}_finger_b" polycoef="0 1 0 0 0"/>' for a in ARMS
    )
    return f"""
<mujoco model="pushcut_piper_twin">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.004" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{max(offscreen[0], 640)}" offheight="{max(offscreen[1], 480)}"/>
    <quality shadowsize="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <joint damping="0.5"/>
    <geom contype="1" conaffinity="1" friction="1 0.005 0.0001" solref="0.004 1"/>
    <default class="link"><geom contype="2" conaffinity="1"/></default>
  </default>
  <asset>
    <texture name="grid" type="2d" builtin="checker" width="64" height="64"
             rgb1="0.62 0.55 0.45" rgb2="0.58 0.51 0.42"/>
    <!-- 13 checker squares across (6.5 repeats of 2): the table looks the same mirrored about x = 0 -->
    <material name="table" texture="grid" texrepeat="6.5 4" reflectance="0"/>
  </asset>
  <worldbody>
    <light name="key" pos="0 -0.2 1.6" dir="0 0.1 -1" diffuse="0.7 0.7 0.7" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="2 2 0.1" rgba="0.3 0.3 0.32 1"/>
    <geom name="table" type="box" pos="0 -0.15 -0.025" size="0.7 0.45 0.025" material="table"/>
    {head.xml()}
    {arms}
    {"".join(objects.bodies)}
  </worldbody>
  <equality>{couplings}{"".join(objects.equalities)}</equality>
  <actuator>{actuators}</actuator>
</mujoco>
"""
