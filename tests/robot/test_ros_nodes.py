"""The ROS 2 nodes with real rclpy and DDS on loopback."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from pushcut.deploy.broker import ActionChunkBroker
from pushcut.deploy.trials import TrialLog, wilson_interval
from pushcut.motion import smooth_path
from pushcut.ros.camera_node import CameraNode
from pushcut.ros.conversions import arm_state_msg, image_msg
from pushcut.ros.piper_arm_node import PiperArmNode
from pushcut.ros.policy_node import PolicyNode
from pushcut.ros.topics import LATCHED
from pushcut.ros.trial_node import TrialNode
from pushcut.ros.twin_node import TwinNode
from tests.training.conftest import MICRO_ENV


def _params(**kw):
    return [Parameter(k, value=v) for k, v in kw.items()]


def _topics(node):
    return dict(node.get_publisher_names_and_types_by_node(node.get_name(), node.get_namespace()))


def test_node_topics_and_types(graph, bundle):
    twin = graph.add(TwinNode(context=graph.context, parameter_overrides=_params(image_height=32, image_width=32)))
    policy = graph.add(PolicyNode(context=graph.context, parameter_overrides=_params(bundle=str(bundle))))
    trial = graph.add(TrialNode(context=graph.context, parameter_overrides=_params(record=False)))
    graph.spin_for(0.3)
    t = _topics(twin)
    assert t["/cameras/head/image_raw"] == ["sensor_msgs/msg/Image"]
    assert t["/left/joint_states"] == ["sensor_msgs/msg/JointState"] == t["/right/joint_states"]
    assert t["/twin/success"] == ["std_msgs/msg/Bool"] and t["/twin/done"] == ["std_msgs/msg/Bool"]
    p = _topics(policy)
    assert p["/left/joint_command"] == ["sensor_msgs/msg/JointState"] == p["/right/joint_command"]
    assert p["/policy/latency_ms"] == ["std_msgs/msg/Float64"]
    subs = dict(policy.get_subscriber_names_and_types_by_node("policy", "/"))
    assert subs["/cameras/head/image_raw"] == ["sensor_msgs/msg/Image"]
    assert subs["/instruction"] == ["std_msgs/msg/String"]
    assert _topics(trial)["/instruction"] == ["std_msgs/msg/String"]
    services = dict(trial.get_service_names_and_types_by_node("trial", "/"))
    assert services["/trial/mark"] == ["std_srvs/srv/SetBool"] and services["/trial/start"] == ["std_srvs/srv/Trigger"]


def test_policy_node_drops_stale_frames(graph, bundle):
    params = _params(bundle=str(bundle), command_hz=50)
    policy = graph.add(PolicyNode(context=graph.context, parameter_overrides=params))
    probe = graph.add(rclpy_node(graph, "probe"))
    img_pub = probe.create_publisher(Image, "/cameras/head/image_raw", 10)
    state_pubs = {a: probe.create_publisher(JointState, f"/{a}/joint_states", 10) for a in ("left", "right")}
    commands = []
    probe.create_subscription(JointState, "/left/joint_command", commands.append, 10)
    q7 = np.array([0.0, 1.2, -1.1, 0.0, 0.9, 0.0, 0.07])
    img = np.full((32, 32, 3), 128, np.uint8)

    def publish(age_s):
        t = probe.get_clock().now()
        stamp = (t - rclpy_duration(age_s)).to_msg()
        img_pub.publish(image_msg(img, stamp, "head"))
        for pub in state_pubs.values():
            pub.publish(arm_state_msg(q7, stamp))

    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        publish(age_s=1.0)  # a second old: stale
        graph.spin_for(0.02)
    assert commands == [] and policy.stale_drops > 0 and policy.inferences == 0
    assert graph.spin_until(lambda: (publish(0.0), len(commands) > 3)[1], timeout=10)
    assert commands[0].name == ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
    assert policy.inferences >= 1 and all(np.isfinite(commands[-1].position))


def _policy_rig(graph, bundle, **params):
    policy = graph.add(PolicyNode(context=graph.context, parameter_overrides=_params(bundle=str(bundle),
                                                                                    command_hz=50, **params)))
    probe = graph.add(rclpy_node(graph, "probe"))
    img_pub = probe.create_publisher(Image, "/cameras/head/image_raw", 10)
    state_pubs = {a: probe.create_publisher(JointState, f"/{a}/joint_states", 10) for a in ("left", "right")}
    commands = []
    probe.create_subscription(JointState, "/left/joint_command", lambda m: commands.append((time.monotonic(), m)), 10)

    def publish(image=None, q7=None):
        q7 = np.array([0.0, 1.2, -1.1, 0.0, 0.9, 0.0, 0.07]) if q7 is None else q7
        stamp = probe.get_clock().now().to_msg()
        img_pub.publish(image(stamp) if image else image_msg(np.full((32, 32, 3), 128, np.uint8), stamp, "head"))
        for pub in state_pubs.values():
            pub.publish(arm_state_msg(q7, stamp))

    return policy, publish, commands


def _bad_image(encoding, size=(32, 32), cut=0):
    def make(stamp):
        msg = image_msg(np.full((*size, 3), 128, np.uint8), stamp, "head")
        msg.encoding = encoding
        msg.data = bytes(msg.data)[: len(msg.data) - cut]
        return msg
    return make


def test_policy_node_drops_bad_input_says_why_and_keeps_running(graph, bundle, capfd):
    policy, publish, commands = _policy_rig(graph, bundle)
    nan_state = np.array([np.nan] * 6 + [0.07])
    far_state = np.array([10.0, 1.2, -1.1, 0.0, 0.9, 0.0, 0.07])
    for bad in ({"image": _bad_image("mono8")}, {"image": _bad_image("rgba8")},
                {"image": _bad_image("rgb8", cut=7)}, {"q7": nan_state}, {"q7": far_state}):
        end = time.monotonic() + 1.05  # longer than the 1 s log throttle: each reason is said
        while time.monotonic() < end:  # the bad input beside good ones of the other kind
            publish(**bad)
            graph.spin_for(0.02)
        graph.spin_for(policy.max_age + 0.1)  # the good ones go stale before the next kind of bad input
    assert commands == [] and policy.inferences == 0  # nothing derived from bad input
    assert policy.rejected["left joint state"] > 10 and policy.rejected["head image"] > 10
    err = capfd.readouterr().err
    assert "dropping left joint state: non-finite positions" in err and "outside the Piper's limits" in err
    assert "encoding 'mono8'" in err and "encoding 'rgba8'" in err and "truncated or padded" in err
    assert err.count("dropping left joint state") < policy.rejected["left joint state"] / 3  # throttled
    assert graph.spin_until(lambda: (publish(), len(commands) > 3)[1], timeout=10)  # still running
    assert all(np.all(np.isfinite(m.position)) for _, m in commands)


@pytest.mark.parametrize("execution", ["sync", "async"])
def test_policy_node_abandons_the_chunk_when_inputs_go_stale(graph, bundle, execution):
    policy, publish, commands = _policy_rig(graph, bundle, execution=execution)
    assert graph.spin_until(lambda: (publish(), len(commands) > 3)[1], timeout=10)
    last_fresh = time.monotonic()  # the cameras and arms stop here, mid-chunk
    graph.spin_for(1.0)
    lag = commands[-1][0] - last_fresh
    assert lag <= policy.max_age + 0.15, lag  # within max_age_s of the last fresh frame (+ a tick and a spin)
    assert policy.abandoned_chunks >= 1


def test_chunk_broker_follows_the_twins_smoothed_path():
    chunk = np.array([[1.0, 0.0], [2.0, 1.0], [2.0, 2.0]])
    broker = ActionChunkBroker(substeps=4)
    broker.set_chunk(chunk, current=np.zeros(2))
    out = [broker.next() for _ in range(12)]
    assert broker.next() is None and broker.remaining == 0
    np.testing.assert_allclose(np.array(out), smooth_path(np.zeros(2), chunk, 4))
    np.testing.assert_allclose(out[3], chunk[0]) and np.testing.assert_allclose(out[-1], chunk[-1])
    broker.set_chunk(chunk + 1)  # the next chunk starts from the last command handed out
    np.testing.assert_allclose(broker._path[0], smooth_path(chunk[-1], chunk + 1, 4)[0])
    with pytest.raises(ValueError, match="finite"):
        broker.set_chunk(np.full((2, 2), np.nan))


def _call(graph, client, timeout=15):
    assert client.wait_for_service(timeout_sec=2)
    future = client.call_async(Trigger.Request())
    assert graph.spin_until(future.done, timeout)
    return future.result()


def test_piper_arm_lifecycle_node(graph):
    node = graph.add(PiperArmNode(context=graph.context, namespace="left",
                                  parameter_overrides=_params(can_port="vcan_ros_left", emulate=True)))
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    probe = graph.add(rclpy_node(graph, "arm_probe"))
    states, statuses = [], []
    probe.create_subscription(JointState, "/left/joint_states", states.append, 10)
    probe.create_subscription(String, "/left/arm_status", statuses.append, 10)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert node.arm.enabled and graph.spin_until(lambda: node.emulator.enabled, 2)
    cmd_pub = probe.create_publisher(JointState, "/left/joint_command", 10)
    send = every(0.01, lambda q: cmd_pub.publish(arm_state_msg(q, probe.get_clock().now().to_msg())))

    def reaches(target, timeout=5):
        return graph.spin_until(lambda: (send(target), np.allclose(node.emulator.state()[0], target[:6],
                                                                   atol=2e-3))[1], timeout)

    target = np.array([0.2, 0.4, -0.3, 0.1, 0.0, 0.0, 0.04])
    # a command at another speed than this arm's (a policy trained at 100% on an arm set to 50%) is
    # refused and counted, and the arm does not move
    q_start = node.emulator.state()[0]

    def at_speed(q, pct):
        msg = arm_state_msg(q, probe.get_clock().now().to_msg())
        msg.velocity = [float(pct)] * 7
        return msg

    fast = every(0.01, lambda q: cmd_pub.publish(at_speed(q, 100)))
    graph.spin_until(lambda: (fast(target), False)[1], timeout=0.5)
    np.testing.assert_allclose(node.emulator.state()[0], q_start, atol=2e-3)
    assert node.arm.safety.counts["rejected_speed"] > 0
    assert graph.spin_until(lambda: (cmd_pub.publish(at_speed(target, 50)),  # its own speed: taken
                                     np.allclose(node.emulator.state()[0], target[:6], atol=2e-3))[1], 5)
    assert reaches(target)
    assert graph.spin_until(lambda: states and np.allclose(states[-1].position[:6], target[:6], atol=3e-3), 3)
    assert states[-1].name[-1] == "gripper" and statuses and "enabled=True" in statuses[-1].data
    # lifecycle re-arms: deactivate holds and ignores commands, activate moves again
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    q_hold = node.arm.safety.last_target[:6].copy()  # the pose the driver measured and holds (it may lag the arm)
    graph.spin_until(lambda: (send(target - 0.1), False)[1], timeout=0.3)
    np.testing.assert_allclose(node.emulator.state()[0], q_hold, atol=2e-3)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert reaches(target - 0.05)
    # the stack's /estop: the damped stop, ~/resume refused while it is engaged, the release resumes
    estop = probe.create_publisher(Bool, "/estop", LATCHED)
    estop.publish(Bool(data=True))
    assert graph.spin_until(lambda: node.emulator.estopped, timeout=3)
    resume = probe.create_client(Trigger, "/left/piper_arm/resume")
    assert not _call(graph, resume).success
    estop.publish(Bool(data=False))
    assert graph.spin_until(lambda: not node.emulator.estopped and node.arm.enabled, timeout=15)
    assert node.emulator.enabled and node.arm.fault is None
    assert reaches(target)
    # ~/estop stops this arm and raises /estop for the whole stack, latched for nodes that join later
    assert _call(graph, probe.create_client(Trigger, "/left/piper_arm/estop")).success
    assert graph.spin_until(lambda: node.emulator.estopped, timeout=3)
    heard = []
    probe.create_subscription(Bool, "/estop", lambda m: heard.append(m.data), LATCHED)
    assert graph.spin_until(lambda: True in heard, timeout=3)
    estop.publish(Bool(data=False))  # the operator's release supersedes it
    assert graph.spin_until(lambda: not node.emulator.estopped and node.arm.enabled and not node.raised_estop, 15)
    assert reaches(target - 0.05)
    # a lost bus: ~/reinit only once deactivated, then activate moves again
    node.emulator.silent = True
    assert graph.spin_until(lambda: node.arm.fault is not None, timeout=2)
    reinit = probe.create_client(Trigger, "/left/piper_arm/reinit")
    assert not _call(graph, reinit).success  # still active
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    node.emulator.silent = False
    assert _call(graph, reinit).success
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert reaches(target)
    emulator, settle_speed = node.emulator, node.arm.cfg.settle_speed
    cuts = len(emulator.power_cuts)  # the vendor's reset in each resume cut power (at rest) too
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS  # cuts power from a settled hold
    assert len(emulator.power_cuts) == cuts + 6
    assert all(abs(v) < settle_speed for _, _, v in emulator.power_cuts)


def test_camera_node_publishes_frames_from_opencv(graph, tmp_path):
    video = tmp_path / "cam.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (80, 60))
    for i in range(10):
        frame = np.zeros((60, 80, 3), np.uint8)
        frame[:, :, 2] = 200  # red in BGR
        w.write(frame)
    w.release()
    cam = graph.add(CameraNode(context=graph.context, parameter_overrides=_params(
        camera_name="head", device=str(video), width=40, height=30, fps=50.0, loop=True)))
    probe = graph.add(rclpy_node(graph, "cam_probe"))
    got = []
    probe.create_subscription(Image, "/cameras/head/image_raw", got.append, 10)
    assert graph.spin_until(lambda: len(got) >= 15, timeout=5)  # loops past the file's 10 frames
    m = got[-1]
    assert cam.frames >= len(got) and not cam.lost
    assert (m.width, m.height, m.encoding) == (40, 30, "rgb8")
    img = np.frombuffer(m.data, np.uint8).reshape(30, 40, 3)
    assert img[..., 0].mean() > 150 and img[..., 2].mean() < 50  # converted to RGB
    lost = graph.add(CameraNode(context=graph.context, parameter_overrides=_params(
        camera_name="left_wrist", device=str(tmp_path / "missing.avi"))))
    graph.spin_for(0.3)
    assert lost.lost and lost.frames == 0


def test_wilson_interval_and_trial_log(tmp_path):
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.3968, abs=1e-3) and hi == pytest.approx(0.8922, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    log = TrialLog(tmp_path / "t.jsonl")
    log.append({"task": "click_bell", "trial": 1, "outcome": "success"})
    with open(log.path, "a") as f:
        f.write('{"task": "click_bell", "trial": 2, "outc')  # a write torn by a kill
    log.append({"task": "click_bell", "trial": 2, "outcome": "failure"})
    rows = log.read()
    assert [r["trial"] for r in rows] == [1, 2] and log.next_trial("click_bell") == 3
    with pytest.raises(ValueError, match="outcome"):
        log.append({"task": "click_bell", "trial": 3, "outcome": "maybe"})


def test_dry_run_matches_eval_on_the_same_seeds(bundle, tmp_path):
    from pushcut.deploy.engine import Engine
    from pushcut.ros.runner import dry_run
    from pushcut.training.eval import run_episodes

    seeds = list(range(100_000, 100_006))
    out = dry_run("click_bell", str(bundle), len(seeds), str(tmp_path), max_steps=MICRO_ENV.max_steps,
                  seed_start=seeds[0], timeout_s=300)
    ros = [r["success"] for r in out["trials"]]
    ref = [r["success"] for r in run_episodes(Engine(bundle), MICRO_ENV, seeds, 1, progress=False)]
    assert len(ros) == len(seeds) and [r["seed"] for r in out["trials"]] == seeds
    agree = sum(a == b for a, b in zip(ros, ref))
    assert agree >= len(seeds) - 1, (ros, ref)  # same seeds, same policy: at most one borderline flip
    assert out["latencies_ms"] and out["inferences"] >= len(seeds)
    recs = [r["recording"] for r in out["trials"]]
    assert all(os.path.getsize(p) > 1000 for p in recs)
    from mcap.reader import make_reader

    with open(recs[0], "rb") as f:
        topics = {ch.topic for _, ch, _ in make_reader(f).iter_messages()}
    assert {"/cameras/head/image_raw", "/left/joint_states", "/left/joint_command"} <= topics
    # the recorded trials as a LeRobot dataset: one episode each, the outcome on its last frame
    from pushcut.deploy.trials import main as trials_main
    from pushcut.lerobot import read_dataset

    trials_main(["lerobot", str(tmp_path / "trials.jsonl"), str(tmp_path / "lerobot")])
    info, episodes, tasks = read_dataset(tmp_path / "lerobot")
    assert info["total_episodes"] == len(seeds) and info["fps"] == 25 and set(tasks) == {"click the bell"}
    for ep, ok in zip(episodes, ros):
        n = len(ep["action"])
        assert n > 5 and ep["observation.state"].shape == (n, 14) and ep["observation.images.head"].shape[0] == n
        assert ep["next.success"][-1, 0] == float(ok) and not ep["next.success"][:-1].any()
        assert not np.allclose(ep["action"], ep["observation.state"])  # the commands, not the state again


def test_trial_log_survives_kill_9_mid_trial(bundle, tmp_path):
    log = TrialLog(tmp_path / "trials.jsonl")
    cmd = [sys.executable, "-m", "pushcut.ros.runner", "--bundle", str(bundle), "--log-dir", str(tmp_path),
           "--max-steps", "60"]
    proc = subprocess.Popen(cmd + ["--trials", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(log.read()) < 2:
        time.sleep(0.05)
        assert proc.poll() is None, "the dry run ended early"
    time.sleep(0.3)  # into the next trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = log.read()
    assert len(rows) >= 2
    assert [r["trial"] for r in rows] == list(range(1, len(rows) + 1))  # every finished trial, in order
    subprocess.run([*cmd, "--trials", "1"], check=True, timeout=180,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = log.read()
    assert after[: len(rows)] == rows and after[-1]["trial"] == len(rows) + 1  # numbering resumed


def every(period, fn):
    """``fn`` at most once per ``period`` seconds: commands at a control rate, as a commanding node
    sends them. A publish on every spin of the test's own loop floods this one process, and the
    arm's SDK and emulator threads then wait for the GIL long enough to trip the feedback watchdog."""
    last = [-period]

    def call(*args):
        if time.monotonic() - last[0] >= period:
            last[0] = time.monotonic()
            fn(*args)

    return call


def rclpy_node(graph, name):
    from rclpy.node import Node

    return Node(name, context=graph.context)


def rclpy_duration(seconds):
    from rclpy.duration import Duration

    return Duration(seconds=seconds)


def test_trial_node_starts_on_a_log_with_bad_lines(graph, tmp_path):
    good = {"task": "click_bell", "trial": 4, "outcome": "failure", "success": False}
    (tmp_path / "trials.jsonl").write_text(json.dumps(good) + '\n{"torn\n[1]\n')
    trial = graph.add(TrialNode(context=graph.context, parameter_overrides=_params(
        record=False, log_dir=str(tmp_path), terminal_ui=False)))
    assert trial.trial == 5 and [n for n, _ in trial.log.skipped] == [2, 3]


SHUTDOWN_PROBE = """
import sys
from rclpy._rclpy_pybind11 import RCLError
from rclpy.node import Node
from std_msgs.msg import String
from pushcut.ros.spin import spin_main

class Probe(Node):
    def __init__(self):
        super().__init__("shutdown_probe")
        if sys.argv[1] == "starting":
            self.context.shutdown()  # Ctrl-C while the node is still being built
        elif sys.argv[1] == "start_fails":
            raise RCLError("a publisher could not be created while the context is fine")
        self.pub = self.create_publisher(String, "probe", 1)
        self.create_timer(0.01, self._tick)

    def _tick(self):
        if sys.argv[1] == "shutdown":
            self.context.shutdown()  # as Ctrl-C's handler does, landing between a callback's lines
            self.pub.publish(String(data="x"))
        else:
            raise RCLError("a publish failed while the context is fine")

spin_main(Probe)
print("clean exit")
"""


@pytest.mark.parametrize("case,rc", [("shutdown", 0), ("fail", 1), ("starting", 0), ("start_fails", 1)])
def test_a_node_exits_cleanly_when_shutdown_lands_mid_publish_and_fails_loudly_otherwise(case, rc):
    """Ctrl-C while a timer publishes, or while the node is still creating its publishers, leaves
    the context invalid: the node still exits 0 (``ros2 launch`` and the runner read a non-zero exit
    as a crash); the same error with the context alive is a real failure and propagates."""
    proc = subprocess.run([sys.executable, "-c", SHUTDOWN_PROBE, case], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == rc, proc.stderr[-2000:]
    assert ("clean exit" in proc.stdout) == (rc == 0)
