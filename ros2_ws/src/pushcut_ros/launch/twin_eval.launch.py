"""Dry run of the robot stack against the MuJoCo twin.

    ros2 launch pushcut_ros twin_eval.launch.py task:=click_bell bundle:=/path/to/bundle num_trials:=20

``execution:=async`` overlaps inference with the running chunk; ``policy_source:=host:port`` asks a
``pushcut-serve`` server instead of running the bundle here (the bundle still names the cameras).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from pushcut_ros.composition import twin_eval

ARGS = {"task": "click_bell", "bundle": "", "num_trials": "10", "log_dir": "trials", "image_size": "64",
        "command_hz": "50", "max_steps": "0", "seed_start": "100000", "execution": "sync", "policy_source": "local"}


def _nodes(context):
    v = {k: LaunchConfiguration(k).perform(context) for k in ARGS}
    specs = twin_eval(v["task"], v["bundle"], int(v["num_trials"]), v["log_dir"], int(v["image_size"]),
                      int(v["command_hz"]), int(v["max_steps"]), int(v["seed_start"]),
                      policy={"execution": v["execution"], "policy_source": v["policy_source"]})
    return [Node(package="pushcut_ros", executable=s.executable, name=s.name, namespace=s.namespace,
                 parameters=[s.parameters], output="screen") for s in specs]


def generate_launch_description():
    return LaunchDescription([DeclareLaunchArgument(k, default_value=d) for k, d in ARGS.items()]
                             + [OpaqueFunction(function=_nodes)])
