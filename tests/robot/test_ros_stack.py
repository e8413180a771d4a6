"""The whole stack over real rclpy/DDS: one e-stop for every node, start-up in any order with one
process per node, and piper_ros's topic names."""

import time

import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool

from pushcut.deploy.bundle import BundleError
from pushcut.deploy.trials import TrialLog
from pushcut.ros.composition import robot_eval, twin_eval
from pushcut.ros.conversions import arm_state_msg, image_msg, stamp_to_s
from pushcut.ros.runner import dry_run, instantiate
from pushcut.ros.topics import ESTOP_TOPIC, LATCHED
from tests.robot.test_ros_nodes import _policy_rig, every, rclpy_node
from tests.training.conftest import MICRO_ENV


def _twin_stack(graph, bundle, log_dir, trials):
    specs = twin_eval("click_bell", str(bundle), trials, str(log_dir), max_steps=MICRO_ENV.max_steps, record=False)
    return {s.name: graph.add(instantiate(s, graph.context)) for s in specs}


def test_estop_silences_the_stack_aborts_the_trial_and_release_resumes(graph, bundle, tmp_path):
    nodes = _twin_stack(graph, bundle, tmp_path, trials=2)
    policy, trial, twin = nodes["policy"], nodes["trial"], nodes["twin"]
    probe = graph.add(rclpy_node(graph, "operator"))
    commands = []
    for arm in ("left", "right"):
        probe.create_subscription(JointState, f"/{arm}/joint_command", commands.append, 50)
    estop = probe.create_publisher(Bool, ESTOP_TOPIC, LATCHED)
    assert graph.spin_until(lambda: len(commands) > 10, timeout=60), "no commands before the e-stop"
    assert commands[-1].velocity.tolist() == [100.0] * 7  # the speed piper_ros reads: the one trained at
    estop.publish(Bool(data=True))
    assert graph.spin_until(lambda: policy.estop_at is not None, timeout=2)
    steps = twin.steps_applied
    graph.spin_for(0.5)
    last = max(stamp_to_s(c.header.stamp) for c in commands)
    assert last <= policy.estop_at + 1 / 50  # silent within one control tick of the e-stop
    assert twin.steps_applied == steps and trial.estopped
    rows = TrialLog(tmp_path / "trials.jsonl").read()
    assert [(r["outcome"], r.get("reason")) for r in rows] == [("aborted", "e-stop")]
    n = len(commands)
    graph.spin_for(0.5)
    assert len(commands) == n and trial.state == "idle"  # stays stopped: no new trial, no command
    estop.publish(Bool(data=False))
    assert graph.spin_until(lambda: trial.finished, timeout=120), "the trials did not go on after the release"
    rows = TrialLog(tmp_path / "trials.jsonl").read()
    assert [r["trial"] for r in rows] == [1, 2] and rows[1]["outcome"] != "aborted"
    assert len(commands) > n


def test_policy_node_stops_on_estop_and_acts_on_fresh_frames_after_the_release(graph, bundle):
    policy, publish, commands = _policy_rig(graph, bundle)  # no trial node: only the e-stop stops it
    estop = graph.add(rclpy_node(graph, "button")).create_publisher(Bool, ESTOP_TOPIC, LATCHED)
    tick = every(0.02, publish)
    assert graph.spin_until(lambda: (tick(), len(commands) > 2)[1], timeout=20)
    estop.publish(Bool(data=True))
    assert graph.spin_until(lambda: (tick(), policy.estop_at is not None)[1], timeout=2)
    graph.spin_until(lambda: (tick(), False)[1], timeout=1.0)  # fresh inputs keep coming: still silent
    assert max(stamp_to_s(m.header.stamp) for _, m in commands) <= policy.estop_at + 1 / 50
    released = time.monotonic()
    estop.publish(Bool(data=False))
    assert graph.spin_until(lambda: (tick(), commands[-1][0] > released)[1], timeout=20)
    assert stamp_to_s(commands[-1][1].header.stamp) > policy.estop_at


def test_the_estop_command_engages_and_releases_every_listener(graph, bundle):
    import os
    import subprocess
    import sys

    policy = _policy_rig(graph, bundle)[0]
    cmd = [sys.executable, "-m", "pushcut.ros.estop"]
    for args, engaged in (([], True), (["--release"], False)):
        proc = subprocess.Popen(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert graph.spin_until(lambda proc=proc: proc.poll() is not None, timeout=30)
        out = proc.stdout.read()
        assert proc.returncode == 0 and "acknowledged by" in out, (out, proc.stderr.read())
        assert graph.spin_until(lambda engaged=engaged: policy.estopped == engaged, timeout=2)
    alone = subprocess.run(cmd + ["--discovery-s", "0.5"], check=False, capture_output=True, text=True, timeout=30,
                           env={**os.environ, "ROS_DOMAIN_ID": "77"})
    assert alone.returncode == 1 and "no node listens" in alone.stderr


def test_an_empty_or_unreadable_instruction_idles_the_policy(graph, bundle):
    from std_msgs.msg import String

    policy, publish, commands = _policy_rig(graph, bundle)
    probe = graph.add(rclpy_node(graph, "trial_probe"))
    instruction = probe.create_publisher(String, "/instruction", LATCHED)
    tick = every(0.02, publish)
    assert graph.spin_until(lambda: (tick(), len(commands) > 2)[1], timeout=20)
    task = policy.instruction
    for idle in ("", "press the bell " * 20, "press\x1bthe bell"):  # idle; too long to read whole; a control byte
        instruction.publish(String(data=idle))
        assert graph.spin_until(lambda: policy.instruction == "", timeout=2)
        n = len(commands)
        graph.spin_until(lambda: (tick(), False)[1], timeout=1.0)
        assert len(commands) == n, f"commanded after the instruction {idle!r}"
        instruction.publish(String(data=task))  # a valid one: it acts again
        assert graph.spin_until(lambda n=n: (tick(), len(commands) > n)[1], timeout=20)
    assert policy.rejected["instruction"] == 2


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]], ids=["twin-policy-trial",
                                                                        "trial-policy-twin", "policy-trial-twin"])
def test_one_process_per_node_in_any_order_completes_the_trials(bundle, tmp_path, order):
    out = dry_run("click_bell", str(bundle), 2, str(tmp_path), max_steps=MICRO_ENV.max_steps, processes=True,
                  order=order, stagger_s=1.0, timeout_s=240)
    assert [r["trial"] for r in out["trials"]] == [1, 2]
    assert all(r["outcome"] in ("success", "failure", "timeout") for r in out["trials"])
    assert all(r["duration_s"] < 60 for r in out["trials"]), out["trials"]  # the policy drove them
    assert out["latencies_ms"], "the policy published no command"


def test_piper_ros_option_remaps_the_arm_topics_and_starts_no_arm_node(graph, bundle):
    with pytest.raises(BundleError, match=r"arms set to 30% speed; the policy was trained with the joints at 100%"):
        robot_eval("click_bell", str(bundle), {"head": "0"}, driver="piper_ros", speed_percent=30)
    with pytest.raises(BundleError, match="bundle acts at 25 Hz .* a command stream at 60 Hz"):
        robot_eval("click_bell", str(bundle), {"head": "0"}, driver="piper_ros", command_hz=60)
    arms = robot_eval("click_bell", str(bundle), {"head": "0"})  # the trained speed, from the bundle
    assert {s.parameters["speed_percent"] for s in arms if s.executable == "piper_arm_node"} == {100}
    # a first motion at low speed is an explicit rehearsal: the commands say 30%, the trial log says why
    specs = robot_eval("click_bell", str(bundle), {"head": "0"}, driver="piper_ros", speed_percent=30, rehearsal=True)
    assert "rehearsal at 30% speed (trained at 100%)" in next(s for s in specs if s.name == "trial").parameters["notes"]
    assert [s.executable for s in specs] == ["camera_node", "policy_node", "trial_node"]
    policy_spec = next(s for s in specs if s.executable == "policy_node")
    policy = graph.add(instantiate(policy_spec, graph.context))
    probe = graph.add(rclpy_node(graph, "piper_ros"))
    img_pub = probe.create_publisher(Image, "/cameras/head/image_raw", 10)
    state_pubs = {a: probe.create_publisher(JointState, f"/{a}/joint_states_single", 10) for a in ("left", "right")}
    got = {"left": [], "right": []}
    for arm, received in got.items():
        probe.create_subscription(JointState, f"/{arm}/joint_ctrl_single", received.append, 10)
    q7 = np.array([0.0, 1.2, -1.1, 0.0, 0.9, 0.0, 0.07])

    def publish():
        stamp = probe.get_clock().now().to_msg()
        img_pub.publish(image_msg(np.full((32, 32, 3), 128, np.uint8), stamp, "head"))
        for pub in state_pubs.values():
            pub.publish(arm_state_msg(q7, stamp))

    tick = every(0.02, publish)
    assert graph.spin_until(lambda: (tick(), all(len(v) > 2 for v in got.values()))[1], timeout=20)
    msg = got["left"][-1]
    assert msg.name == ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
    assert msg.velocity.tolist() == [30.0] * 7 and len(msg.position) == 7  # the rehearsal's speed
    topics = dict(policy.get_publisher_names_and_types_by_node("policy", "/"))
    assert "/left/joint_ctrl_single" in topics and "/left/joint_command" not in topics
    with pytest.raises(ValueError, match="driver"):
        robot_eval("click_bell", str(bundle), {"head": "0"}, driver="ros2_control")


def test_an_arm_node_in_its_own_process_is_brought_up_through_its_lifecycle_services(graph, tmp_path):
    import signal

    from std_msgs.msg import String

    from pushcut.ros.composition import NodeSpec
    from pushcut.ros.runner import _bring_up, process_name, start_process

    spec = NodeSpec("piper_arm_node", "piper_arm", namespace="left", lifecycle=True,
                    parameters={"can_port": "vcan_process", "emulate": True})
    proc = start_process(spec, tmp_path)
    log = tmp_path / f"{process_name(spec)}.log"
    try:
        probe = graph.add(rclpy_node(graph, "launcher"))
        status = []
        probe.create_subscription(String, "/left/arm_status", status.append, 10)
        try:
            _bring_up(probe, graph.executor, spec)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; the node said:\n{log.read_text()[-2000:]}") from exc
        assert graph.spin_until(lambda: status and "enabled=True fault=none" in status[-1].data, timeout=5), \
            log.read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
