"""click_bell: touch the top of the bell with a closed gripper, using the arm on its side.

RoboTwin 2.0: the bell lies in x in [-0.25, 0.25], y in [-0.2, 0]; success when the gripper
of the arm on the bell's side is within 0.025 m in xy and 0.03 m in z of its top, closed; the
success latches. Step limit 400.
"""

from __future__ import annotations

import numpy as np

from pushcut.sim.tasks.base import OBJECT_X, OBJECT_Y, Task
from pushcut.sim.twin.model import SceneObjects, bell_xml

XY_TOL = 0.025
Z_TOL = 0.03
CLOSED = 0.2  # measured opening below this counts as closed


class ClickBell(Task):
    name = "click_bell"
    instruction = "click the bell"
    max_steps = 400

    def scene_objects(self) -> SceneObjects:
        return SceneObjects(bodies=[bell_xml((0.0, -0.1))])

    def bind(self, model) -> None:
        super().bind(model)
        self.bell = model.body("bell").id
        self.top = model.site("bell_top").id
        self.tcp = {arm: model.site(f"{arm}_tcp").id for arm in ("left", "right")}

    def reset(self, data, rng: np.random.Generator) -> dict:
        x = rng.uniform(*OBJECT_X)
        y = rng.uniform(*OBJECT_Y)
        self.model.body_pos[self.bell] = (x, y, 0.0)
        self.arm = "left" if x < 0 else "right"
        return {"bell": np.array([x, y]), "arm": self.arm}

    def success(self, data, gripper) -> bool:
        top = data.site_xpos[self.top]
        tcp = data.site_xpos[self.tcp[self.arm]]
        return bool(
            abs(tcp[0] - top[0]) < XY_TOL
            and abs(tcp[1] - top[1]) < XY_TOL
            and abs(tcp[2] - top[2]) < Z_TOL
            and gripper[self.arm] < CLOSED
        )
