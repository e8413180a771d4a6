"""piper_arm_node: one Piper arm as a ROS 2 lifecycle node over ``pushcut.deploy.piper``.

configure = open the CAN bus and wait for feedback; activate = enable the arm and gripper in CAN
joint-position mode (every motor confirmed); deactivate = hold the measured pose, commands
ignored; cleanup = cut motor power from a settled hold (never with a fault latched: a disabled
Piper falls), then close the bus. Publishes ``joint_states`` (joint1..joint6 rad, gripper m, as
piper_ros) at ``rate_hz`` and ``arm_status``, takes ``joint_command``. A command whose
``velocity`` (the speed percentage, as piper_ros reads it; the policy node sends the speed its
policy was trained at) differs from this arm's ``speed_percent`` is refused and counted: the
policy's chunks would run at another pace than trained.

E-stop: ``/estop`` true, from a publisher of any QoS (:mod:`pushcut_ros.inputs`), sends the
vendor's damped stop; ``~/estop`` and the arm's own
stop button (reported in 0x2A1) do the same and raise ``/estop`` for the whole stack. ``/estop``
false, the operator's release, resumes the arm (:meth:`PiperArm.resume`: it waits until the arm
is at rest, then the vendor's reset cuts motor power before re-enabling). ``~/resume`` resumes this
arm alone after a stop of its own, ``~/reinit`` (inactive only) recovers a lost bus; activate again
to move. With ``heartbeat_topic`` set, the arm holds its measured pose and ignores commands
while that deadman is silent for over ``heartbeat_timeout_s`` (or says false). Publishers on
``/estop`` and ``joint_command`` that this node cannot hear are reported on ``/diagnostics``.
With ``emulate: true`` an emulated arm (``PiperEmulator``) answers on a virtual bus inside
this process, for dry runs and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from pushcut.configs import ranges
from pushcut.deploy.piper.driver import ArmFault, DriverConfig, PiperArm
from pushcut.deploy.piper.safety import SafetyConfig

from .conversions import arm_array, arm_state_msg
from .inputs import HEARTBEAT_TIMEOUT_S, RELIABLE_VOLATILE, StateInput, TopicAudit, make_heartbeat
from .params import declare
from .spin import spin_main
from .topics import ESTOP_TOPIC, LATCHED


@ranges(rate_hz=">0", speed_percent="[1,100]", gripper_effort=">=0", max_relative_target=">0", max_gripper_step=">0",
        watchdog_s=">0", stale_s=">0", heartbeat_timeout_s=">0")
@dataclass(frozen=True)
class ArmNodeParams:
    """The arm node's ROS parameters; the defaults are the driver's and the safety layer's."""

    can_port: str = DriverConfig.can_port
    emulate: bool = False
    rate_hz: float = DriverConfig.rate_hz
    speed_percent: int = DriverConfig.speed_percent
    gripper_effort: float = DriverConfig.gripper_effort
    max_relative_target: float = SafetyConfig.max_relative_target
    max_gripper_step: float = SafetyConfig.max_gripper_step
    watchdog_s: float = SafetyConfig.watchdog_s
    stale_s: float = DriverConfig.stale_s
    heartbeat_topic: str = ""  # the operator's deadman (std_msgs/Bool); "" = off
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S


class PiperArmNode(LifecycleNode):
    def __init__(self, name: str = "piper_arm", **kwargs):
        super().__init__(name, **kwargs)
        self.params = declare(self, ArmNodeParams)
        self.arm: PiperArm | None = None
        self.emulator = None
        self.timer = None
        self.active = False
        self.stack_estopped = False  # the last /estop heard
        self.raised_estop = False  # this node's own /estop publisher says true
        self.estop_pub = self.create_publisher(Bool, ESTOP_TOPIC, LATCHED)
        self.audit = TopicAudit(self)
        self.estop_input = StateInput(self, Bool, ESTOP_TOPIC, self._on_estop, audit=self.audit)
        self.create_subscription(JointState, "joint_command", self._on_command, RELIABLE_VOLATILE)
        self.audit.watch("joint_command", JointState, (RELIABLE_VOLATILE,))
        self.heartbeat = make_heartbeat(self, self.params.heartbeat_topic, self.params.heartbeat_timeout_s, self.audit)
        self.heartbeat_lost = self.heartbeat is not None  # until the first beat
        self.create_service(Trigger, "~/estop", self._srv_estop)
        self.create_service(Trigger, "~/resume", self._srv_resume)
        self.create_service(Trigger, "~/reinit", self._srv_reinit)
        self.state_pub = self.status_pub = None

    # --- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.params
        emulate = p.emulate
        cfg = DriverConfig(
            can_port=p.can_port, bus="virtual" if emulate else "socketcan", speed_percent=p.speed_percent,
            rate_hz=p.rate_hz, gripper_effort=p.gripper_effort, stale_s=p.stale_s,
            safety=SafetyConfig(max_relative_target=p.max_relative_target,
                                max_gripper_step=p.max_gripper_step, watchdog_s=p.watchdog_s),
        )
        if emulate:
            from pushcut.deploy.piper.emulator import PiperEmulator

            self.emulator = PiperEmulator(cfg.can_port).start()
        self.arm = PiperArm(cfg)
        try:
            self.arm.connect()
            self.arm.wait_for_feedback()
        except (ArmFault, ConnectionError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        if self.state_pub is None:  # configured again after a cleanup: the same publishers
            self.state_pub = self.create_lifecycle_publisher(JointState, "joint_states", 10)
            self.status_pub = self.create_lifecycle_publisher(String, "arm_status", 10)
        self.timer = self.create_timer(1.0 / p.rate_hz, self._tick)
        self.get_logger().info(f"configured on {cfg.can_port} ({cfg.bus})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.stack_estopped:
            self.get_logger().error("not activating: /estop is engaged")
            return TransitionCallbackReturn.FAILURE
        try:
            self.arm.enable()
        except ArmFault as exc:
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        self.active = True
        self.get_logger().info("arm enabled")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self.arm.hold()
        self.get_logger().info("arm holding; commands ignored until activated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._shutdown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._shutdown()
        return TransitionCallbackReturn.SUCCESS

    def _shutdown(self) -> None:
        if self.arm is not None and self.arm.enabled:
            try:
                self.arm.disable()
            except ArmFault as exc:  # a fault or a moving arm: leave it holding / damped, never drop it
                self.get_logger().error(f"motors left powered: {exc}")
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        if self.arm is not None:
            self.arm.close()
            self.arm = None
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    # --- runtime --------------------------------------------------------------------------------
    def _on_command(self, msg: JointState) -> None:
        if not self.active or self.arm is None or self.heartbeat_lost:
            return
        try:
            target = arm_array(msg)
        except ValueError as exc:
            self.arm.safety._count("rejected_malformed", str(exc))
            return
        if len(msg.velocity) and any(v != self.params.speed_percent for v in msg.velocity):
            # the command's speed field (piper_ros's, set by the policy node to the speed the policy was
            # trained at) contradicts this arm's: its chunks would run at another pace than trained
            self.arm.safety._count("rejected_speed", f"command asks for {msg.velocity[0]:g}% speed; this "
                                   f"arm runs at {self.params.speed_percent}% (parameter speed_percent)")
            return
        self.arm.command(target)

    def _tick(self) -> None:
        if self.arm is None:
            return
        self._check_heartbeat()
        self.arm.tick()
        if self.arm.estopped and not self.stack_estopped and not self.raised_estop:
            self.get_logger().error(f"arm e-stopped ({self.arm.fault}): raising /estop for the whole stack")
            self._raise_estop()
        fb = self.arm.feedback()
        stamp = self.get_clock().now().to_msg()
        self.state_pub.publish(arm_state_msg(np.concatenate([fb.q, [fb.gripper]]), stamp))
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.arm.safety.counts.items()))
        status = f"enabled={self.arm.enabled} fault={self.arm.fault or 'none'} err=0x{fb.err_code:04x} {counts}"
        self.status_pub.publish(String(data=status))

    def _check_heartbeat(self) -> None:
        """With a heartbeat configured: when it goes silent, hold the measured pose and ignore
        commands until it beats again (the step limit then ramps in from the hold)."""
        if self.heartbeat is None or self.heartbeat.alive() != self.heartbeat_lost:
            return
        self.heartbeat_lost = not self.heartbeat_lost
        if self.heartbeat_lost:
            self.arm.hold()
            self.get_logger().error(f"heartbeat on {self.heartbeat.topic} silent for over "
                                    f"{self.heartbeat.timeout_s} s: holding, commands ignored")
        else:
            self.get_logger().warning(f"heartbeat on {self.heartbeat.topic}: taking commands again")

    def _on_estop(self, msg: Bool) -> None:
        self.stack_estopped = msg.data
        if msg.data:
            if self.arm is not None and not self.arm.estopped:
                self.arm.estop()
            return
        if self.raised_estop:  # the release supersedes what this node raised (late joiners see false)
            self._raise_estop(False)
        if self.arm is not None and self.arm.estopped:
            try:
                self.arm.resume()
                self.get_logger().warning("e-stop released: resumed, holding at the measured pose")
            except ArmFault as exc:
                # the arm's stop stays latched, so the next tick raises /estop again for the stack
                self.get_logger().error(f"e-stop released but the arm did not resume: {exc}; "
                                        "release /estop again once it is at rest")

    def _raise_estop(self, on: bool = True) -> None:
        self.raised_estop = on
        self.estop_pub.publish(Bool(data=on))

    def _srv_estop(self, request, response):
        if self.arm is not None:
            self.arm.estop()
        self._raise_estop()
        response.success, response.message = True, "emergency stop sent; /estop raised for the whole stack"
        return response

    def _trigger(self, action: str, done: str, response, refuse: str | None = None):
        """A Trigger service's answer: refused (``refuse``, or not configured), else ``done`` when
        the arm's ``action`` succeeds, the ArmFault's reason when it does not."""
        refuse = "not configured" if self.arm is None else refuse
        if refuse:
            response.success, response.message = False, refuse
            return response
        try:
            getattr(self.arm, action)()
            response.success, response.message = True, done
        except ArmFault as exc:
            response.success, response.message = False, str(exc)
        return response

    def _srv_resume(self, request, response):
        refuse = "/estop is engaged: releasing it (false) resumes the arms" if self.stack_estopped else None
        return self._trigger("resume", "resumed: holding at the measured pose", response, refuse)

    def _srv_reinit(self, request, response):
        refuse = "deactivate first, then reinit, then activate" if self.active else None
        return self._trigger("reinit", "bus re-initialised; activate again to move", response, refuse)


def main(args=None) -> None:
    spin_main(PiperArmNode, args)


if __name__ == "__main__":
    main()
