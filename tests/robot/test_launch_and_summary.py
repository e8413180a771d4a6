"""Launch files as far as this machine allows (no `launch` package on PyPI), and trial summaries."""

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pushcut.ros import composition

LAUNCH = Path(__file__).resolve().parents[2] / "ros2_ws/src/pushcut_ros/launch"


def _launch_args(path: Path) -> dict:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGS":
            from pushcut.ros.inputs import HEARTBEAT_TIMEOUT_S  # the names the launch files take defaults from

            names = {"COMMAND_HZ": composition.COMMAND_HZ, "HEARTBEAT_TIMEOUT_S": HEARTBEAT_TIMEOUT_S, "str": str}
            return eval(compile(ast.Expression(node.value), str(path), "eval"), {"__builtins__": {}}, names)
    raise AssertionError(f"{path.name} declares no ARGS")


@pytest.mark.parametrize("name,fn", [("twin_eval.launch.py", composition.twin_eval),
                                     ("robot_eval.launch.py", composition.robot_eval)])
def test_launch_files_compile_and_use_the_shared_composition(name, fn):
    path = LAUNCH / name
    src = path.read_text()
    compile(src, str(path), "exec")
    imported = {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)
                and n.module == "pushcut_ros.composition" for a in n.names}
    assert "def generate_launch_description" in src and fn.__name__ in imported
    args = _launch_args(path)
    assert {"task", "bundle", "num_trials", "log_dir"} <= set(args)
    if fn is composition.robot_eval:
        assert {"head_device", "left_wrist_device", "right_wrist_device", "left_can", "right_can", "sim"} <= set(args)
        assert "LifecycleNode" in src and "TRANSITION_ACTIVATE" in src
        assert {"driver", "speed_percent"} <= set(args) and "remappings=list(s.remappings)" in src


def test_package_installs_launch_and_params():
    pkg = LAUNCH.parent
    setup = (pkg / "setup.py").read_text()
    assert 'glob("launch/*.launch.py")' in setup and 'glob("config/*.yaml")' in setup
    xml = (pkg / "package.xml").read_text()
    assert "<build_type>ament_python</build_type>" in xml
    for script in ("camera_node", "policy_node", "twin_node", "trial_node", "piper_arm_node"):
        assert f"{script} = pushcut_ros.{script}:main" in setup


def test_compositions_name_real_nodes(bundle):
    from pushcut.ros.runner import CLASSES

    robot = composition.robot_eval("click_bell", str(bundle), {"head": "0", "left_wrist": "2", "right_wrist": "4"},
                                   emulate=True)
    assert {s.executable for s in robot} <= set(CLASSES)
    arms = [s for s in robot if s.executable == "piper_arm_node"]
    assert [(s.namespace, s.parameters["can_port"], s.lifecycle) for s in arms] == [
        ("left", "can_left", True), ("right", "can_right", True)]
    twin = composition.twin_eval("click_bell", str(bundle))
    assert [s.executable for s in twin] == ["twin_node", "policy_node", "trial_node"]
    assert twin[0].parameters["cameras"] == ["head"]  # the bundle's cameras, from its manifest
    with pytest.raises(ValueError, match="unknown camera"):
        composition.robot_eval("click_bell", str(bundle), {"belly": "0"})
    # every node parameter in the compositions is one the node declares
    from pushcut.ros.params import defaults
    from pushcut.ros.piper_arm_node import ArmNodeParams
    from pushcut.ros.policy_node import PolicyNodeParams
    from pushcut.ros.runner import _node_class

    dataclass_params = {"piper_arm_node": ArmNodeParams, "policy_node": PolicyNodeParams}
    for spec in robot + twin:
        if spec.executable in dataclass_params:
            assert set(spec.parameters) <= set(defaults(dataclass_params[spec.executable])), spec
            continue
        src = inspect.getsource(_node_class(spec.executable))
        for key in spec.parameters:
            assert f'"{key}"' in src, (spec.executable, key)


def test_trials_summary_command(tmp_path):
    from pushcut.deploy.trials import TrialLog

    log = TrialLog(tmp_path / "trials.jsonl")
    for i, outcome in enumerate(["success", "failure", "success", "timeout", "aborted"], 1):
        log.append({"task": "click_bell", "trial": i, "outcome": outcome, "duration_s": 10.0})
    log.append({"task": "stack_bowls_two", "trial": 1, "outcome": "success", "duration_s": 30.0})
    cmd = [sys.executable, "-m", "pushcut.deploy.trials", "summary", str(log.path), "--wandb", "offline"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    assert "click_bell" in out and "2/5" in out and "95% CI" in out and "stack_bowls_two" in out
    assert "1 aborted (counted as failures)" in out
    assert (tmp_path / "trials.png").stat().st_size > 1000
    assert any((tmp_path / "wandb").iterdir())
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    r = subprocess.run([sys.executable, "-m", "pushcut.deploy.trials", "summary", str(empty)],
                       check=False, capture_output=True, text=True)
    assert r.returncode != 0 and "no finished trials" in r.stderr
    json.dumps(log.read())


def test_trial_log_reader_accepts_only_valid_rows_and_never_writes(tmp_path):
    from pushcut.deploy.trials import TrialLog

    missing = TrialLog(tmp_path / "nowhere" / "trials.jsonl")
    assert missing.read() == [] and missing.next_trial("click_bell") == 1
    assert not (tmp_path / "nowhere").exists()  # reading created nothing
    good = {"task": "click_bell", "trial": 1, "outcome": "success", "success": True}
    lines = [
        json.dumps(good).encode(),
        b'{"task": "click_bell", "trial": 2, "outc',  # torn by a kill
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        json.dumps({"trial": 3, "outcome": "failure", "success": False}).encode(),  # no task
        json.dumps({"task": "click_bell", "outcome": "failure", "success": False}).encode(),  # no trial
        json.dumps({**good, "trial": 4, "outcome": "failure"}).encode(),  # success disagrees with outcome
        json.dumps({**good, "trial": 5, "outcome": "maybe"}).encode(),
        json.dumps({**good, "trial": 6}).encode(),
    ]
    path = tmp_path / "trials.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    before = path.read_bytes()
    log = TrialLog(path)
    assert [r["trial"] for r in log.read()] == [1, 6]
    assert [n for n, _ in log.skipped] == [2, 3, 4, 5, 6, 7, 8]
    reasons = dict(log.skipped)
    assert "not JSON" in reasons[2] and "UTF-8" in reasons[3] and "not an object" in reasons[4]
    assert "task" in reasons[5] and "trial" in reasons[6] and "agree" in reasons[7] and "outcome" in reasons[8]
    assert log.next_trial("click_bell") == 7 and path.read_bytes() == before
    r = subprocess.run([sys.executable, "-m", "pushcut.deploy.trials", "summary", str(path)],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 0 and "skipped 7 invalid line(s)" in r.stdout and "2/2 " in r.stdout
    r = subprocess.run([sys.executable, "-m", "pushcut.deploy.trials", "summary", str(tmp_path / "no.jsonl")],
                       check=False, capture_output=True, text=True)
    assert r.returncode != 0 and "no such trial log" in r.stderr and not (tmp_path / "no.jsonl").exists()


def test_colcon_builds_the_workspace_and_an_installed_node_joins_the_graph(tmp_path):
    import os
    import shutil
    import signal
    import time

    import rclpy

    root = Path(__file__).resolve().parents[2]
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent))
    assert colcon, "colcon is installed beside this Python (make setup)"
    r = subprocess.run([colcon, "--log-base", str(tmp_path / "log"), "build", "--base-paths",
                        str(root / "ros2_ws" / "src"), "--build-base", str(tmp_path / "build"),
                        "--install-base", str(tmp_path / "install")],
                       check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    install = tmp_path / "install"
    share = install / "pushcut_ros" / "share" / "pushcut_ros"
    assert (install / "setup.bash").exists() and (share / "config" / "params.yaml").exists()
    assert {p.name for p in (share / "launch").iterdir()} >= {"robot_eval.launch.py", "twin_eval.launch.py"}
    node = install / "pushcut_ros" / "lib" / "pushcut_ros" / "twin_node"
    shebang = Path(node.read_text().splitlines()[0][2:])
    assert shebang.parent == Path(sys.executable).parent  # the environment that holds pushcut and rclpy
    assert not (root / "ros2_ws" / "src" / "pushcut_ros" / "build").exists()  # nothing written into the tree
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    command = f"source {install / 'setup.bash'} && exec {node} --ros-args -p image_height:=32 -p image_width:=32"
    proc = subprocess.Popen(["bash", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = rclpy.create_node("colcon_probe", context=context)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "twin" not in probe.get_node_names():
            assert proc.poll() is None, proc.stdout.read()[-2000:]
            time.sleep(0.2)
        assert "twin" in probe.get_node_names()
    finally:
        probe.destroy_node()
        rclpy.shutdown(context=context)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out[-2000:]  # a clean exit on Ctrl-C


def test_params_file_states_every_node_parameter_and_its_default():
    import yaml

    from pushcut.ros.params import defaults
    from pushcut.ros.piper_arm_node import ArmNodeParams
    from pushcut.ros.policy_node import PolicyNodeParams

    pkg = LAUNCH.parent
    params = yaml.safe_load((pkg / "config/params.yaml").read_text())
    for node, module in [("camera", "camera_node"), ("policy", "policy_node"), ("piper_arm", "piper_arm_node"),
                         ("trial", "trial_node"), ("twin", "twin_node")]:
        declared = {}  # nodes that declare parameters one by one
        for call in ast.walk(ast.parse((pkg / "pushcut_ros" / f"{module}.py").read_text())):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "declare_parameter":
                declared[call.args[0].value] = ast.literal_eval(call.args[1])
        declared |= defaults({"policy": PolicyNodeParams, "piper_arm": ArmNodeParams}[node]) if not declared else {}
        stated = params[node]["ros__parameters"]
        assert set(stated) <= set(declared), f"{node}: params.yaml names unknown {set(stated) - set(declared)}"
        assert {k: declared[k] for k in stated} == stated, f"{node}: params.yaml disagrees with the node's defaults"
        assert set(stated) == set(declared), f"{node}: params.yaml leaves out {set(declared) - set(stated)}"


def test_each_default_is_declared_once():
    """The arm node's limits and rates are the driver's and the safety layer's; the policy node's
    command rate is the driver's, and its action rate and arm speed are the bundle's (no parameter
    restates them); the launch file states none of them again."""
    from pushcut.deploy.piper.driver import DriverConfig
    from pushcut.deploy.piper.safety import SafetyConfig
    from pushcut.ros.composition import COMMAND_HZ
    from pushcut.ros.piper_arm_node import ArmNodeParams
    from pushcut.ros.policy_node import PolicyNodeParams

    arm, policy = ArmNodeParams(), PolicyNodeParams()
    assert (arm.max_relative_target, arm.rate_hz, arm.speed_percent) == (
        SafetyConfig().max_relative_target, DriverConfig().rate_hz, DriverConfig().speed_percent)
    assert policy.command_hz == COMMAND_HZ
    assert not {"step_hz", "action_hz", "speed_percent"} & set(vars(policy))  # the bundle's action contract
    launch = ast.parse((LAUNCH / "robot_eval.launch.py").read_text())
    args = next(n.value for n in ast.walk(launch)
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "ARGS")
    literal = {k.value: v.value for k, v in zip(args.keys, args.values) if isinstance(v, ast.Constant)}
    assert not {"command_hz", "heartbeat_timeout_s"} & set(literal)  # taken from the code
    assert literal["speed_percent"] == ""  # "": the bundle's
