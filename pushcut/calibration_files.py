"""Versioned calibration files (JSON), per camera serial and per arm; numpy + OpenCV only.

``camera_<name>.json``: intrinsics (K, distortion, resolution, reprojection error) and, when
known, the extrinsics ``T_base_camera`` (4x4, camera pose in the robot's world frame for the
head camera, in the gripper frame for wrist cameras). ``arm_<name>.json``: joint zero offsets
and gripper range. The camera node undistorts with them; the twin places and shapes its
cameras from them.

Part of the ground floor: written by ``pushcut-calibrate`` (``pushcut.calibration``), read by the
twin (``pushcut.sim``) and the camera node, so it imports none of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pushcut.artefacts import read_versioned, write_json_atomic

CALIB_FORMAT = "pushcut-calibration"
CALIB_VERSION = 1


class CalibrationError(ValueError):
    pass


@dataclass
class CameraCalibration:
    camera: str
    serial: str
    width: int
    height: int
    K: list[list[float]]
    dist: list[float]
    rms_px: float
    views: int
    T_base_camera: list[list[float]] | None = None
    frame: str = "world"  # "world" (head camera, eye-to-hand) or "gripper" (wrist, eye-in-hand)
    extrinsics_error: dict = field(default_factory=dict)

    @property
    def fovy_deg(self) -> float:
        return float(np.degrees(2 * np.arctan(self.height / (2 * self.K[1][1]))))

    def undistort_maps(self, size: tuple[int, int]):
        """cv2.remap maps for frames of ``size`` (w, h), the intrinsics scaled if needed."""
        import cv2

        K = np.array(self.K, dtype=np.float64)
        sx, sy = size[0] / self.width, size[1] / self.height
        K[0] *= sx
        K[1] *= sy
        return cv2.initUndistortRectifyMap(K, np.array(self.dist), None, K, size, cv2.CV_32FC1)


@dataclass
class ArmCalibration:
    arm: str
    can_port: str
    joint_zero_offsets: list[float]  # rad added to raw readings before this calibration
    gripper_range_m: list[float]


def _write(path: Path, kind: str, data: dict) -> Path:
    return write_json_atomic(path, {"format": CALIB_FORMAT, "version": CALIB_VERSION, "kind": kind, **data})


def _read(path: str | Path, kind: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file {path} does not exist")
    d = read_versioned(path, CALIB_FORMAT, (CALIB_VERSION,), CalibrationError, "calibration")
    if d.get("kind") != kind:
        raise CalibrationError(f"{path}: holds a {d.get('kind')!r} calibration, expected {kind!r}")
    return {k: v for k, v in d.items() if k not in ("format", "version", "kind")}


def save_intrinsics(path: str | Path, cal: CameraCalibration) -> Path:
    return _write(Path(path), "camera", asdict(cal))


def load_intrinsics(path: str | Path) -> CameraCalibration:
    return CameraCalibration(**_read(path, "camera"))


def save_arm(path: str | Path, cal: ArmCalibration) -> Path:
    return _write(Path(path), "arm", asdict(cal))


def load_arm(path: str | Path) -> ArmCalibration:
    return ArmCalibration(**_read(path, "arm"))
