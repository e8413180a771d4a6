"""Scripted experts for the twin's tasks: inverse kinematics plus grasp planning.

An expert is a generator of 14-dim actions that reads privileged state (object poses) from the
env. Where a phase must see the result of the previous one (e.g. where the bowl ended up in the
hand), it yields :data:`SYNC`: the runner then executes the actions gathered so far before
asking for more, so plans are never made from stale state.

Tool orientation: straight down is out of the Piper's reach over most of the table within the
SDK's joint limits, so the tool is tilted outward by ``PITCHES[0]`` (0.6 rad), falling back to
other tilts when IK fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pushcut.sim.tasks.click_bell import ClickBell
from pushcut.sim.tasks.stack_bowls import StackBowls
from pushcut.sim.twin.env import TwinEnv
from pushcut.sim.twin.kinematics import HOME, ArmKinematics
from pushcut.sim.twin.model import (
    ARM_BASE_X,
    ARM_BASE_Y,
    BELL_TOP_Z,
    BOWL_NEST_HEIGHT,
    BOWL_WALL_LEN,
    BOWL_WALL_START_R,
    BOWL_WALL_TILT,
)

SYNC = None  # yielded to ask the runner to execute pending actions before planning on
PITCHES = (0.6, 0.45, 0.75, 0.9, 0.3)
IK_TOL = 3e-3
ARM_SLICE = {"left": slice(0, 7), "right": slice(7, 14)}


class IKFailure(RuntimeError):
    pass


def tool_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Tool frame tilted ``pitch`` from straight down towards ``yaw``; fingers slide tangentially."""
    d = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = -np.cos(pitch) * np.array([0.0, 0.0, 1.0]) + np.sin(pitch) * d
    y = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    return np.stack([np.cross(y, z), y, z], axis=1)


def arm_base(arm: str) -> np.ndarray:
    return np.array([-ARM_BASE_X if arm == "left" else ARM_BASE_X, ARM_BASE_Y])


class Planner:
    """Joint-space motions of one twin, from the last commanded target."""

    def __init__(self, env: TwinEnv):
        self.env = env
        self.kin = {a: ArmKinematics(env.model, a) for a in ("left", "right")}
        self.target = env.target.copy()

    def solve(self, arm: str, pos: np.ndarray, pitch_hint: float | None = None) -> tuple[np.ndarray, float]:
        """Joint angles putting the tool at ``pos``, facing away from the arm's base."""
        yaw = float(np.arctan2(*(pos[:2] - arm_base(arm))[::-1]))
        q0 = self.target[ARM_SLICE[arm]][:6]
        pitches = PITCHES if pitch_hint is None else (pitch_hint, *PITCHES)
        for pitch in pitches:
            for seed in (q0, HOME):
                q, err = self.kin[arm].ik(pos, tool_rotation(yaw, pitch), seed)
                if err < IK_TOL:
                    return q, pitch
        raise IKFailure(f"{arm} arm cannot reach {np.round(pos, 3)}")

    def move(self, arm: str, q: np.ndarray | None, gripper: float, steps: int) -> Iterator[np.ndarray]:
        """Linear joint-space interpolation of ``arm`` to ``q`` (None: stay) and ``gripper``."""
        start = self.target.copy()
        end = start.copy()
        s = ARM_SLICE[arm]
        if q is not None:
            end[s][:6] = q
        end[s][6] = gripper
        for k in range(1, steps + 1):
            self.target = start + (end - start) * k / steps
            yield self.target.copy()

    def tool(self, arm: str) -> tuple[np.ndarray, np.ndarray]:
        """Current tool pose from the commanded joints."""
        return self.kin[arm].fk(self.target[ARM_SLICE[arm]][:6])


def click_bell_expert(env: TwinEnv) -> Iterator[np.ndarray | None]:
    task = env.task
    assert isinstance(task, ClickBell)
    p = Planner(env)
    arm = env.layout["arm"]
    bell = np.array([*env.layout["bell"], BELL_TOP_Z])
    q_above, pitch = p.solve(arm, bell + (0, 0, 0.08))
    q_touch, _ = p.solve(arm, bell + (0, 0, 0.012), pitch)
    yield from p.move(arm, None, 0.0, 4)
    yield from p.move(arm, q_above, 0.0, 18)
    yield from p.move(arm, q_touch, 0.0, 10)
    yield from p.move(arm, q_touch, 0.0, 6)  # hold on the bell


def stack_bowls_expert(env: TwinEnv) -> Iterator[np.ndarray | None]:
    task = env.task
    assert isinstance(task, StackBowls)
    p = Planner(env)
    wall_r = BOWL_WALL_START_R + 0.55 * BOWL_WALL_LEN * np.sin(BOWL_WALL_TILT)
    grasp_z = 0.55 * BOWL_WALL_LEN * np.cos(BOWL_WALL_TILT)
    for i in range(1, task.n):
        yield SYNC
        bowls = task.bowl_positions(env.data)
        bowl = bowls[i]
        arm = "left" if bowl[0] < 0 else "right"
        radial = bowl[:2] - arm_base(arm)
        radial /= np.linalg.norm(radial)
        tangent = np.array([-radial[1], radial[0]])
        # grasp the wall on the side facing the other arm (keeps the hand clear of the table edge)
        side = tangent if np.dot(tangent, -arm_base(arm)) > 0 else -tangent
        grasp = np.array([*(bowl[:2] + wall_r * side), grasp_z])
        q_pre, pitch = p.solve(arm, grasp + (0, 0, 0.1))
        q_grasp, _ = p.solve(arm, grasp, pitch)
        yield from p.move(arm, q_pre, 1.0, 18)
        yield from p.move(arm, q_grasp, 1.0, 10)
        yield from p.move(arm, None, 0.0, 6)
        q_lift, _ = p.solve(arm, grasp + (0, 0, 0.12), pitch)
        yield from p.move(arm, q_lift, 0.0, 10)
        yield SYNC
        tcp, rot = p.tool(arm)
        offset = rot.T @ (env.data.xpos[task.body[i]] - tcp)  # bowl centre in the tool frame
        pile = task.bowl_positions(env.data)[:i]
        top = pile[np.argmax(pile[:, 2])]
        goal = np.array([top[0], top[1], top[2] + BOWL_NEST_HEIGHT + 0.02])
        tool_goal = goal - rot @ offset
        for _ in range(2):  # the tool's yaw depends on where it goes: refine once
            q_place, _ = p.solve(arm, tool_goal + (0, 0, 0.05), pitch)
            _, rot_place = p.kin[arm].fk(q_place)
            tool_goal = goal - rot_place @ offset
        q_over, _ = p.solve(arm, tool_goal + (0, 0, 0.05), pitch)
        q_place, _ = p.solve(arm, tool_goal, pitch)
        yield from p.move(arm, q_over, 0.0, 22)
        yield from p.move(arm, q_place, 0.0, 8)
        yield from p.move(arm, None, 1.0, 6)
        q_up, _ = p.solve(arm, tool_goal + (0, 0, 0.1), pitch)
        yield from p.move(arm, q_up, 1.0, 8)
        yield from p.move(arm, HOME, 1.0, 12)


EXPERTS = {
    "click_bell": click_bell_expert,
    "stack_bowls_two": stack_bowls_expert,
    "stack_bowls_three": stack_bowls_expert,
}


def run_expert(env: TwinEnv, seed: int, chunk_len: int, on_chunk=None) -> bool:
    """Reset ``env`` to ``seed`` and run its expert in chunks of at most ``chunk_len`` actions.

    ``on_chunk(obs, chunk)`` is called with the observation each chunk starts from.
    Returns success. An unreachable layout counts as a failure.
    """
    obs = env.reset(seed)
    pending: list[np.ndarray] = []

    def flush() -> bool:
        nonlocal obs
        if not pending:
            return False
        chunk = np.stack(pending)
        pending.clear()
        if on_chunk is not None:
            on_chunk(obs, chunk)
        step = env.step(chunk)
        obs = step.obs
        return step.done

    try:
        for action in EXPERTS[env.cfg.task](env):
            if action is SYNC:
                if flush():
                    return env.succeeded
                continue
            pending.append(action)
            if len(pending) == chunk_len and flush():
                return env.succeeded
        if flush():
            return env.succeeded
        # hold the final pose until the step limit or success (RoboTwin checks every step)
        while not env.succeeded and env.steps < env.max_steps:
            pending.extend([env.target.copy()] * min(chunk_len, env.max_steps - env.steps))
            flush()
    except IKFailure:
        return False
    return env.succeeded
