"""pushcut: a VLA policy from GRPO in simulation to a real AgileX Piper dual-arm robot.

The package is one import namespace over the repository's top-level folders
(``pushcut.sim`` is ``sim/``, ``pushcut.training`` is ``training/`` ...); see pyproject.toml.
The data flow reads from the folders: configs -> sim + policy -> training -> checkpoint ->
deploy (export, engine) -> ros2_ws nodes -> trial logs.
"""

from pushcut import gl as _gl

__version__ = "0.1.0"
_gl.choose()  # before anything imports MuJoCo
