"""Offscreen rendering without a display: pick a working GL backend for MuJoCo before it loads.

MuJoCo reads ``MUJOCO_GL`` once, at import. On a machine with no display (a server, CI, a robot
PC over ssh) the default (GLFW) fails with ``gladLoadGL error``; EGL (GPU or Mesa) or OSMesa
(software) render offscreen. :func:`choose` runs when ``pushcut`` is imported: an explicit
``MUJOCO_GL`` always wins, a display keeps the default, otherwise the first backend whose library
loads is chosen, and said once on stderr. ``PYOPENGL_PLATFORM`` follows, as MuJoCo's Python
contexts need.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

BACKENDS = (("egl", "EGL"), ("osmesa", "OSMesa"))  # (MUJOCO_GL value, the library it loads)


def choose(environ=os.environ, find_library=ctypes.util.find_library, say=True) -> str | None:
    """Set ``MUJOCO_GL`` (and ``PYOPENGL_PLATFORM``) when nothing chose a backend and there is no
    display; returns the backend chosen here, or None when it left things as they were."""
    if environ.get("MUJOCO_GL") or environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    for backend, library in BACKENDS:
        if find_library(library):
            environ["MUJOCO_GL"] = backend
            environ.setdefault("PYOPENGL_PLATFORM", backend)
            if say:
                print(f"pushcut: no display; MuJoCo renders offscreen with MUJOCO_GL={backend} "
                      "(set MUJOCO_GL to choose another)", file=sys.stderr)
            return backend
    if say:
        print("pushcut: no display and neither EGL nor OSMesa found: rendering will fail; install libegl1 "
              "(or libosmesa6) or set MUJOCO_GL", file=sys.stderr)
    return None
