"""Camera-to-robot extrinsics by hand-eye calibration (OpenCV ``calibrateHandEye``).

Eye-in-hand (wrist cameras): the board is fixed, the arm moves; the result is the camera pose in
the gripper frame. Eye-to-hand (head camera): the board rides in the gripper; passing the
inverted gripper poses (base in gripper) makes the same solver return the camera pose in the
robot base frame. Gripper poses come from forward kinematics of the Piper's joint readings;
board poses from ``solvePnP`` on each view. Degenerate motion (too few poses, rotations about
one axis only) is rejected before solving.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pushcut.calibration.board import Board
from pushcut.calibration_files import CalibrationError

MIN_POSES = 5
MIN_ROTATION_DEG = 10.0


def _inv(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R.T, -R.T @ t
    return out


def board_pose(image: np.ndarray, board: Board, K: np.ndarray, dist: np.ndarray) -> np.ndarray | None:
    """T_camera_board from one image, or None when the board is not found."""
    corners = board.detect(image)
    if corners is None:
        return None
    ok, rvec, tvec = cv2.solvePnP(board.object_points(), corners.astype(np.float32), K, dist,
                                  flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        return None
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = cv2.Rodrigues(rvec)[0], tvec.ravel()
    return T


def _check_motion(T_base_gripper: Sequence[np.ndarray]) -> None:
    if len(T_base_gripper) < MIN_POSES:
        raise CalibrationError(f"too few poses: {len(T_base_gripper)} with a detected board, need {MIN_POSES}")
    rel = [T_base_gripper[0][:3, :3].T @ T[:3, :3] for T in T_base_gripper[1:]]
    axes = []
    for R in rel:
        rvec = cv2.Rodrigues(R)[0].ravel()
        if np.degrees(np.linalg.norm(rvec)) > MIN_ROTATION_DEG:
            axes.append(rvec / np.linalg.norm(rvec))
    if len(axes) < 2 or np.linalg.matrix_rank(np.array(axes), tol=0.2) < 2:
        raise CalibrationError(
            f"degenerate motion: the gripper must rotate by more than {MIN_ROTATION_DEG:.0f} degrees about "
            "at least two different axes between poses"
        )


def calibrate_hand_eye(
    T_base_gripper: Sequence[np.ndarray],
    T_camera_board: Sequence[np.ndarray],
    eye_in_hand: bool,
) -> tuple[np.ndarray, dict]:
    """The camera pose: in the gripper frame (eye-in-hand) or in the base frame (eye-to-hand).

    Returns (T, report) where the report holds the consistency residuals over the views:
    how far the implied board (eye-in-hand) or gripper-to-board (eye-to-hand) pose wanders.
    Views inconsistent with the consensus (over 3x the median residual, and over 2 mm) are
    dropped and the solve repeated; the report lists them.
    """
    if len(T_base_gripper) != len(T_camera_board):
        raise CalibrationError("need one board pose per gripper pose")
    _check_motion(T_base_gripper)
    gripper = [T if eye_in_hand else _inv(T) for T in T_base_gripper]
    keep = list(range(len(gripper)))
    while True:
        X = _solve([gripper[i] for i in keep], [T_camera_board[i] for i in keep])
        residual = _residuals([gripper[i] for i in keep], [T_camera_board[i] for i in keep], X)
        limit = max(3.0 * float(np.median(residual)), 0.002)
        outliers = [i for i, r in zip(keep, residual) if r > limit]
        if not outliers or len(keep) - len(outliers) < MIN_POSES:
            break
        keep = [i for i in keep if i not in outliers]  # e.g. a board half hidden by a finger
    fixed = [gripper[i] @ X @ T_camera_board[i] for i in keep]
    pos = np.array([F[:3, 3] for F in fixed])
    rot = [np.degrees(np.linalg.norm(cv2.Rodrigues(fixed[0][:3, :3].T @ F[:3, :3])[0])) for F in fixed]
    report = {"poses": len(gripper), "used": len(keep), "rejected_views": sorted(set(range(len(gripper))) - set(keep)),
              "residual_mm": float(1000 * np.linalg.norm(pos - pos.mean(0), axis=1).max()),
              "residual_deg": float(max(rot))}
    return X, report


def _solve(gripper: Sequence[np.ndarray], boards: Sequence[np.ndarray]) -> np.ndarray:
    R, t = cv2.calibrateHandEye([T[:3, :3] for T in gripper], [T[:3, 3] for T in gripper],
                                [T[:3, :3] for T in boards], [T[:3, 3] for T in boards],
                                method=cv2.CALIB_HAND_EYE_PARK)
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = R, t.ravel()
    return X


def _residuals(gripper, boards, X) -> np.ndarray:
    """Per view: how far the implied fixed transform (gripper @ X @ board) is from the median."""
    fixed = [g @ X @ b for g, b in zip(gripper, boards)]
    pos = np.array([F[:3, 3] for F in fixed])
    return np.linalg.norm(pos - np.median(pos, axis=0), axis=1)


def pose_error(T_est: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """(translation error in m, rotation error in degrees)."""
    dR = T_est[:3, :3].T @ T_true[:3, :3]
    return float(np.linalg.norm(T_est[:3, 3] - T_true[:3, 3])), float(np.degrees(np.linalg.norm(cv2.Rodrigues(dR)[0])))
