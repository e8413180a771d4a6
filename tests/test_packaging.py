"""The package as users install it: every folder of code and configs listed, and a wheel that
installs into a fresh environment, imports every module and runs an entry point."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_table():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_folder_of_code_and_configs_is_a_listed_package():
    table = _setuptools_table()
    listed, roots = set(table["packages"]), table["package-dir"]
    expected = set()
    for package, folder in roots.items():
        for d in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            if "__pycache__" in d.parts or not any(f.suffix in (".py", ".yaml") for f in d.iterdir()):
                continue
            expected.add(".".join([package, *d.relative_to(ROOT / folder).parts]))
    assert expected - listed == set(), f"folders not packaged: {sorted(expected - listed)}"
    assert listed - expected == set(), f"listed packages without a folder: {sorted(listed - expected)}"


def test_the_wheel_installs_imports_every_module_and_runs_an_entry_point(tmp_path):
    src = tmp_path / "src"  # the tracked tree, so that the build leaves nothing in the checkout
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for name in tracked.splitlines():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist")], check=False, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert "Warning" not in build.stderr and "!!" not in build.stderr, build.stderr[-3000:]  # a clean build
    wheel = next((tmp_path / "dist").glob("pushcut-*.whl"))
    # a fresh venv holding only the wheel; the project's requirements come from this environment
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([venv / "bin" / "python", "-c", purelib], check=True, capture_output=True,
                               text=True).stdout.strip())
    (site / "requirements_from_here.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env.pop("PYTHONPATH", None)
    code = (
        "import importlib, pkgutil, pushcut\n"
        f"assert pushcut.__file__.startswith({str(venv)!r}), pushcut.__file__\n"
        "names = [m.name for m in pkgutil.walk_packages(pushcut.__path__, 'pushcut.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(len(names))\n"
    )
    r = subprocess.run([venv / "bin" / "python", "-c", code], check=False, capture_output=True, text=True,
                       timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.split()[-1]) > 60  # every module of the tree, the twin and the ROS nodes included
    r = subprocess.run([venv / "bin" / "pushcut-demos", "num_episodes=1", "env.image_size=[32,32]",
                        f"out_dir={tmp_path / 'demos'}", f"hydra.run.dir={tmp_path / 'run'}"],
                       check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "demos" / "click_bell" / "meta.json").exists()


def test_onnxruntime_comes_from_one_build_chosen_by_an_extra():
    """``onnxruntime`` and ``onnxruntime-gpu`` share one module, so neither is a base requirement:
    ``pushcut[cpu]`` brings the one, ``pushcut[gpu]`` the other, and the CPU setup installs [cpu]."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["cpu"]] == ["onnxruntime"]
    assert [d.split(">")[0] for d in extras["gpu"]] == ["onnxruntime-gpu"]
    assert '".[dev,libero,cpu]"' in (ROOT / "scripts" / "setup.sh").read_text()
