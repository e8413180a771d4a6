"""``pushcut-calibrate``: the calibration procedures behind one Hydra entry point (see configs/calibrate.yaml)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pushcut.calibration.board import Board
from pushcut.calibration_files import CalibrationError, load_intrinsics, save_arm, save_intrinsics
from pushcut.configs import hydra_entry, ranges, require
from pushcut.spec import TWIN_CAMERAS


@ranges(cols=">=3", rows=">=3", square=">0")
@dataclass(frozen=True, kw_only=True)
class BoardConfig:
    cols: int = 8
    rows: int = 7
    square: float = 0.03

    def __post_init__(self) -> None:
        require((self.cols + self.rows) % 2 == 1, "use an even x odd board (its orientation is then unambiguous)")


@ranges(min_views=">=3", max_rms_px=">0", synthetic_views=">=1", seed=">=0")
@dataclass(frozen=True, kw_only=True)
class CalibrateConfig:
    mode: Literal["synthetic", "intrinsics", "handeye", "joint_zero", "gripper_zero"] = "intrinsics"
    camera: str = "head"
    serial: str = ""
    arm: Literal["left", "right"] = "left"
    can_port: str = "can_left"
    emulate: bool = False
    dataset: str = "calib/data"
    out_dir: str = "calib"
    board: BoardConfig = field(default_factory=BoardConfig)
    min_views: int = 8
    max_rms_px: float = 1.0
    synthetic_views: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.camera in TWIN_CAMERAS, f"unknown camera {self.camera!r}; known: {list(TWIN_CAMERAS)}")


def _images(folder: Path) -> list[np.ndarray]:
    files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))
    if not files:
        raise CalibrationError(f"no images (*.png, *.jpg) in {folder}")
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]


def synthetic_dataset(cfg: CalibrateConfig, board: Board) -> Path:
    """Board views rendered by the twin: intrinsics/ (board in front of the camera) and a hand-eye
    set (images/ + poses.json of joint angles; board on the table for wrist cameras, in the
    gripper for the head camera)."""
    from pushcut.calibration.synthetic import CalibrationScene, pose, random_board_poses_in_front
    from pushcut.sim.expert import arm_base, tool_rotation
    from pushcut.sim.twin.kinematics import HOME

    out = Path(cfg.dataset)
    (out / "intrinsics").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    scene = CalibrationScene(board)
    cam = cfg.camera
    arm = cfg.arm if cam == "head" else cam.split("_")[0]
    try:
        wrist = cam != "head"
        views = random_board_poses_in_front(scene.T_world_camera(cam), cfg.synthetic_views, rng,
                                            up=0.3 if wrist else 0.0, spread=0.12 if wrist else 0.08)
        for i, T in enumerate(views):
            scene.set_board(T)
            cv2.imwrite(str(out / "intrinsics" / f"{i:03d}.png"), scene.render(cam)[..., ::-1])
        kin = scene.kin[arm]
        sign = -1 if arm == "left" else 1  # mirror the set-up for the right arm

        def reach(x: float, y: float, z: float) -> np.ndarray:
            yaw = np.arctan2(y - arm_base(arm)[1], x - arm_base(arm)[0])
            return kin.ik(np.array([x, y, z]), tool_rotation(yaw, 0.6), HOME)[0]

        if cam == "head":  # board held beside the gripper, towards the middle of the table
            q0 = reach(sign * 0.08, -0.08, 0.12)
            T_gripper_board = pose(np.diag([1.0, -1, -1]), np.array([0.0, sign * 0.15, 0.02]))
        else:  # board on the table in front of the arm, clear of the fingers in the wrist view
            q0 = reach(sign * 0.15, -0.15, 0.2)
            scene.set_board(pose(np.eye(3), np.array([sign * 0.12, 0.06, 0.0045])))
        poses = {}
        for i in range(cfg.synthetic_views):
            q = q0 + rng.uniform(-0.2 if cam == "head" else -0.15, 0.2 if cam == "head" else 0.15, 6)
            scene.set_arm(arm, q)
            if cam == "head":
                scene.set_board(scene.T_world_gripper(arm) @ T_gripper_board)
            name = f"{i:03d}.png"
            cv2.imwrite(str(out / "images" / name), scene.render(cam)[..., ::-1])
            poses[name] = q.tolist()
        truth = {"K": scene.K(cam).tolist(), "T_world_camera": scene.T_world_camera(cam).tolist()}
    finally:
        scene.close()
    (out / "poses.json").write_text(json.dumps({"arm": arm, "camera": cam, "joints": poses}, indent=2))
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    return out


def intrinsics(cfg: CalibrateConfig, board: Board, folder: Path) -> Path:
    from pushcut.calibration.intrinsics import calibrate_intrinsics

    cal, report = calibrate_intrinsics(_images(folder), board, cfg.camera, cfg.serial, cfg.min_views, cfg.max_rms_px)
    path = save_intrinsics(Path(cfg.out_dir) / f"camera_{cfg.camera}.json", cal)
    print(f"intrinsics of {cfg.camera}: rms {report['rms_px']:.3f} px over {report['views']} views -> {path}")
    return path


def handeye(cfg: CalibrateConfig, board: Board) -> Path:
    from pushcut.calibration.handeye import board_pose, calibrate_hand_eye
    from pushcut.calibration.synthetic import CalibrationScene

    path = Path(cfg.out_dir) / f"camera_{cfg.camera}.json"
    cal = load_intrinsics(path)
    data = json.loads((Path(cfg.dataset) / "poses.json").read_text())
    K, dist = np.array(cal.K), np.array(cal.dist)
    scene = CalibrationScene(board, cal.width, cal.height)  # forward kinematics of the Piper
    Tg, Tb = [], []
    try:
        for name, q in sorted(data["joints"].items()):
            img = cv2.cvtColor(cv2.imread(str(Path(cfg.dataset) / "images" / name)), cv2.COLOR_BGR2RGB)
            T_cb = board_pose(img, board, K, dist)
            if T_cb is None:
                continue
            scene.set_arm(data["arm"], np.array(q))
            Tg.append(scene.T_world_gripper(data["arm"]))
            Tb.append(T_cb)
    finally:
        scene.close()
    eye_in_hand = cfg.camera != "head"
    X, report = calibrate_hand_eye(Tg, Tb, eye_in_hand=eye_in_hand)
    cal = replace(cal, T_base_camera=X.tolist(), frame="gripper" if eye_in_hand else "world", extrinsics_error=report)
    save_intrinsics(path, cal)
    print(f"extrinsics of {cfg.camera} ({'eye-in-hand' if eye_in_hand else 'eye-to-hand'}): "
          f"{report['used']}/{report['poses']} views, residual {report['residual_mm']:.2f} mm -> {path}")
    return path


def zeroing(cfg: CalibrateConfig) -> Path:
    from pushcut.calibration.procedures import gripper_zero, joint_zero
    from pushcut.calibration_files import load_arm
    from pushcut.deploy.piper.driver import DriverConfig, PiperArm

    emulator = None
    if cfg.emulate:
        from pushcut.deploy.piper.emulator import PiperEmulator

        emulator = PiperEmulator(cfg.can_port).start()
    arm = PiperArm(DriverConfig(can_port=cfg.can_port, bus="virtual" if cfg.emulate else "socketcan"))
    path = Path(cfg.out_dir) / f"arm_{cfg.arm}.json"
    try:
        arm.connect()
        arm.wait_for_feedback()
        if cfg.mode == "joint_zero":
            cal = joint_zero(arm, cfg.arm)
        else:
            cal = gripper_zero(arm, load_arm(path) if path.exists() else joint_zero(arm, cfg.arm, joints=()))
        save_arm(path, cal)
    finally:
        arm.close()
        if emulator is not None:
            emulator.stop()
    print(f"{cfg.mode} of the {cfg.arm} arm -> {path}")
    return path


def run(cfg: CalibrateConfig) -> Path:
    board = Board(cfg.board.cols, cfg.board.rows, cfg.board.square)
    if cfg.mode == "synthetic":
        return synthetic_dataset(cfg, board)
    if cfg.mode == "intrinsics":
        folder = Path(cfg.dataset)
        return intrinsics(cfg, board, folder / "intrinsics" if (folder / "intrinsics").is_dir() else folder)
    if cfg.mode == "handeye":
        return handeye(cfg, board)
    return zeroing(cfg)


main = hydra_entry("calibrate", CalibrateConfig, lambda cfg, run_dir: run(cfg))


if __name__ == "__main__":
    main()
