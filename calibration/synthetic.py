"""Calibration data rendered by the twin with known camera parameters and board poses.

Used by the tests (ground truth for intrinsics and hand-eye) and by ``pushcut-calibrate
mode=synthetic`` to rehearse the procedure. MuJoCo cameras have no lens distortion and their
principal point is the image centre, ((w-1)/2, (h-1)/2) in OpenCV's pixel coordinates; the
OpenCV camera frame is MuJoCo's with y and z flipped.
"""

from __future__ import annotations

import mujoco
import numpy as np

from pushcut.calibration.board import Board
from pushcut.sim.twin.kinematics import ArmKinematics
from pushcut.sim.twin.model import SceneObjects, build_mjcf

MJ_TO_CV = np.diag([1.0, -1.0, -1.0])


def pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def intrinsics_of(model: mujoco.MjModel, camera: str, width: int, height: int) -> np.ndarray:
    fovy = np.radians(model.cam_fovy[model.camera(camera).id])
    f = 0.5 * height / np.tan(0.5 * fovy)
    # OpenGL samples pixel centres at +0.5: the image centre is (w-1)/2 in OpenCV's coordinates
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


def camera_pose(data: mujoco.MjData, model: mujoco.MjModel, camera: str) -> np.ndarray:
    """T_world_camera in the OpenCV convention."""
    cid = model.camera(camera).id
    return pose(data.cam_xmat[cid].reshape(3, 3) @ MJ_TO_CV, data.cam_xpos[cid].copy())


class CalibrationScene:
    """The twin's workcell plus a mocap chessboard, rendered at ``width x height``."""

    def __init__(self, board: Board | None = None, width: int = 640, height: int = 480):
        board = board if board is not None else Board()
        self.board = board
        asset, body = board.mjcf()
        xml = build_mjcf(SceneObjects(bodies=[body]), offscreen=(width, height))
        xml = xml.replace("<asset>", "<asset>" + asset, 1)
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.width, self.height = width, height
        self.renderer = mujoco.Renderer(self.model, height=height, width=width)
        self.mocap = self.model.body("board").mocapid[0]
        self.kin = {a: ArmKinematics(self.model, a) for a in ("left", "right")}

    def set_board(self, T_world_board: np.ndarray) -> None:
        q = np.zeros(4)
        mujoco.mju_mat2Quat(q, np.ascontiguousarray(T_world_board[:3, :3]).reshape(9))
        self.data.mocap_pos[self.mocap] = T_world_board[:3, 3]
        self.data.mocap_quat[self.mocap] = q

    def set_arm(self, arm: str, q6: np.ndarray) -> None:
        self.data.qpos[self.kin[arm].qadr] = q6

    def render(self, camera: str) -> np.ndarray:
        mujoco.mj_forward(self.model, self.data)
        self.renderer.update_scene(self.data, camera=camera)
        return self.renderer.render().copy()

    def K(self, camera: str) -> np.ndarray:
        return intrinsics_of(self.model, camera, self.width, self.height)

    def T_world_camera(self, camera: str) -> np.ndarray:
        mujoco.mj_forward(self.model, self.data)
        return camera_pose(self.data, self.model, camera)

    def T_world_gripper(self, arm: str) -> np.ndarray:
        """The gripper (tool) frame from forward kinematics of the current joint angles."""
        p, R = self.kin[arm].fk(self.data.qpos[self.kin[arm].qadr])
        return pose(R, p)

    def close(self) -> None:
        self.renderer.close()


def random_board_poses_in_front(T_world_camera: np.ndarray, n: int, rng: np.random.Generator,
                                distance=(0.35, 0.6), tilt_deg: float = 35.0, spread: float = 0.08,
                                up: float = 0.0) -> list[np.ndarray]:
    """Board poses facing the camera at varied distance, offset and tilt (for intrinsics).

    ``up`` raises the board in the view (m per m of distance), e.g. above a wrist camera's fingers.
    """
    from scipy.spatial.transform import Rotation

    poses = []
    for _ in range(n):
        d = rng.uniform(*distance)
        offset = np.array([rng.uniform(-spread, spread), rng.uniform(-spread, spread) * 0.75 - up * d, d])
        tilt = Rotation.from_euler("xyz", [rng.uniform(-tilt_deg, tilt_deg), rng.uniform(-tilt_deg, tilt_deg),
                                           rng.uniform(-20, 20)], degrees=True).as_matrix()
        # board z towards the camera: rotate 180 degrees about x, then tilt
        R_cam_board = np.diag([1.0, -1.0, -1.0]) @ tilt
        poses.append(T_world_camera @ pose(R_cam_board, offset))
    return poses
