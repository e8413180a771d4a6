"""A scripted pick-and-place expert for LIBERO goals ``(in <object> <container region>)``.

That is every task of ``libero_object`` ("pick up the X and place it in the basket"). It reads
privileged state (body positions) from the simulator and closes the loop on the end-effector
position every control step, through the same 7-dim delta end-effector actions a policy sends
(OSC: +-1 is +-5 cm per step; gripper -1 open, +1 closed): above the object, down, close, lift,
over the container, down a little, open.

Tasks whose goal is something else (put on a plate, open a drawer, turn on the stove) raise
:class:`UnsupportedGoal`; LIBERO ships no demonstrations we can download here, so those have none.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pushcut.sim.core import Obs

APPROACH_Z = 0.10  # above the object before descending
CARRY_Z = 0.25  # lift height above the container's base
GRASP_DZ = 0.0  # grasp at the object body's origin height
RELEASE_Z = 0.12  # above the container when opening
TOL = 0.01
GAIN = 12.0  # action per metre of position error (saturates at 1 = 5 cm/step)
CARRY_SPEED = 0.4  # slower with the object in hand: tall bottles held by the cap slip at full speed


class UnsupportedGoal(ValueError):
    pass


def pick_place_goal(problem: dict) -> tuple[str, str]:
    """(object, container body) of a single ``in`` goal, else :class:`UnsupportedGoal`."""
    goal = problem["goal_state"]
    if len(goal) != 1 or goal[0][0].lower() != "in" or not goal[0][2].endswith("_contain_region"):
        raise UnsupportedGoal(f"the scripted expert handles one (in <object> <container>) goal, not {goal}")
    return goal[0][1], goal[0][2][: -len("_contain_region")]


def run_libero_expert(env, seed: int, on_step: Callable[[Obs, np.ndarray], None] | None = None,
                      render_at: Callable[[int], bool] | None = None) -> bool:
    """Reset ``env`` (a ``LiberoEnv``) to ``seed`` and pick and place; returns success.

    ``on_step(obs, action)`` sees every observation and the action taken from it. ``render_at(t)``
    says whether the observation after ``t`` actions needs its images (default: all; the others
    carry proprio only, and rendering is most of a LIBERO step's cost).
    """
    obs = env.reset(seed)
    inner = env._env.env
    obj, container = pick_place_goal(inner.parsed_problem)
    data = inner.sim.data

    def pos(body: str) -> np.ndarray:
        return np.array(data.body_xpos[inner.obj_body_id[body]])

    def act(target: np.ndarray, grip: float, speed: float = 1.0) -> bool:
        nonlocal obs
        a = np.zeros(7)
        a[:3] = np.clip(GAIN * (target - obs.proprio[:3]), -speed, speed)
        a[6] = grip
        if on_step is not None:
            on_step(obs, a)
        step = env.step(a, render=render_at is None or render_at(env.steps + 1))
        obs = step.obs
        return step.done

    def move(target_fn: Callable[[], np.ndarray], grip: float, max_steps: int, speed: float = 1.0) -> bool:
        for _ in range(max_steps):
            target = target_fn()
            if np.linalg.norm(target - obs.proprio[:3]) < TOL:
                return False
            if act(target, grip, speed):
                return True
        return False

    def hold(grip: float, steps: int) -> bool:
        target = obs.proprio[:3].copy()
        return any(act(target, grip) for _ in range(steps))

    phases = [
        lambda: move(lambda: pos(obj) + [0, 0, APPROACH_Z], -1.0, 120),
        lambda: move(lambda: pos(obj) + [0, 0, GRASP_DZ], -1.0, 60),
        lambda: hold(1.0, 15),
        lambda: move(lambda: np.r_[obs.proprio[:2], pos(container)[2] + CARRY_Z], 1.0, 80, CARRY_SPEED),
        lambda: move(lambda: pos(container) + [0, 0, CARRY_Z], 1.0, 200, CARRY_SPEED),
        lambda: move(lambda: pos(container) + [0, 0, RELEASE_Z], 1.0, 60, CARRY_SPEED),
        lambda: hold(-1.0, 20),
    ]
    for phase in phases:
        if phase():
            return env.succeeded
    while env.steps < env.max_steps and not env.succeeded:  # let the object settle in
        if hold(-1.0, 1):
            break
    return env.succeeded
