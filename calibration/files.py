"""Versioned calibration files (JSON), per camera serial and per arm; numpy + OpenCV only.

``camera_<name>.json``: intrinsics (K, distortion, resolution, reprojection error) and, when
known, the extrinsics ``T_base_camera`` (4x4, camera pose in the robot's world frame for the
head camera, in the gripper frame for wrist cameras). ``arm_<name>.json``: joint zero offsets
and gripper range. The camera node undistorts with them; the twin places and shapes its
cameras from them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": CALIB_FORMAT, "version": CALIB_VERSION, "kind": kind, **data}, indent=2))
    tmp.replace(path)
    return path


def _read(path: str | Path, kind: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file {path} does not exist")
    d = json.loads(path.read_text())
    if d.get("format") != CALIB_FORMAT or d.get("version") != CALIB_VERSION:
        raise CalibrationError(f"{path}: not a {CALIB_FORMAT} v{CALIB_VERSION} file")
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
