"""Registry of the twin's tasks: name -> factory."""

from __future__ import annotations

from collections.abc import Callable

from pushcut.sim.tasks.base import Task
from pushcut.sim.tasks.click_bell import ClickBell
from pushcut.sim.tasks.stack_bowls import StackBowls

TASKS: dict[str, Callable[[], Task]] = {
    "click_bell": ClickBell,
    "stack_bowls_two": lambda: StackBowls(2),
    "stack_bowls_three": lambda: StackBowls(3),
}
