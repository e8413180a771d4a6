"""Camera intrinsics from chessboard views (OpenCV ``calibrateCamera``), with sanity gates.

Bad image sets are rejected with the reason before any fit: too few views with a detected
board, or poor coverage (the detected corners must spread over enough of the image, and the
board must be seen at more than one tilt, otherwise the focal length is not observable).
After the fit, an RMS reprojection error above ``max_rms_px`` is rejected too.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from pushcut.calibration.board import Board
from pushcut.calibration_files import CalibrationError, CameraCalibration

MIN_VIEWS = 8
MIN_COVERAGE = 0.35  # fraction of the image's cells (4x4 grid) that hold corners
MIN_TILT_SPREAD_DEG = 10.0


def coverage(corners: Sequence[np.ndarray], width: int, height: int, grid: int = 4) -> float:
    cells = set()
    for c in corners:
        for x, y in c:
            cells.add((min(int(x / width * grid), grid - 1), min(int(y / height * grid), grid - 1)))
    return len(cells) / grid**2


def calibrate_intrinsics(
    images: Sequence[np.ndarray],
    board: Board,
    camera: str,
    serial: str = "",
    min_views: int = MIN_VIEWS,
    max_rms_px: float = 1.0,
) -> tuple[CameraCalibration, dict]:
    """Fit K and distortion; returns the calibration and a report (views used, coverage...)."""
    if not images:
        raise CalibrationError("no images")
    height, width = images[0].shape[:2]
    if any(img.shape[:2] != (height, width) for img in images):
        raise CalibrationError("images differ in resolution; calibrate one resolution at a time")
    detected = [board.detect(img) for img in images]
    corners = [c for c in detected if c is not None]
    if len(corners) < min_views:
        raise CalibrationError(
            f"too few views: the board was found in {len(corners)} of {len(images)} images, need {min_views}"
        )
    cov = coverage(corners, width, height)
    if cov < MIN_COVERAGE:
        raise CalibrationError(
            f"poor coverage: corners cover {cov:.0%} of the image, need {MIN_COVERAGE:.0%}; "
            "move the board towards the edges and corners of the view"
        )
    obj = board.object_points()
    rms, K, dist, rvecs, _ = cv2.calibrateCamera([obj] * len(corners), [c.astype(np.float32) for c in corners],
                                                 (width, height), None, None)
    normals = [cv2.Rodrigues(r)[0][:, 2] for r in rvecs]
    tilts = [np.degrees(np.arccos(np.clip(abs(n[2]), 0, 1))) for n in normals]
    if max(tilts) - min(tilts) < MIN_TILT_SPREAD_DEG:
        raise CalibrationError(
            f"poor coverage: the board was seen at tilts spanning {max(tilts) - min(tilts):.1f} degrees, need "
            f"{MIN_TILT_SPREAD_DEG:.0f}; tilt the board between views"
        )
    if rms > max_rms_px:
        raise CalibrationError(f"reprojection error {rms:.2f} px exceeds {max_rms_px} px; check the board and focus")
    cal = CameraCalibration(camera=camera, serial=serial, width=width, height=height, K=K.tolist(),
                            dist=dist.ravel().tolist(), rms_px=float(rms), views=len(corners))
    report = {"views": len(corners), "images": len(images), "rms_px": float(rms), "coverage": cov,
              "tilt_range_deg": [float(min(tilts)), float(max(tilts))]}
    return cal, report
