"""The stack's topic names and the QoS of its latched topics (one place for every node, test and
benchmark)."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

ESTOP_TOPIC = "/estop"  # std_msgs/Bool: true stops the whole stack, false is the operator's resume
INSTRUCTION_TOPIC = "/instruction"  # std_msgs/String: the task to do; "" = idle, the arms hold
# std_msgs/Float64 on /policy/<name>_ms, one per chunk (policy_node's docstring defines each)
POLICY_TIMINGS = ("frame_age", "queue", "inference", "transport", "broker", "latency", "wait")
# Latched (the last value reaches nodes that join later) and reliable: a node started during an
# e-stop starts stopped, a policy started mid-trial gets the trial's instruction.
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def policy_timing_topic(name: str) -> str:
    return f"/policy/{name}_ms"


def camera_topic(name: str) -> str:
    return f"/cameras/{name}/image_raw"


def joint_states_topic(arm: str) -> str:
    return f"/{arm}/joint_states"


def joint_command_topic(arm: str) -> str:
    return f"/{arm}/joint_command"
