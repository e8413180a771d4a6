"""Which nodes make up each stack, with which parameters: the one place that says so.

The launch files (``launch/*.launch.py``) turn these specs into ``launch_ros`` actions; the
in-process runner (``pushcut_ros.runner``, used by ``make demo`` and the tests, since the
``launch`` tooling is not on PyPI) instantiates the same node classes with the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pushcut.deploy.piper.driver import DriverConfig
from pushcut.spec import ARMS, TWIN_CAMERAS

COMMAND_HZ = int(DriverConfig.rate_hz)  # commands per second to the arms, the driver's control rate


@dataclass(frozen=True)
class NodeSpec:
    executable: str  # console script of the pushcut_ros package
    name: str
    namespace: str = ""
    parameters: dict = field(default_factory=dict)
    lifecycle: bool = False
    remappings: tuple[tuple[str, str], ...] = ()


def bundle_cameras(bundle: str) -> list[str]:
    from pushcut.deploy.bundle import load_manifest

    return [c["name"] for c in load_manifest(bundle, verify=False)["cameras"]]


def bundle_contract(bundle: str, command_hz: int, speed_percent: int | None = None, rehearsal: bool = False) -> dict:
    """The bundle's action contract, refused where the stack's command rate or arm speed contradicts
    it (``deploy.bundle.check_contract``): before any node starts, so before an arm moves."""
    from pushcut.deploy.bundle import check_contract, load_manifest

    return check_contract(load_manifest(bundle, verify=False), command_hz, speed_percent, rehearsal=rehearsal)


def twin_eval(task: str, bundle: str, num_trials: int = 10, log_dir: str = "trials", image_size: int = 64,
              command_hz: int = 50, max_steps: int = 0, seed_start: int = 100000,
              record: bool = True, policy: dict | None = None) -> list[NodeSpec]:
    """Twin + policy + trial node: the whole robot stack with the twin instead of hardware.

    ``policy``: more policy-node parameters (``execution``, ``policy_source``, ``lead_s``, ...)."""
    cams = bundle_cameras(bundle)
    contract = bundle_contract(bundle, command_hz)
    return [
        NodeSpec("twin_node", "twin", parameters={"task": task, "cameras": cams, "image_height": image_size,
                                                  "image_width": image_size, "command_hz": command_hz,
                                                  "camera_hz": 25, "max_steps": max_steps,
                                                  "speed_percent": contract["speed_percent"]}),
        NodeSpec("policy_node", "policy", parameters={"bundle": bundle, "command_hz": command_hz, **(policy or {})}),
        NodeSpec("trial_node", "trial", parameters={"task": task, "num_trials": num_trials, "log_dir": log_dir,
                                                    "bundle": bundle, "mode": "twin", "seed_start": seed_start,
                                                    "cameras": cams, "record": record}),
    ]


# piper_ros's single-arm node (one per arm, namespaced /left and /right) publishes
# joint_states_single and subscribes joint_ctrl_single, same JointState layout as ours
PIPER_ROS_TOPICS = {"joint_states": "joint_states_single", "joint_command": "joint_ctrl_single"}


def piper_ros_remappings() -> tuple[tuple[str, str], ...]:
    return tuple((f"/{arm}/{ours}", f"/{arm}/{theirs}") for arm in ARMS for ours, theirs in PIPER_ROS_TOPICS.items())


def robot_eval(task: str, bundle: str, cameras: dict[str, str], can_ports: dict[str, str] | None = None,
               num_trials: int = 10, log_dir: str = "trials", command_hz: int = COMMAND_HZ, emulate: bool = False,
               calibration_dir: str = "", terminal_ui: bool = True, driver: str = "pushcut",
               speed_percent: int | None = None, policy: dict | None = None, heartbeat_topic: str = "",
               heartbeat_timeout_s: float = 0.5, rehearsal: bool = False) -> list[NodeSpec]:
    """Cameras + policy + both Piper arm nodes + trial node (operator-judged).

    ``heartbeat_topic`` (``std_msgs/Bool``, "" = off): the operator's deadman; the arm nodes and
    the policy hold while it is silent for over ``heartbeat_timeout_s``.

    The arms run at the speed the policy was trained at (the bundle's action contract);
    ``speed_percent`` other than that is refused with the reason, as is a ``command_hz`` that is
    not a multiple of the policy's action rate. ``rehearsal`` lets ``speed_percent`` be lower, for a
    first motion at low speed: the chunks run late, and the trial log's notes say so.

    ``driver="piper_ros"`` leaves the arms to piper_ros's nodes (started by the user, one per arm
    in namespaces ``left`` and ``right``): no pushcut arm nodes, and the policy and trial nodes
    are remapped onto piper_ros's topics. piper_ros clamps nothing (the vendor's node sends what
    it gets), so pushcut's safety layer is not in the loop then.
    """
    if driver not in ("pushcut", "piper_ros"):
        raise ValueError(f"driver must be 'pushcut' or 'piper_ros', got {driver!r}")
    trained = bundle_contract(bundle, command_hz, speed_percent, rehearsal)["speed_percent"]
    rehearsing = speed_percent is not None and speed_percent < trained
    speed_percent = speed_percent or trained
    can_ports = can_ports or {arm: f"can_{arm}" for arm in ARMS}
    unknown = [c for c in cameras if c not in TWIN_CAMERAS]
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; the workcell has {list(TWIN_CAMERAS)}")
    specs = [
        NodeSpec("camera_node", f"camera_{name}", parameters={
            "camera_name": name, "device": device,
            "calibration_file": f"{calibration_dir}/camera_{name}.json" if calibration_dir else ""})
        for name, device in cameras.items()
    ]
    deadman = {"heartbeat_topic": heartbeat_topic, "heartbeat_timeout_s": float(heartbeat_timeout_s)}
    if driver == "pushcut":
        specs += [
            NodeSpec("piper_arm_node", "piper_arm", namespace=arm, lifecycle=True,
                     parameters={"can_port": can_ports[arm], "emulate": emulate, "rate_hz": float(command_hz),
                                 "speed_percent": speed_percent, **deadman})
            for arm in ARMS
        ]
    remap = piper_ros_remappings() if driver == "piper_ros" else ()
    specs += [
        NodeSpec("policy_node", "policy", remappings=remap, parameters={
            "bundle": bundle, "command_hz": command_hz, "rehearsal_speed_percent": speed_percent if rehearsing else 0,
            **deadman, **(policy or {})}),
        NodeSpec("trial_node", "trial", remappings=remap, parameters={
            "task": task, "num_trials": num_trials, "log_dir": log_dir, "bundle": bundle, "mode": "operator",
            "cameras": list(cameras), "terminal_ui": terminal_ui,
            **({"notes": f"rehearsal at {speed_percent}% speed (trained at {trained}%): chunks ran late, "
                         "not a measurement"} if rehearsing else {})}),
    ]
    return specs
