"""Calibration on synthetic images rendered by the twin, with known cameras and board poses."""

import itertools
import json
import time

import cv2
import numpy as np
import pytest

from pushcut.calibration import cli
from pushcut.calibration.board import Board
from pushcut.calibration.handeye import _inv, calibrate_hand_eye, pose_error
from pushcut.calibration.intrinsics import calibrate_intrinsics
from pushcut.calibration.synthetic import CalibrationScene, pose, random_board_poses_in_front
from pushcut.calibration_files import (
    CalibrationError,
    CameraCalibration,
    load_arm,
    load_intrinsics,
    save_intrinsics,
)

BOARD = Board()


@pytest.fixture(scope="module")
def scene():
    s = CalibrationScene(BOARD, 640, 480)
    yield s
    s.close()


def _views(scene, camera, n, seed=0, **kw):
    rng = np.random.default_rng(seed)
    out = []
    for T in random_board_poses_in_front(scene.T_world_camera(camera), n, rng, **kw):
        scene.set_board(T)
        out.append(scene.render(camera))
    return out


def test_intrinsics_recovered_within_one_percent(scene):
    cal, report = calibrate_intrinsics(_views(scene, "head", 16), BOARD, "head", serial="D435-TEST")
    K_true = scene.K("head")
    K = np.array(cal.K)
    assert abs(K[0, 0] / K_true[0, 0] - 1) < 0.01 and abs(K[1, 1] / K_true[1, 1] - 1) < 0.01
    assert abs(K[0, 2] - K_true[0, 2]) < 3 and abs(K[1, 2] - K_true[1, 2]) < 3
    assert cal.rms_px < 0.5 and report["views"] >= 8
    assert cal.fovy_deg == pytest.approx(37.0, abs=0.4)


def test_degenerate_image_sets_are_rejected(scene):
    views = _views(scene, "head", 16)
    with pytest.raises(CalibrationError, match="too few views: the board was found in 3 of 3"):
        calibrate_intrinsics(views[:3], BOARD, "head")
    blank = [np.full((480, 640, 3), 127, np.uint8)] * 10
    with pytest.raises(CalibrationError, match="found in 0 of 10"):
        calibrate_intrinsics(blank, BOARD, "head")
    small = _views(scene, "head", 10, seed=1, distance=(0.7, 0.72), spread=0.0, tilt_deg=25)
    with pytest.raises(CalibrationError, match="poor coverage"):
        calibrate_intrinsics(small, BOARD, "head")
    flat = _views(scene, "head", 10, seed=2, tilt_deg=0.5, spread=0.05, distance=(0.45, 0.5))
    with pytest.raises(CalibrationError, match="poor coverage: the board was seen at tilts"):
        calibrate_intrinsics(flat, BOARD, "head")
    with pytest.raises(CalibrationError, match="differ in resolution"):
        calibrate_intrinsics([views[0], views[1][:240]], BOARD, "head")


@pytest.mark.parametrize("camera,arm", [("head", "left"), ("left_wrist", "left")])
def test_hand_eye_within_5mm_and_half_a_degree(tmp_path, camera, arm):
    cfg = cli.CalibrateConfig(mode="synthetic", camera=camera, arm=arm, dataset=str(tmp_path / "data"),
                              out_dir=str(tmp_path), synthetic_views=30)
    cli.run(cfg)
    cli.run(cli.CalibrateConfig(**{**cfg.__dict__, "mode": "intrinsics"}))
    cli.run(cli.CalibrateConfig(**{**cfg.__dict__, "mode": "handeye"}))
    cal = load_intrinsics(tmp_path / f"camera_{camera}.json")
    truth = json.loads((tmp_path / "data" / "ground_truth.json").read_text())
    T_world_camera = np.array(truth["T_world_camera"])
    if camera == "head":
        expected, frame = T_world_camera, "world"
    else:  # the camera in the gripper frame, at any arm pose
        s = CalibrationScene(BOARD, cal.width, cal.height)
        q = json.loads((tmp_path / "data" / "poses.json").read_text())["joints"]["000.png"]
        s.set_arm(arm, np.array(q))
        expected, frame = _inv(s.T_world_gripper(arm)) @ s.T_world_camera(camera), "gripper"
        s.close()
    dt, dr = pose_error(np.array(cal.T_base_camera), expected)
    assert cal.frame == frame
    assert dt < 0.005 and dr < 0.5, (dt, dr)


def test_degenerate_motion_is_rejected():
    Tb = [np.eye(4)] * 6
    rot_z = [pose(cv2.Rodrigues(np.array([0.0, 0.0, a]))[0], np.array([0.1 * a, 0, 0])) for a in np.linspace(0, 1, 6)]
    with pytest.raises(CalibrationError, match="degenerate motion"):
        calibrate_hand_eye(rot_z, Tb, eye_in_hand=True)
    with pytest.raises(CalibrationError, match="too few poses: 3"):
        calibrate_hand_eye(rot_z[:3], Tb[:3], eye_in_hand=True)


_buses = itertools.count()


def test_joint_and_gripper_zero_through_the_sdk_on_the_emulator(tmp_path):
    from pushcut.calibration.procedures import gripper_zero, joint_zero
    from pushcut.deploy.piper.driver import DriverConfig, PiperArm
    from pushcut.deploy.piper.emulator import PiperEmulator

    name = f"vcan_calib_{next(_buses)}"
    emu = PiperEmulator(name, initial=np.array([0.1, 0.6, -0.4, 0.2, -0.1, 0.3, 0.01])).start()
    miscalibration = np.array([0.05, -0.03, 0.02, 0.01, -0.04, 0.06])
    emu.zero_offset[:] = miscalibration  # the encoders' zeros are off
    arm = PiperArm(DriverConfig(can_port=name, bus="virtual"))
    try:
        arm.connect()
        arm.wait_for_feedback()
        marks = {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0, 6: 0.0}  # physical zero marks

        def settled(t, timeout=5.0):  # the arm has reported frames sent well after t (a loaded machine lags)
            end = time.time() + timeout
            while arm.feedback().stamp < t + 0.05 and time.time() < end:
                time.sleep(0.01)

        def operator(msg):  # the operator moves the released joint to its mark
            j = int(msg.split("joint ")[1].split()[0])
            t = time.time()
            emu.move_by_hand(j, marks[j])
            settled(t)

        cal = joint_zero(arm, "left", prompt=operator)
        settled(time.time())
        np.testing.assert_allclose(arm.feedback().q, 0.0, atol=2e-5)  # at the marks, the arm now reads zero
        # at its mark each joint read minus its miscalibration before zeroing: that is the offset found
        np.testing.assert_allclose(cal.joint_zero_offsets, -miscalibration, atol=2e-5)
        physical = iter([0.004, 0.070])  # fully closed the gripper read 4 mm; fully open 70 mm

        def gripper_operator(msg):
            t = time.time()
            emu.move_by_hand(gripper=next(physical))
            settled(t)

        cal = gripper_zero(arm, cal, prompt=gripper_operator)
        assert cal.gripper_range_m == pytest.approx([0.0, 0.066], abs=1e-5)
        from pushcut.calibration_files import save_arm

        save_arm(tmp_path / "arm_left.json", cal)
        assert load_arm(tmp_path / "arm_left.json").gripper_range_m == cal.gripper_range_m
    finally:
        arm.close()
        emu.stop()


def _calibrated_head(path, K, T_world_camera, w, h):
    cal = CameraCalibration(camera="head", serial="x", width=w, height=h, K=K.tolist(), dist=[0.0] * 5,
                            rms_px=0.1, views=10, T_base_camera=T_world_camera.tolist(), frame="world")
    return save_intrinsics(path, cal)


def test_twin_renders_through_the_calibrated_camera(tmp_path):
    from pushcut.sim.config import EnvConfig
    from pushcut.sim.twin.env import TwinEnv
    from pushcut.sim.twin.model import look_at_quat

    w, h = 320, 240
    K = np.array([[300.0, 0, 170.0], [0, 310.0, 110.0], [0, 0, 1]])  # fx != fy, off-centre principal point
    eye = np.array([0.1, -0.7, 0.6])
    import mujoco

    R_mj = np.zeros(9)
    mujoco.mju_quat2Mat(R_mj, look_at_quat(eye, np.array([0.0, -0.1, 0.0])))
    T = pose(R_mj.reshape(3, 3) @ np.diag([1.0, -1, -1]), eye)
    path = _calibrated_head(tmp_path / "camera_head.json", K, T, w, h)
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(h, w), head_calibration=str(path)))
    obs = env.reset(seed=3)
    img = obs.images["head"].astype(int)
    mask = (img[..., 0] > 140) & (img[..., 1] > 100) & (img[..., 2] < 90) & (img[..., 0] - img[..., 2] > 80)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 20, "the bell is not in view"
    bell = np.array([*env.layout["bell"], 0.015])
    p = np.linalg.inv(T) @ np.append(bell, 1.0)
    u, v = K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2]
    assert abs(xs.mean() - u) < 3 and abs(ys.mean() - v) < 3, ((xs.mean(), ys.mean()), (u, v))
    env.close()
    with pytest.raises(ValueError, match="no world-frame extrinsics"):
        cal = load_intrinsics(path)
        cal.T_base_camera = None
        save_intrinsics(tmp_path / "bad.json", cal)
        TwinEnv(EnvConfig(task="click_bell", head_calibration=str(tmp_path / "bad.json")))


def test_the_hand_eye_residual_sets_the_twins_camera_pose_noise(tmp_path):
    """A randomised twin on a calibrated head camera jitters its pose by no less than the hand-eye
    residual (4 mm, 0.8 deg here over the configured 1 mm, 0.5 deg); a smaller residual leaves the
    configured ranges; the randomisation's lens jitter moves a calibrated camera's focal lengths."""
    from dataclasses import replace

    from pushcut.sim.config import EnvConfig, RandomizationConfig
    from pushcut.sim.twin.env import TwinEnv

    K = np.array([[300.0, 0, 160.0], [0, 300.0, 120.0], [0, 0, 1]])
    T = pose(np.diag([1.0, -1, -1]), np.array([0.0, -0.1, 0.9]))
    path = _calibrated_head(tmp_path / "camera_head.json", K, T, 320, 240)
    cal = load_intrinsics(path)
    rough = save_intrinsics(tmp_path / "rough.json", replace(cal, extrinsics_error={"residual_mm": 4.0,
                                                                                    "residual_deg": 0.8}))
    fine = save_intrinsics(tmp_path / "fine.json", replace(cal, extrinsics_error={"residual_mm": 0.2,
                                                                                  "residual_deg": 0.1}))
    dr = RandomizationConfig(enabled=True, camera_pos=0.001, camera_rot_deg=0.5, fov_deg=2.0)
    rough_env = TwinEnv(EnvConfig(task="click_bell", image_size=(24, 32), head_calibration=str(rough),
                                  randomization=dr))
    fine_env = TwinEnv(EnvConfig(task="click_bell", image_size=(24, 32), head_calibration=str(fine),
                                 randomization=dr))
    assert (rough_env.randomizer.cfg.camera_pos, rough_env.randomizer.cfg.camera_rot_deg) == (0.004, 0.8)
    assert (fine_env.randomizer.cfg.camera_pos, fine_env.randomizer.cfg.camera_rot_deg) == (0.001, 0.5)
    head = rough_env.model.camera("head").id
    focal = rough_env.model.cam_intrinsic[head, :2].copy()
    rough_env.reset(0)
    assert not np.allclose(rough_env.model.cam_intrinsic[head, :2], focal)
    for e in (rough_env, fine_env):
        e.close()


def test_camera_node_undistorts_with_a_calibration_file(tmp_path):
    cal = CameraCalibration(camera="head", serial="x", width=80, height=60,
                            K=[[60.0, 0, 39.5], [0, 60.0, 29.5], [0, 0, 1]], dist=[-0.4, 0.15, 0, 0, 0],
                            rms_px=0.2, views=10)
    path = save_intrinsics(tmp_path / "camera_head.json", cal)
    maps = load_intrinsics(path).undistort_maps((80, 60))
    img = np.zeros((60, 80, 3), np.uint8)
    img[::6] = 255  # horizontal lines bend under undistortion
    out = cv2.remap(img, *maps, interpolation=cv2.INTER_LINEAR)
    assert out.shape == img.shape and np.abs(out.astype(int) - img).mean() > 5
    with pytest.raises(CalibrationError, match="holds a 'camera' calibration, expected 'arm'"):
        load_arm(path)
