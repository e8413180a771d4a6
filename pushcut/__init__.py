"""pushcut: a VLA policy from GRPO in simulation to a real AgileX Piper dual-arm robot.

The package is one import namespace over the repository's top-level folders
(``pushcut.sim`` is ``sim/``, ``pushcut.training`` is ``training/`` ...); see pyproject.toml.
The data flow reads from the folders: configs -> sim + policy -> training -> checkpoint ->
export (in policy/: it reads checkpoints with torch) -> bundle -> deploy (engine, server, driver)
-> ros2_ws nodes -> trial logs. The modules directly under ``pushcut/`` are the ground floor
(the ``Policy`` interface, motion, artefacts, devices, calibration files): every folder may
import them and they import none of the folders (tests/test_structure.py).
"""

from pushcut import gl as _gl

__version__ = "0.1.0"
_gl.choose()  # before anything imports MuJoCo
