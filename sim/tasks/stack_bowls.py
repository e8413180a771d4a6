"""stack_bowls_two / stack_bowls_three: stack the bowls into one pile, grippers open at the end.

RoboTwin 2.0's check: consecutive bowls (sorted by height) within 0.04 m in x and in y, each
bowl's height within 0.02 m above its stacking target (table, then one nesting height per
level), and both grippers open. Step limits 900 / 1200.

Progress short of success (``phases``, for diagnosis): ``grasped`` (a gripper holds a bowl),
``lifted`` (a held bowl's base ``LIFT_Z`` above the table) and ``placed`` (the bowls stacked as the
check asks, grippers open or not). The layout's ``arm`` is the side of the first bowl moved onto
the base (the arm the scripted expert moves it with).
"""

from __future__ import annotations

import numpy as np

from pushcut.sim.tasks.base import OBJECT_X, OBJECT_Y, Task
from pushcut.sim.twin.model import BOWL_NEST_HEIGHT, SceneObjects, bowl_xml, grasp_weld_xml

XY_TOL = 0.04
Z_TOL = 0.02
OPEN = 0.8  # measured opening above this counts as open
MIN_SEPARATION = 0.14  # between bowl centres at reset
BASE_X = (-0.08, 0.08)  # the first bowl (the pile's base) lies within reach of both arms
LIFT_Z = 0.03
PHASES = ("grasped", "lifted", "placed")
COLORS = ("0.85 0.25 0.2 1", "0.2 0.45 0.85 1", "0.25 0.7 0.3 1")


class StackBowls(Task):
    graspable: tuple[str, ...]

    def __init__(self, n_bowls: int):
        self.n = n_bowls
        self.name = {2: "stack_bowls_two", 3: "stack_bowls_three"}[n_bowls]
        self.instruction = f"stack the {'two' if n_bowls == 2 else 'three'} bowls"
        self.max_steps = {2: 900, 3: 1200}[n_bowls]
        self.graspable = tuple(f"bowl{i + 1}" for i in range(n_bowls))
        self.phases = PHASES

    def scene_objects(self) -> SceneObjects:
        bodies = [bowl_xml(b, (0.1 * i, -0.1), COLORS[i]) for i, b in enumerate(self.graspable)]
        welds = [grasp_weld_xml(arm, b) for arm in ("left", "right") for b in self.graspable]
        return SceneObjects(bodies=bodies, equalities=welds)

    def bind(self, model) -> None:
        super().bind(model)
        self.qadr = [model.joint(f"{b}_free").qposadr[0] for b in self.graspable]
        self.body = [model.body(b).id for b in self.graspable]

    def reset(self, data, rng: np.random.Generator) -> dict:
        positions: list[np.ndarray] = [np.array([rng.uniform(*BASE_X), rng.uniform(*OBJECT_Y)])]
        while len(positions) < self.n:
            p = np.array([rng.uniform(*OBJECT_X), rng.uniform(*OBJECT_Y)])
            if all(np.linalg.norm(p - q) >= MIN_SEPARATION for q in positions):
                positions.append(p)
        for adr, p in zip(self.qadr, positions):
            data.qpos[adr : adr + 3] = (p[0], p[1], 0.0005)
            yaw = rng.uniform(-np.pi, np.pi)
            data.qpos[adr + 3 : adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        return {"bowls": np.stack(positions), "arm": "left" if positions[1][0] < 0 else "right"}

    def bowl_positions(self, data) -> np.ndarray:
        return np.stack([data.xpos[b].copy() for b in self.body])

    def stacked(self, data) -> bool:
        pos = self.bowl_positions(data)
        pos = pos[np.argsort(pos[:, 2])]
        for i in range(1, self.n):
            if np.any(np.abs(pos[i, :2] - pos[i - 1, :2]) >= XY_TOL):
                return False
        targets = np.arange(self.n) * BOWL_NEST_HEIGHT
        return not np.any(pos[:, 2] - targets >= Z_TOL)

    def success(self, data, gripper) -> bool:
        return self.stacked(data) and all(g > OPEN for g in gripper.values())

    def progress(self, data, held: set[str]) -> set[str]:
        reached = {"grasped"} if held else set()
        if any(data.xpos[b][2] > LIFT_Z for name, b in zip(self.graspable, self.body) if name in held):
            reached.add("lifted")
        if self.stacked(data):
            reached.add("placed")
        return reached
