"""Real-robot evaluation: three cameras, the ONNX policy, both Piper arms and the trial protocol.

    ros2 launch pushcut_ros robot_eval.launch.py task:=stack_bowls_two bundle:=/path/to/bundle \\
        head_device:=/dev/video0 left_wrist_device:=/dev/video2 right_wrist_device:=/dev/video4 \\
        left_can:=can_left right_can:=can_right calibration_dir:=calib/ sim:=hardware

``sim:=emulated`` runs both arm nodes against emulated Pipers on virtual CAN buses. The arm
nodes are lifecycle nodes: this file configures, then activates them once configured.
``driver:=piper_ros`` starts no arm nodes and remaps the policy and trial nodes onto piper_ros's
``/<arm>/joint_states_single`` and ``/<arm>/joint_ctrl_single`` (run piper_ros's
``piper_single_ctrl`` in namespaces ``left`` and ``right`` yourself). Both drivers run at the speed
the policy was trained at (the bundle's action contract); ``speed_percent:=N`` other than that is
refused with the reason, as is a ``command_hz`` that is not a multiple of the policy's action rate;
``rehearsal:=true speed_percent:=10`` is a first motion at low speed (chunks run late; the trial
log's notes say it measured nothing). ``execution:=async`` overlaps inference with the running chunk
(``pushcut.motion``); ``policy_source:=host:port`` uses a ``pushcut-serve`` server (a GPU box)
instead of running the bundle on this PC. ``heartbeat_topic:=/pedal`` makes that topic
(``std_msgs/Bool`` true at a steady rate) the operator's deadman: the arms hold while it is silent
for over ``heartbeat_timeout_s``.
"""

import lifecycle_msgs.msg
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from pushcut_ros.composition import COMMAND_HZ, robot_eval
from pushcut_ros.inputs import HEARTBEAT_TIMEOUT_S

ARGS = {"task": "click_bell", "bundle": "", "num_trials": "10", "log_dir": "trials", "command_hz": str(COMMAND_HZ),
        "head_device": "0", "left_wrist_device": "2", "right_wrist_device": "4", "left_can": "can_left",
        "right_can": "can_right", "calibration_dir": "", "sim": "hardware", "driver": "pushcut",
        "speed_percent": "", "rehearsal": "false", "execution": "sync", "policy_source": "local", "heartbeat_topic": "",
        "heartbeat_timeout_s": str(HEARTBEAT_TIMEOUT_S)}


def _nodes(context):
    v = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    cameras = {"head": v["head_device"], "left_wrist": v["left_wrist_device"], "right_wrist": v["right_wrist_device"]}
    specs = robot_eval(v["task"], v["bundle"], cameras, {"left": v["left_can"], "right": v["right_can"]},
                       int(v["num_trials"]), v["log_dir"], int(v["command_hz"]), v["sim"] == "emulated",
                       v["calibration_dir"], driver=v["driver"],
                       speed_percent=int(v["speed_percent"]) if v["speed_percent"] else None,
                       policy={"execution": v["execution"], "policy_source": v["policy_source"]},
                       heartbeat_topic=v["heartbeat_topic"], heartbeat_timeout_s=float(v["heartbeat_timeout_s"]),
                       rehearsal=v["rehearsal"] == "true")
    actions = []
    for s in specs:
        if not s.lifecycle:
            actions.append(Node(package="pushcut_ros", executable=s.executable, name=s.name, namespace=s.namespace,
                                parameters=[s.parameters], remappings=list(s.remappings), output="screen"))
            continue
        node = LifecycleNode(package="pushcut_ros", executable=s.executable, name=s.name, namespace=s.namespace,
                             parameters=[s.parameters], output="screen")
        configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
        activate = RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, goal_state="inactive",
            entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                  transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
        actions += [node, activate, configure]
    return actions


def generate_launch_description():
    return LaunchDescription([DeclareLaunchArgument(k, default_value=d) for k, d in ARGS.items()]
                             + [OpaqueFunction(function=_nodes)])
