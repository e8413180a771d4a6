"""TwinEnv: the dual-arm Piper workcell in MuJoCo behind the ``sim.core.Env`` interface.

Actions are 14 absolute joint targets ``[left j1..j6, left gripper, right j1..j6, right gripper]``
(gripper normalised, 0 closed .. 1 open). A chunk of T targets is executed as one smoothed,
time-parametrised path: a C1 cubic (Catmull-Rom) through the current target and the T
waypoints, one waypoint per control period, with zero velocity at both ends of the chunk,
sampled at the physics rate (250 Hz) and tracked by the joint position servos, as RoboTwin
executes its chunks. Like the arm's own controller, the servo targets approach that path no
faster than the joints' top speed (``spec.JOINT_MAX_SPEED`` times ``speed_percent`` / 100, the
arm's speed setting), so a chunk that asks for more is executed late, never faster than the
hardware could. Success is checked at every physics step
and latches.

Grasping: a closed gripper whose two pads both touch the same graspable object turns on a weld
between the hand and the object (MuJoCo equality), and opening the gripper turns it off. This
"grasp assist" stands in for finger friction, which a primitive-geometry twin does not model
faithfully; contacts, collisions and nesting stay fully physical. With ``grasp_force_limit`` the
grasp slips as a friction grip does: a weld that transmits more than the limit at a control step
lets go, and grips again at the next one where the object then is, if both pads still touch it.

A task's milestones short of success (``Task.phases``: grasped, lifted, placed for stacking) are
checked after every control step and latch; each ``Step.info["phases"]`` lists those reached, and
``Step.info["arm"]`` names the arm the layout needs (the bell's side, the bowl's that goes onto the pile).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import mujoco
import numpy as np

from pushcut import spec
from pushcut.motion import smooth_path, spline
from pushcut.sim.config import EnvConfig, RandomizationConfig
from pushcut.sim.core import Obs, Step, as_chunk
from pushcut.sim.tasks import TASKS
from pushcut.sim.twin.kinematics import HOME
from pushcut.sim.twin.model import FINGER_TRAVEL, HeadCamera, build_mjcf, distractor_bodies
from pushcut.sim.twin.randomize import Randomizer

_LO, _HI = (np.array(v) for v in spec.dual_arm_limits())
_GRIPPER_DIMS = np.arange(spec.DOF_PER_ARM - 1, spec.DUAL_ARM_DIM, spec.DOF_PER_ARM)  # the last dim of each arm
_ARM_DIMS = np.setdiff1d(np.arange(spec.DUAL_ARM_DIM), _GRIPPER_DIMS)  # the joints, in order
_FINGER_SRC = np.repeat(_GRIPPER_DIMS, 2)  # the action dim of each finger joint (a, b per arm, spec.ARMS order)
GRIP_CLOSE_CMD = 0.5  # commanded opening below this closes a grasp


def calibrated_pose_noise(cfg: RandomizationConfig, extrinsics_error: dict) -> RandomizationConfig:
    """The camera-pose jitter no smaller than the hand-eye calibration's residual (``residual_mm``,
    ``residual_deg`` of ``pushcut-calibrate``'s report): the twin's camera is known no better."""
    return dataclasses.replace(
        cfg, camera_pos=max(cfg.camera_pos, extrinsics_error.get("residual_mm", 0.0) / 1000.0),
        camera_rot_deg=max(cfg.camera_rot_deg, extrinsics_error.get("residual_deg", 0.0)))


class TwinEnv:
    """One episode at a time of a twin task (``cfg.task``)."""

    action_dim = spec.DUAL_ARM_DIM
    proprio_dim = spec.DUAL_ARM_DIM

    def __init__(self, cfg: EnvConfig, head: HeadCamera | None = None):
        self.cfg = cfg
        self.task = TASKS[cfg.task]()
        self.instruction = self.task.instruction
        self.max_steps = cfg.max_steps or self.task.max_steps
        randomization = cfg.randomization
        if head is None and cfg.head_calibration:
            from pushcut.calibration_files import load_intrinsics

            cal = load_intrinsics(cfg.head_calibration)
            head = HeadCamera.from_calibration(cal)
            randomization = calibrated_pose_noise(randomization, cal.extrinsics_error)
        h, w = cfg.image_size
        objects = self.task.scene_objects()
        if cfg.randomization.enabled:
            objects.bodies += distractor_bodies(cfg.randomization.distractors)
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(objects, head or HeadCamera(), offscreen=(w, h)))
        self.model.opt.timestep = 1.0 / cfg.physics_hz
        self.data = mujoco.MjData(self.model)
        self.task.bind(self.model)
        m = self.model
        self._arm_q = np.array(
            [m.joint(f"{a}_joint{i + 1}").qposadr[0] for a in spec.ARMS for i in range(6)]
        )
        self._pads = {a: (m.geom(f"{a}_pad_a").id, m.geom(f"{a}_pad_b").id) for a in spec.ARMS}
        # one gather for the finger joints (a, b per arm) and one scatter for the 16 actuators:
        # _follow reads and writes them every physics step
        self._finger_adr = np.array([m.joint(f"{a}_finger_{s}").qposadr[0] for a in spec.ARMS for s in "ab"])
        ctrl_arm = [m.actuator(f"{a}_joint{i + 1}").id for a in spec.ARMS for i in range(6)]
        ctrl_fingers = [m.actuator(f"{a}_finger_{s}").id for a in spec.ARMS for s in "ab"]
        self._ctrl_idx = np.array(ctrl_arm + ctrl_fingers)
        self._ctrl_src = np.concatenate([_ARM_DIMS, _FINGER_SRC])  # the action dim of each actuator
        self._ctrl_scale = np.array([1.0] * len(_ARM_DIMS) + [FINGER_TRAVEL] * len(_FINGER_SRC))
        self._welds = {
            (a, b): m.equality(f"grasp_{a}_{b}").id for a in spec.ARMS for b in self.task.graspable
        }
        self._graspable_body = {b: m.body(b).id for b in self.task.graspable}
        self._renderer: mujoco.Renderer | None = None
        self.randomizer = Randomizer(m, randomization, cfg.perturbation)
        self.on_control_step: Callable[[], None] | None = None  # called after every control step
        self.target = np.zeros(self.action_dim)
        self._servo = np.zeros(self.action_dim)  # what the servos are told, speed-limited
        self._max_step = np.full(self.action_dim, np.inf)  # per physics step; grippers unlimited
        self._top_step = spec.JOINT_MAX_SPEED * cfg.speed_percent / 100.0 / cfg.physics_hz  # rad per physics step
        self._max_step[_ARM_DIMS] = self._top_step
        self._min_step = -self._max_step
        self.steps = 0
        self._physics = 0
        self.slips = 0
        self.succeeded = False
        self.reached: set[str] = set()
        self.layout: dict = {}

    # --- episode ------------------------------------------------------------------------------
    def reset(self, seed: int) -> Obs:
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        self.randomizer.reset(rng, seed)
        self.layout = self.task.reset(self.data, rng)
        home = np.concatenate([HOME, [1.0], HOME, [1.0]])
        self._set_arm_qpos(home)
        self.target = home.copy()
        self._servo = home.copy()
        self._apply_ctrl(home)
        mujoco.mj_forward(self.model, self.data)
        self.randomizer.place_distractors(self._keep_clear())
        self._max_step[_ARM_DIMS] = self._top_step * self.randomizer.speed_scale
        self._min_step = -self._max_step
        for _ in range(int(0.2 * self.cfg.physics_hz)):  # let objects settle
            mujoco.mj_step(self.model, self.data)
        self.steps = 0
        self._physics = 0
        self.slips = 0  # grasps that let go under more than grasp_force_limit this episode
        self.succeeded = False
        self.reached: set[str] = set()
        self._pending = np.zeros((0, self.action_dim))  # async: waypoints of the chunk not yet run
        self._pending_path = self._pending_velocity = np.zeros((0, self.action_dim))
        self._velocity = np.zeros(self.action_dim)  # the path's velocity at self.target
        return self.observe()

    def step(self, actions: np.ndarray) -> Step:
        if self.steps >= self.max_steps or self.succeeded:
            raise RuntimeError("episode is done; call reset() first")
        chunk = np.clip(as_chunk(actions, self.action_dim), _LO, _HI)
        chunk = self.randomizer.delay(chunk)
        if self.cfg.execution == "async":
            return self._step_async(chunk)
        chunk = chunk[: self.max_steps - self.steps]
        self._run(smooth_path(self.target, chunk, self.cfg.substeps), chunk)
        return self._result()

    def _step_async(self, chunk: np.ndarray) -> Step:
        """Overlapped execution, as the policy node's ``execution: async``: the previous chunk runs
        ``lead_steps`` more steps (the time the inference of this one took), then this chunk is
        spliced in with the path's position and velocity and runs all but its last step; the
        observation is taken there, with the proprio the arm will have at the next takeover."""
        s = self.cfg.substeps
        lead = min(self.cfg.lead_steps, len(self._pending))
        done = self._run(self._pending_path[: lead * s], self._pending[:lead])
        tangent = self._pending_velocity[done * s - 1] if done else self._velocity
        self._pending = self._pending[:0]
        if not self.done:
            chunk = chunk[: self.max_steps - self.steps]
            path, velocity = spline(self.target, chunk, s, tangent)
            n = max(1, len(chunk) - self.cfg.lead_steps - 1)
            done = self._run(path, chunk[:n])
            self._velocity = velocity[done * s - 1]
            self._pending = chunk[done:]
            self._pending_path, self._pending_velocity = path[done * s :], velocity[done * s :]
        out = self._result()
        if len(self._pending) and self.cfg.lead_steps:
            out.obs.proprio[:] = self._pending[min(self.cfg.lead_steps, len(self._pending)) - 1]
        return out

    def _run(self, path: np.ndarray, waypoints: np.ndarray) -> int:
        """Follow ``path`` through ``waypoints`` (``substeps`` physics steps each) until the
        episode ends; returns the number of waypoints reached."""
        s = self.cfg.substeps
        for k in range(len(waypoints)):
            self._follow(path[k * s : (k + 1) * s])
            self.target = waypoints[k]
            self.steps += 1
            self._update_grasps(waypoints[k])
            if self.task.phases:
                self.reached |= self.task.progress(self.data, self.held())
            if self.on_control_step is not None:  # e.g. a per-frame recording (LeRobot datasets)
                self.on_control_step()
            if self.done:
                return k + 1
        return len(waypoints)

    def servo(self, target: np.ndarray, physics_steps: int) -> bool:
        """Move linearly to one 14-dim ``target`` over ``physics_steps`` (a robot-style servo tick).

        Used by the ROS twin node, whose commands arrive at the control rate; the episode's
        step count advances by ``physics_steps / substeps`` control steps. Renders nothing (the
        node renders at its camera rate); returns whether the episode is done.
        """
        if self.done:
            raise RuntimeError("episode is done; call reset() first")
        target = np.clip(as_chunk(target, self.action_dim)[0], _LO, _HI)
        s = np.arange(1, physics_steps + 1)[:, None] / physics_steps
        self._follow(self.target + s * (target - self.target))
        self.target = target
        self._physics += physics_steps
        self.steps = self._physics // self.cfg.substeps
        self._update_grasps(target)
        return self.done

    @property
    def done(self) -> bool:
        return self.succeeded or self.steps >= self.max_steps

    def _follow(self, path: np.ndarray) -> None:
        """Track physics-rate targets at no more than the joints' top speed, checking success at
        every physics step (it latches)."""
        for target in path:  # np.minimum/np.maximum: np.clip's wrapper costs more than the step
            self._servo += np.minimum(np.maximum(target - self._servo, self._min_step), self._max_step)
            self._apply_ctrl(self._servo)
            mujoco.mj_step(self.model, self.data)
            if not self.succeeded and self.task.success(self.data, self.gripper_opening()):
                self.succeeded = True

    def _result(self) -> Step:
        info = {"arm": self.layout["arm"]} if "arm" in self.layout else {}
        if self.task.phases:
            info["phases"] = [p for p in self.task.phases if p in self.reached]
        return Step(obs=self.observe(), reward=float(self.succeeded), success=self.succeeded,
                    done=self.done, steps=self.steps, info=info)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- state --------------------------------------------------------------------------------
    def gripper_opening(self) -> dict[str, float]:
        """Measured opening per arm, normalised 0 closed .. 1 open."""
        q = self.data.qpos[self._finger_adr].tolist()  # plain floats: called every physics step
        return {a: min(max((q[2 * i] + q[2 * i + 1]) / 2 / FINGER_TRAVEL, 0.0), 1.0) for i, a in enumerate(spec.ARMS)}

    def held(self) -> set[str]:
        """The graspable bodies a gripper holds (its grasp weld on)."""
        return {b for (_, b), eq in self._welds.items() if self.data.eq_active[eq]}

    def proprio(self) -> np.ndarray:
        q = self.data.qpos[self._arm_q]
        g = self.gripper_opening()
        return np.concatenate([q[:6], [g["left"]], q[6:], [g["right"]]]).astype(np.float32)

    def render(self, camera: str) -> np.ndarray:
        if self._renderer is None:
            h, w = self.cfg.image_size
            self._renderer = mujoco.Renderer(self.model, height=h, width=w)
        self._renderer.update_scene(self.data, camera=camera)
        return self.randomizer.image(self._renderer.render().copy())

    def observe(self) -> Obs:
        return Obs(
            images={c: self.render(c) for c in self.cfg.cameras},
            proprio=self.proprio(),
            instruction=self.instruction,
        )

    # --- internals ----------------------------------------------------------------------------
    def _keep_clear(self) -> list[np.ndarray]:
        """Where no distractor may stand: the task's movable objects and the arm bases (x, y)."""
        m = self.model
        bodies = [b for b in range(1, m.nbody)
                  if (m.body_dofnum[b] > 0 and m.body_parentid[b] == 0) or m.body(b).name.endswith("_base")]
        return [self.data.xpos[b, :2].copy() for b in bodies]

    def _set_arm_qpos(self, q14: np.ndarray) -> None:
        self.data.qpos[self._arm_q] = q14[_ARM_DIMS]
        self.data.qpos[self._finger_adr] = q14[_FINGER_SRC] * FINGER_TRAVEL

    def _apply_ctrl(self, q14: np.ndarray) -> None:
        self.data.ctrl[self._ctrl_idx] = q14[self._ctrl_src] * self._ctrl_scale

    def grasp_force(self, arm: str, body: str) -> float:
        """The force (N) the grasp weld of ``arm`` on ``body`` transmits now (0 when it is off)."""
        eq = self._welds[(arm, body)]
        d = self.data
        rows = np.flatnonzero((d.efc_type == mujoco.mjtConstraint.mjCNSTR_EQUALITY) & (d.efc_id == eq))
        return float(np.linalg.norm(d.efc_force[rows[:3]])) if len(rows) else 0.0

    def _update_grasps(self, command: np.ndarray) -> None:
        if not self._welds:
            return
        limit = self.cfg.grasp_force_limit
        for a, g in (("left", command[6]), ("right", command[13])):
            held = [b for b in self.task.graspable if self.data.eq_active[self._welds[(a, b)]]]
            if held and limit is not None and g < GRIP_CLOSE_CMD and self.grasp_force(a, held[0]) > limit:
                self.data.eq_active[self._welds[(a, held[0])]] = 0  # it slips; re-gripped next step if pinched
                self.slips += 1
                continue
            if g >= GRIP_CLOSE_CMD:
                for b in held:
                    self.data.eq_active[self._welds[(a, b)]] = 0
            elif not held:
                body = self._pinched_body(a)
                if body is not None:
                    self._activate_weld(a, body)

    def _pinched_body(self, arm: str) -> str | None:
        """The graspable body touched by both pads of ``arm``, if any."""
        touched = ({}, {})
        for c in self.data.contact[: self.data.ncon]:
            for side, pad in enumerate(self._pads[arm]):
                other = c.geom2 if c.geom1 == pad else c.geom1 if c.geom2 == pad else None
                if other is not None:
                    touched[side][self.model.geom_bodyid[other]] = True
        for name, body in self._graspable_body.items():
            if body in touched[0] and body in touched[1]:
                return name
        return None

    def _activate_weld(self, arm: str, body: str) -> None:
        eq = self._welds[(arm, body)]
        hand = self.model.body(f"{arm}_link6").id
        obj = self._graspable_body[body]
        p1, r1 = self.data.xpos[hand], self.data.xmat[hand].reshape(3, 3)
        rel_pos = r1.T @ (self.data.xpos[obj] - p1)
        q1_inv = np.zeros(4)
        mujoco.mju_negQuat(q1_inv, self.data.xquat[hand])
        rel_quat = np.zeros(4)
        mujoco.mju_mulQuat(rel_quat, q1_inv, self.data.xquat[obj])
        self.model.eq_data[eq, 0:3] = 0.0
        self.model.eq_data[eq, 3:6] = rel_pos
        self.model.eq_data[eq, 6:10] = rel_quat
        self.model.eq_data[eq, 10] = 1.0
        self.data.eq_active[eq] = 1
