"""ROS parameters from frozen dataclasses: each field is declared with its default, read back, and
the dataclass built from the values, so a node's ranges are checked as every config's are
(``pushcut.configs.ranges``) and each default is stated once (the arm node's come from the driver's
and the safety layer's configs)."""

from __future__ import annotations

import dataclasses

from pushcut.configs import ConfigError


def defaults(cls) -> dict:
    """The fields' defaults as ROS parameter values (tuples as lists)."""
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in dataclasses.fields(cls)}


def declare(node, cls):
    """Declare every field of ``cls`` on ``node`` with its default; the dataclass of the values set.
    ValueError naming the parameter when one is out of its range."""
    values = {}
    for name, default in defaults(cls).items():
        node.declare_parameter(name, default)
        value = node.get_parameter(name).value
        values[name] = tuple(value) if isinstance(default, list) else value
    try:
        return cls(**values)
    except (ConfigError, ValueError, TypeError) as exc:
        raise ValueError(f"{node.get_name()} parameters: {exc}") from exc
