"""The chessboard target: its geometry, corner detection, and rendering it in the twin.

A board of ``cols x rows`` squares has ``(cols-1) x (rows-1)`` inner corners, the points OpenCV
finds. ``object_points`` are those corners in the board frame (z = 0, metres), in OpenCV's
detection order. The twin renders the board as a mocap body (a checker-textured plate on a
white margin), so its pose is exact ground truth for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Board:
    cols: int = 8  # squares
    rows: int = 7
    square: float = 0.03  # m

    @property
    def pattern(self) -> tuple[int, int]:
        return self.cols - 1, self.rows - 1

    def object_points(self) -> np.ndarray:
        """(N, 3) float32 inner corners in the board frame, in :meth:`detect`'s order.

        Rows run along -y: seen from the front (board z towards the camera), OpenCV reports
        corners left to right, top to bottom, and the board's y axis points up in the image.
        """
        nx, ny = self.pattern
        grid = np.zeros((ny, nx, 3), np.float32)
        grid[..., 0] = (np.arange(nx) - (nx - 1) / 2) * self.square
        grid[..., 1] = -(np.arange(ny)[:, None] - (ny - 1) / 2) * self.square
        return grid.reshape(-1, 3)

    def detect(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """Sub-pixel inner corners (N, 2) in a canonical order, or None when not found.

        OpenCV may report a board in either of two orders (180 degrees apart). The square
        beyond the first corner is black in the canonical order (a board of even x odd squares
        has two white and two black corner squares, swapped by that rotation), so a white one
        means the order is reversed.
        """
        gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        ok, corners = cv2.findChessboardCorners(gray, self.pattern, flags=cv2.CALIB_CB_ADAPTIVE_THRESH)
        if not ok:
            return None
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
        corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), crit).reshape(-1, 2)
        nx = self.pattern[0]
        outer = corners[0] - 0.5 * (corners[nx + 1] - corners[0])  # centre of the corner square
        x, y = np.clip(np.round(outer).astype(int), 0, [gray.shape[1] - 1, gray.shape[0] - 1])
        if gray[y, x] >= 128:
            corners = corners[::-1].copy()
        return corners

    def mjcf(self, name: str = "board") -> tuple[str, str]:
        """(asset XML, body XML) of the board as a mocap body; the board frame is the centre of
        its printed face (z = 0 on the surface the camera sees)."""
        w, h = self.cols * self.square / 2, self.rows * self.square / 2
        margin = self.square
        asset = (
            f'<texture name="{name}_tex" type="2d" builtin="checker" width="256" height="256"'
            ' rgb1="0 0 0" rgb2="1 1 1"/>'
            f'<material name="{name}_mat" texture="{name}_tex" texrepeat="{self.cols / 2} {self.rows / 2}"'
            ' texuniform="false" reflectance="0" specular="0" shininess="0"/>'
        )
        body = (
            f'<body name="{name}" mocap="true" pos="0 0 -5">'
            f'<geom type="box" size="{w} {h} 0.001" pos="0 0 -0.001" material="{name}_mat"'
            ' contype="0" conaffinity="0"/>'
            f'<geom type="box" size="{w + margin} {h + margin} 0.001" pos="0 0 -0.003" rgba="1 1 1 1" contype="0"'
            ' conaffinity="0"/>'
            "</body>"
        )
        return asset, body
