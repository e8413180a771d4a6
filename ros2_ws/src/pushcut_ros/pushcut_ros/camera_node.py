"""camera_node: an OpenCV capture (device index or file/stream path) published as sensor_msgs/Image.

One node per camera (head, left_wrist, right_wrist). Frames are stamped at capture; with a
calibration file (``pushcut-calibrate`` output) they are undistorted with its intrinsics. A lost
camera is logged once, publishes nothing, and is reopened every ``reopen_s``.
"""

from __future__ import annotations

import cv2
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from pushcut.calibration_files import load_intrinsics

from .conversions import image_msg
from .spin import spin_main
from .topics import camera_topic


def camera_frame(frame: np.ndarray, size: tuple[int, int], undistort=None) -> np.ndarray:
    """An OpenCV capture's BGR frame -> the published RGB image: resized to ``size`` (width, height)
    by area averaging where the camera delivers another, undistorted with ``undistort`` (the maps of
    the camera's calibration) when given."""
    if frame.shape[1::-1] != tuple(size):
        frame = cv2.resize(frame, tuple(size), interpolation=cv2.INTER_AREA)
    if undistort is not None:
        frame = cv2.remap(frame, *undistort, interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class CameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__("camera", **kwargs)
        self.declare_parameter("camera_name", "head")
        self.declare_parameter("device", "0")  # an index ("0") or a path / URL
        self.declare_parameter("width", 320)
        self.declare_parameter("height", 240)
        self.declare_parameter("fps", 30.0)
        self.declare_parameter("exposure", -1.0)  # -1: automatic
        self.declare_parameter("loop", False)  # rewind file sources at their end
        self.declare_parameter("calibration_file", "")
        self.declare_parameter("reopen_s", 1.0)
        g = lambda n: self.get_parameter(n).value
        self.name, self.device = g("camera_name"), g("device")
        self.size = (g("width"), g("height"))
        self.exposure, self.loop, self.fps = g("exposure"), g("loop"), g("fps")
        self.undistort = None
        if g("calibration_file"):
            cal = load_intrinsics(g("calibration_file"))
            self.undistort = cal.undistort_maps(self.size)
            self.get_logger().info(f"undistorting with {g('calibration_file')} (serial {cal.serial})")
        self.pub = self.create_publisher(Image, camera_topic(self.name), 5)
        self.cap = None
        self.frames = 0
        self.lost = False
        self._open()
        self.create_timer(1.0 / self.fps, self._grab)
        self.create_timer(g("reopen_s"), self._reopen_if_lost)

    def _open(self) -> None:
        source = int(self.device) if str(self.device).isdigit() else self.device
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            self._lose(f"cannot open camera {self.device!r}")
            return
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        if self.exposure >= 0:
            cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1)
            cap.set(cv2.CAP_PROP_EXPOSURE, self.exposure)
        self.cap = cap
        if self.lost:
            self.get_logger().info(f"camera {self.name} is back")
        self.lost = False

    def _lose(self, why: str) -> None:
        if not self.lost:
            self.get_logger().error(f"camera {self.name}: {why}; publishing nothing until it is back")
        self.lost = True
        if self.cap is not None:
            self.cap.release()
        self.cap = None

    def _reopen_if_lost(self) -> None:
        if self.lost:
            self._open()

    def _grab(self) -> None:
        if self.cap is None:
            return
        ok, frame = self.cap.read()
        if not ok and self.loop:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
        if not ok:
            self._lose("no frame")
            return
        stamp = self.get_clock().now().to_msg()
        self.pub.publish(image_msg(camera_frame(frame, self.size, self.undistort), stamp, self.name))
        self.frames += 1

    def destroy_node(self) -> None:
        if self.cap is not None:
            self.cap.release()
        super().destroy_node()


def main(args=None) -> None:
    spin_main(CameraNode, args)


if __name__ == "__main__":
    main()
