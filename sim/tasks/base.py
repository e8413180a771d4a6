"""What a twin task provides: its objects, a seeded layout, a success check, an instruction."""

from __future__ import annotations

from abc import ABC, abstractmethod

import mujoco
import numpy as np

from pushcut.sim.twin.model import SceneObjects

OBJECT_X = (-0.25, 0.25)  # object region on the table, RoboTwin's ranges
OBJECT_Y = (-0.2, 0.0)


class Task(ABC):
    name: str
    instruction: str
    max_steps: int
    graspable: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()  # milestones short of success, in order (``progress``)

    @abstractmethod
    def scene_objects(self) -> SceneObjects: ...

    def bind(self, model: mujoco.MjModel) -> None:
        """Cache ids after the model is compiled."""
        self.model = model

    @abstractmethod
    def reset(self, data: mujoco.MjData, rng: np.random.Generator) -> dict:
        """Place the objects for a seeded episode; return the layout (for tests and experts)."""

    @abstractmethod
    def success(self, data: mujoco.MjData, gripper: dict[str, float]) -> bool:
        """RoboTwin 2.0's success check; ``gripper`` maps arm -> measured opening in [0, 1]."""

    def progress(self, data: mujoco.MjData, held: set[str]) -> set[str]:
        """The ``phases`` reached in the current state; ``held``: the graspable bodies a gripper holds."""
        return set()
