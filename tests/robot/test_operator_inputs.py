"""Operator inputs over real rclpy/DDS: an e-stop heard whatever the sender's QoS, publishers the
stack cannot hear reported, and the heartbeat (deadman) hold."""

import itertools
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from pushcut.ros.conversions import arm_state_msg, stamp_to_s
from pushcut.ros.inputs import SENDER_QOS, StateInput
from pushcut.ros.piper_arm_node import PiperArmNode
from pushcut.ros.policy_node import PolicyNode
from pushcut.ros.topics import ESTOP_TOPIC, LATCHED
from tests.robot.test_ros_nodes import _call, _params, _policy_rig, every, rclpy_node

_ports = itertools.count()


def _arm(graph, arm="left", **params):
    # a port per test: piper_sdk keeps one interface per port name for the process's lifetime
    node = graph.add(PiperArmNode(context=graph.context, namespace=arm, parameter_overrides=_params(
        can_port=f"vcan_inputs_{arm}_{next(_ports)}", emulate=True, **params)))
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return node


def _close_arm(node):
    node.trigger_shutdown()  # a stopped arm is left powered and damped, its bus closed


@pytest.mark.parametrize("sender", list(SENDER_QOS))
def test_an_estop_of_any_sender_qos_stops_the_policy_in_a_tick_and_damp_stops_the_arm(graph, bundle, sender):
    arm = _arm(graph)
    policy, publish, commands = _policy_rig(graph, bundle)
    estop = graph.add(rclpy_node(graph, "pedal")).create_publisher(Bool, ESTOP_TOPIC, SENDER_QOS[sender])
    tick = every(0.02, publish)
    assert graph.spin_until(lambda: (tick(), len(commands) > 2)[1], timeout=20)
    assert graph.spin_until(lambda: estop.get_subscription_count() >= 2, timeout=5)  # both nodes matched
    estop.publish(Bool(data=True))
    assert graph.spin_until(lambda: (tick(), policy.estop_at is not None and arm.emulator.estopped)[1], timeout=3)
    graph.spin_until(lambda: (tick(), False)[1], timeout=0.5)  # fresh inputs keep coming: still silent
    assert max(stamp_to_s(m.header.stamp) for _, m in commands) <= policy.estop_at + 1 / 50
    assert arm.stack_estopped and policy.estopped
    _close_arm(arm)


def test_a_late_joining_node_hears_the_latched_stop(graph, bundle):
    arm = _arm(graph)
    probe = graph.add(rclpy_node(graph, "operator"))
    assert _call(graph, probe.create_client(Trigger, "/left/piper_arm/estop")).success  # pushcut's own latch
    cli = probe.create_publisher(Bool, ESTOP_TOPIC, LATCHED)  # as pushcut-estop publishes
    cli.publish(Bool(data=True))
    late = graph.add(PolicyNode(context=graph.context, parameter_overrides=_params(bundle=str(bundle))))
    assert graph.spin_until(lambda: late.estopped, timeout=3)
    _close_arm(arm)


def test_each_publishers_messages_apply_once_and_in_its_order(graph):
    node = graph.add(rclpy_node(graph, "listener"))
    heard = []
    state = StateInput(node, Bool, "/order_check", lambda m: heard.append(m.data))
    assert len(state.subscriptions) == 3

    def info(gid, seq):
        return {"publisher_gid": {"data": gid}, "publication_sequence_number": seq, "source_timestamp": seq}

    state._on_message(Bool(data=True), info(b"a", 2))  # a stop
    state._on_message(Bool(data=True), info(b"a", 2))  # the same stop through another subscription
    state._on_message(Bool(data=False), info(b"a", 1))  # an older release, delivered late: never after the stop
    state._on_message(Bool(data=False), info(b"b", 1))  # another sender's release counts
    assert heard == [True, False] and state.duplicates == 2


def test_a_publisher_the_stack_cannot_hear_is_reported_on_diagnostics(graph, bundle, capfd):
    arm = _arm(graph)
    policy = graph.add(PolicyNode(context=graph.context, parameter_overrides=_params(bundle=str(bundle))))
    diagnostics = []
    probe = graph.add(rclpy_node(graph, "watcher"))
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    graph.spin_for(1.2)
    assert not any(s.level == DiagnosticStatus.ERROR for d in diagnostics for s in d.status)
    other = rclpy.Context()  # a sender in another process: an e-stop of the wrong type
    rclpy.init(context=other)
    try:
        sender = rclpy.create_node("wrong_type", context=other)
        sender.create_publisher(String, ESTOP_TOPIC, 10)
        teleop = probe.create_publisher(JointState, "/left/joint_command",  # a best-effort command stream
                                        QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        assert graph.spin_until(lambda: policy.audit.unheard.get(ESTOP_TOPIC)
                                and arm.audit.unheard.get("/left/joint_command"), timeout=5)
        assert "publishes std_msgs/msg/String" in next(iter(policy.audit.unheard[ESTOP_TOPIC].values()))
        assert "best effort publisher" in next(iter(arm.audit.unheard["/left/joint_command"].values())).lower()
        graph.spin_for(1.1)
        errors = {s.name: s for d in diagnostics[-6:] for s in d.status if s.level == DiagnosticStatus.ERROR}
        assert "/policy: /estop" in errors and "/left/piper_arm: /left/joint_command" in errors
        assert "/wrong_type" in errors["/policy: /estop"].values[0].value
        err = capfd.readouterr().err
        assert "/estop: cannot hear the publisher /wrong_type" in err
        probe.destroy_publisher(teleop)
        sender.destroy_node()
    finally:
        rclpy.shutdown(context=other)
    assert graph.spin_until(lambda: not policy.audit.unheard[ESTOP_TOPIC], timeout=5)  # gone: no longer reported
    _close_arm(arm)


def test_the_arm_holds_while_the_heartbeat_is_silent(graph):
    arm = _arm(graph, heartbeat_topic="/deadman", heartbeat_timeout_s=0.3)
    probe = graph.add(rclpy_node(graph, "pedal"))
    beat_pub = probe.create_publisher(Bool, "/deadman", 10)
    cmd_pub = probe.create_publisher(JointState, "/left/joint_command", 10)
    beat = every(0.05, lambda: beat_pub.publish(Bool(data=True)))
    send = every(0.01, lambda q: cmd_pub.publish(arm_state_msg(q, probe.get_clock().now().to_msg())))
    target = np.array([0.2, 0.4, -0.3, 0.1, 0.0, 0.0, 0.04])
    q0 = arm.emulator.state()[0]
    graph.spin_until(lambda: (send(target), False)[1], timeout=0.5)  # no beat yet: commands ignored
    np.testing.assert_allclose(arm.emulator.state()[0], q0, atol=2e-3)

    def reaches(q, timeout=5):
        return graph.spin_until(lambda: (beat(), send(q), np.allclose(arm.emulator.state()[0], q[:6], atol=2e-3))[2],
                                timeout)

    assert reaches(target)
    graph.spin_for(0.4)  # the pedal goes silent: past its timeout
    assert arm.heartbeat_lost
    q_hold = arm.emulator.state()[0]
    graph.spin_until(lambda: (send(target - 0.1), False)[1], timeout=0.5)
    np.testing.assert_allclose(arm.emulator.state()[0], q_hold, atol=2e-3)
    assert reaches(target - 0.1)  # beats again: commands move it
    beat_pub.publish(Bool(data=False))  # released at once: holds without waiting for the timeout
    assert graph.spin_until(lambda: arm.heartbeat_lost, timeout=0.1)
    _close_arm(arm)


def test_the_policy_publishes_nothing_while_the_heartbeat_is_silent(graph, bundle):
    policy, publish, commands = _policy_rig(graph, bundle, heartbeat_topic="/deadman", heartbeat_timeout_s=0.3)
    beat_pub = graph.add(rclpy_node(graph, "gui")).create_publisher(Bool, "/deadman", 10)
    beat = every(0.05, lambda: beat_pub.publish(Bool(data=True)))
    tick = every(0.02, publish)
    graph.spin_until(lambda: (tick(), False)[1], timeout=1.0)
    assert commands == []  # no beat yet
    assert graph.spin_until(lambda: (tick(), beat(), len(commands) > 2)[2], timeout=20)
    silent_from = time.monotonic()
    graph.spin_until(lambda: (tick(), False)[1], timeout=1.0)
    assert commands[-1][0] <= silent_from + 0.3 + 0.05 and policy.heartbeat_lost  # within the timeout and a tick
    assert graph.spin_until(lambda: (tick(), beat(), commands[-1][0] > silent_from + 1.0)[2], timeout=20)
