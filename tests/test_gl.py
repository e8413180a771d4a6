"""The offscreen GL choice made when pushcut is imported, and an entry point on a headless machine."""

import os
import subprocess
import sys

from pushcut import gl


def test_an_explicit_choice_or_a_display_wins_else_the_first_backend_that_loads():
    found = {"EGL": None, "OSMesa": "libOSMesa.so.8"}
    env = {}
    assert gl.choose(env, found.get, say=False) == "osmesa"
    assert env == {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    env = {}
    assert gl.choose(env, {"EGL": "libEGL.so.1", "OSMesa": "x"}.get, say=False) == "egl" and env["MUJOCO_GL"] == "egl"
    for given in ({"MUJOCO_GL": "glfw"}, {"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"}):
        env = dict(given)
        assert gl.choose(env, found.get, say=False) is None and env == given
    env = {}
    assert gl.choose(env, {}.get, say=False) is None and env == {}


def test_an_entry_point_renders_on_a_headless_machine_without_mujoco_gl(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "pushcut.sim.demos", "num_episodes=1", "env.image_size=[32,32]",
                        f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"], check=False, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MuJoCo renders offscreen with MUJOCO_GL=egl" in r.stderr
    assert (tmp_path / "click_bell" / "meta.json").exists()
