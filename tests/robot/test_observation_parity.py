"""The robot's path from a camera frame to the policy's input is the training pipeline's."""

import cv2
import numpy as np
from builtin_interfaces.msg import Time

from pushcut.policy.preprocess import preprocess_images
from pushcut.ros.camera_node import camera_frame
from pushcut.ros.conversions import image_array, image_msg
from pushcut.ros.policy_node import aspect_mismatch
from pushcut.sim.config import EnvConfig
from pushcut.sim.twin.env import TwinEnv


def _render(size_hw):
    env = TwinEnv(EnvConfig(task="stack_bowls_two", image_size=size_hw))
    img = env.reset(seed=3).images["head"]
    env.close()
    return img


def _robot_path(raw_bgr, camera_wh, policy_size):
    """Capture -> camera node -> sensor_msgs/Image over the wire -> policy node -> policy input."""
    msg = image_msg(camera_frame(raw_bgr, camera_wh), Time(), "head")
    return preprocess_images({"head": image_array(msg)}, ["head"], policy_size)


def test_a_frame_at_the_cameras_own_size_reaches_the_policy_bit_identical_to_training():
    """The twin rendering at the camera's own resolution (320x240, the head camera's): the same image
    as a BGR capture through the camera node, the ROS message and the policy's resize gives exactly
    the policy input that training computes from the rendered observation."""
    rgb = _render((240, 320))
    train = preprocess_images({"head": rgb}, ["head"], 64)
    robot = _robot_path(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), (320, 240), 64)
    np.testing.assert_array_equal(robot, train)
    assert aspect_mismatch((240, 320), (240, 320)) is None


def test_square_renders_do_not_match_a_4_3_camera_and_the_policy_node_says_so():
    """Every policy of record trains on square 64x64 renders of a camera whose frames are 4:3: the
    robot's frame squeezes a wider view into the same square. Measured: the policy inputs differ by
    more than 10 grey levels on average (of 255), where the path above agrees exactly."""
    square = preprocess_images({"head": _render((64, 64))}, ["head"], 64)
    wide = preprocess_images({"head": _render((240, 320))}, ["head"], 64)
    assert np.abs(square - wide).mean() * 127.5 > 10
    note = aspect_mismatch((240, 320), (64, 64))
    assert note and "looks wider" in note and "env.image_size=[240,320]" in note
