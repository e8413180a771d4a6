"""PiperArm: one Piper arm on one CAN bus through the real ``piper_sdk``, behind the safety layer.

The driver owns the SDK interface, the health checks and the safety layer; the ROS lifecycle
node is a thin adapter over it. ``bus='socketcan'`` drives hardware (the vendor's scripts bring
the adapters up as ``can_left`` / ``can_right``); ``bus='virtual'`` points the same SDK at
python-can's in-process virtual bus, where :class:`~pushcut.deploy.piper.emulator.PiperEmulator`
plays the arm.

Health (checked every tick; a fault latches with its reason and nothing more is streamed):
the bus is lost when ``isOk()`` turns false, the feedback frame rate stays below ``min_fps``, or
the newest joint feedback is older than ``stale_s``; joint feedback far outside the limits; the
arm status frame (0x2A1) reporting anything but normal (emergency stop, collision, ...), error
bits, or a control mode other than CAN; a motor driver (0x261-0x266) reporting itself disabled
or a fault bit (over-current, collision, stall, ...). A lost bus clears with :meth:`reinit`, an
emergency stop only with :meth:`resume`.

Limits: joint targets are clamped to the joint limits (narrowed to the firmware's, read at the
first enable, and refused when implausible), move at most the arm's top speed at the configured
speed rate per control tick, and never lead the measured joints by more than
``safety.max_relative_target``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from pushcut.configs import ranges
from pushcut.deploy.piper import units
from pushcut.deploy.piper.safety import LOWER, UPPER, SafetyConfig, SafetyLayer, implausible
from pushcut.spec import JOINT_MAX_SPEED

log = logging.getLogger(__name__)
CAN_CTRL, STATUS_NORMAL, STATUS_ESTOP = 0x01, 0x00, 0x01  # 0x2A1 ctrl mode / arm status values
DRIVER_ENABLED_BIT = 6  # 0x261-0x266 byte 5
DRIVER_FAULT_BITS = {0: "supply voltage low", 1: "motor over-temperature", 2: "driver over-current",
                     3: "driver over-temperature", 4: "collision protection", 5: "driver error",
                     7: "stall protection"}
GRIPPER_ERROR_BIT = 5  # 0x2A8 byte 6


class ArmFault(RuntimeError):
    """The arm or its bus is in a state where no command may be sent."""


@ranges(speed_percent="[1,100]", rate_hz=">0", top_speed=">0", gripper_effort="[0,5]", stale_s=">0", min_fps=">=0",
        enable_timeout_s=">0", settle_speed=">0", settle_s=">0", settle_timeout_s=">0")
@dataclass(frozen=True)
class DriverConfig:
    can_port: str = "can0"
    bus: str = "socketcan"  # socketcan | virtual
    speed_percent: int = 50  # % of the arm's top speed in CAN joint-position mode (0x151)
    rate_hz: float = 200.0  # control ticks per second
    top_speed: float = JOINT_MAX_SPEED  # rad/s at 100%; lowered to the firmware's max_joint_spd where less
    gripper_effort: float = 1.0  # N*m
    stale_s: float = 0.1  # newest joint feedback older than this: bus lost
    min_fps: float = 50.0  # feedback frames per second below this: bus lost
    enable_timeout_s: float = 1.0  # every motor must report enabled within this
    settle_speed: float = 0.02  # rad/s: settled when no joint moves faster than this ...
    settle_s: float = 0.2  # ... for this long
    settle_timeout_s: float = 10.0  # disable() / resume() refuse when the arm has not settled by then
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self):
        if self.bus not in ("socketcan", "virtual"):
            raise ValueError(f"DriverConfig.bus={self.bus!r}: must be 'socketcan' or 'virtual'")

    def joint_step(self, top_speed: float | np.ndarray | None = None) -> np.ndarray:
        """Largest joint move per control tick (rad): the arm's top speed at the speed rate."""
        top = self.top_speed if top_speed is None else np.minimum(self.top_speed, top_speed)
        return np.broadcast_to(top * self.speed_percent / 100.0 / self.rate_hz, (6,)).astype(float)


@dataclass
class Feedback:
    q: np.ndarray  # (6,) rad
    gripper: float  # m
    stamp: float  # s, newest joint frame
    err_code: int
    arm_status: int
    ctrl_mode: int = CAN_CTRL
    motors_enabled: tuple[bool, ...] = (False,) * 6  # 0x261-0x266 status bit 6
    driver_status: tuple[int, ...] = (0,) * 6  # 0x261-0x266 status byte
    motors_stamp: float = 0.0  # s, newest motor driver frame
    gripper_status: int = 0

    @property
    def state7(self) -> np.ndarray:
        return np.append(self.q, self.gripper)


def _value(x) -> int:
    return int(getattr(x, "value", x))


class PiperArm:
    def __init__(self, cfg: DriverConfig):
        self.cfg = cfg
        self.safety = SafetyLayer(cfg.safety, cfg.joint_step())
        self.sdk = None
        self.enabled = False
        self.estopped = False
        self.fault: str | None = None
        self.firmware_limits: np.ndarray | None = None  # (6, 3): min rad, max rad, top speed rad/s
        self._low_fps_since: float | None = None

    # --- bus ------------------------------------------------------------------------------------
    def connect(self) -> None:
        from piper_sdk import C_PiperInterface_V2

        if self.cfg.bus == "virtual":
            self.sdk = C_PiperInterface_V2(self.cfg.can_port, judge_flag=False, can_auto_init=False)
            self.sdk.CreateCanBus(self.cfg.can_port, bustype="virtual", expected_bitrate=1_000_000, judge_flag=False)
            self.sdk.ConnectPort(piper_init=False)
        else:
            self.sdk = C_PiperInterface_V2(self.cfg.can_port)
            self.sdk.ConnectPort()
        self.fault = None

    def wait_for_feedback(self, timeout: float = 2.0) -> Feedback:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fb = self.feedback()
            fresh = fb.stamp > 0 and time.time() - fb.stamp < self.cfg.stale_s
            # the SDK's frame rate and isOk() are computed over windows: wait until both agree
            if fresh and self.sdk.GetCanFps() >= self.cfg.min_fps and self.sdk.isOk():
                return fb
            time.sleep(0.01)
        raise ArmFault(f"{self.cfg.can_port}: no joint feedback within {timeout}s (is the arm powered and the bus up?)")

    def close(self) -> None:
        if self.sdk is not None:
            try:
                self.sdk.DisconnectPort()
            except Exception as exc:  # noqa: BLE001 - the bus may already be gone
                log.warning("%s: disconnect failed: %s", self.cfg.can_port, exc)

    def reinit(self) -> None:
        """The explicit recovery path after a lost bus: reconnect, then wait for fresh feedback.
        The arm is not streaming afterwards: :meth:`enable` again to move."""
        self.close()
        self.sdk.ConnectPort(can_init=True, piper_init=self.cfg.bus != "virtual")
        self.wait_for_feedback()
        self.fault = None
        self.enabled = False
        self.firmware_limits = None
        self._low_fps_since = None
        log.info("%s: bus re-initialised", self.cfg.can_port)

    # --- state ----------------------------------------------------------------------------------
    def feedback(self) -> Feedback:
        js = self.sdk.GetArmJointMsgs()
        gr = self.sdk.GetArmGripperMsgs()
        st = self.sdk.GetArmStatus()
        low = self.sdk.GetArmLowSpdInfoMsgs()
        s = js.joint_state
        motors = [low.motor_1, low.motor_2, low.motor_3, low.motor_4, low.motor_5, low.motor_6]
        status = tuple(int(m.foc_status_code) for m in motors)
        return Feedback(
            q=np.array([units.millideg_to_rad(v) for v in
                        (s.joint_1, s.joint_2, s.joint_3, s.joint_4, s.joint_5, s.joint_6)]),
            gripper=units.micrometre_to_m(gr.gripper_state.grippers_angle),
            stamp=float(js.time_stamp),
            err_code=_value(st.arm_status.err_code),
            arm_status=_value(st.arm_status.arm_status),
            ctrl_mode=_value(st.arm_status.ctrl_mode),
            motors_enabled=tuple(bool(c >> DRIVER_ENABLED_BIT & 1) for c in status),
            driver_status=status,
            motors_stamp=float(low.time_stamp),
            gripper_status=int(gr.gripper_state.status_code),
        )

    def check_health(self, now: float | None = None) -> str | None:
        """None when healthy, else the reason; a detected fault latches until :meth:`reinit`
        (bus, feedback) or :meth:`resume` (emergency stop)."""
        if self.fault:
            return self.fault
        now = time.time() if now is None else now
        fb = self.feedback()
        reason = None
        if not self.sdk.isOk():
            reason = "SDK reports the CAN link down (isOk() is false)"
        elif fb.stamp <= 0 or now - fb.stamp > self.cfg.stale_s:
            reason = f"joint feedback is stale ({now - fb.stamp:.3f}s old)"
        elif self._rate_low(now):
            fps = self.sdk.GetCanFps()
            reason = f"feedback rate {fps:.0f} fps below {self.cfg.min_fps:.0f} for {self.cfg.stale_s}s"
        elif implausible(fb.q):
            reason = f"implausible joint feedback {np.round(fb.q, 2).tolist()}"
        else:
            reason = self._status_reason(fb)
        if reason:
            self.fault = reason
            if fb.arm_status == STATUS_ESTOP:
                self.estopped = True
            log.error("%s: %s; holding, no further commands", self.cfg.can_port, reason)
        return reason

    def _status_reason(self, fb: Feedback) -> str | None:
        """What the arm itself reports: status frame 0x2A1, motor drivers 0x261-0x266, gripper 0x2A8."""
        if fb.arm_status == STATUS_ESTOP:
            return "arm reports emergency stop (0x2A1 arm status 0x01); resume() after checking the arm"
        if fb.arm_status != STATUS_NORMAL:
            return f"arm reports status 0x{fb.arm_status:02x} (0x2A1: no solution, limit, collision, ...)"
        if fb.err_code:
            bits = [f"joint {b + 1} over its angle limit" for b in range(6) if fb.err_code >> 8 & 1 << b]
            bits += [f"joint {b + 1} communication error" for b in range(6) if fb.err_code & 1 << b]
            return f"arm reports error code 0x{fb.err_code:04x} ({', '.join(bits) or 'reserved bits'})"
        for m, code in enumerate(fb.driver_status, start=1):
            for bit, what in DRIVER_FAULT_BITS.items():
                if code >> bit & 1:
                    return f"motor {m} reports {what} (0x{0x260 + m:03x} status bit {bit})"
        if self.enabled:
            if fb.ctrl_mode != CAN_CTRL:
                return f"arm left CAN control (0x2A1 ctrl mode 0x{fb.ctrl_mode:02x})"
            off = [m for m, on in enumerate(fb.motors_enabled, start=1) if not on]
            if off:
                return f"motor(s) {off} report disabled (0x261-0x266 status bit 6)"
            if fb.gripper_status >> GRIPPER_ERROR_BIT & 1:
                return "gripper reports driver error (0x2A8 status bit 5)"
        return None

    def _rate_low(self, now: float) -> bool:
        """The SDK's frame rate is sampled per 0.1 s window and can read low for one window under
        load: only a rate that stays low for ``stale_s`` counts."""
        if self.sdk.GetCanFps() >= self.cfg.min_fps:
            self._low_fps_since = None
            return False
        if self._low_fps_since is None:
            self._low_fps_since = now
        return now - self._low_fps_since > self.cfg.stale_s

    # --- start-up checks --------------------------------------------------------------------------
    def check_firmware_limits(self, timeout: float = 1.0) -> np.ndarray:
        """Ask the firmware for each motor's angle limits and top speed (0x472 -> 0x473), refuse
        implausible ones (min >= max, zero speed, a range far narrower than the SDK's table) and
        narrow the safety layer's limits and step to them. Returns (6, 3): min rad, max rad, rad/s.

        NOTE: motors are asked one at a time and read through ``GetCurrentMotorAngleLimitMaxVel``:
        the SDK's all-motor cache stores one reused message object for every motor.
        """
        out = np.zeros((6, 3))
        for m in range(1, 7):
            sent, resend = time.time(), 0.0
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() >= resend:  # a frame can be lost on the bus: ask again
                    self.sdk.SearchMotorMaxAngleSpdAccLimit(m, 0x01)
                    resend = time.monotonic() + 0.1
                reply = self.sdk.GetCurrentMotorAngleLimitMaxVel()
                lim = reply.current_motor_angle_limit_max_vel
                if reply.time_stamp >= sent and lim.motor_num == m:
                    out[m - 1] = (math.radians(lim.min_angle_limit / 10), math.radians(lim.max_angle_limit / 10),
                                  lim.max_joint_spd / 1000)
                    break
                if time.monotonic() > deadline:
                    raise ArmFault(f"{self.cfg.can_port}: motor {m} did not answer the limit query (0x472 -> 0x473) "
                                   f"within {timeout}s; refusing to run without the firmware's limits")
                time.sleep(0.002)
        lower, upper = LOWER.copy(), UPPER.copy()
        for j, (lo, hi, spd) in enumerate(out):
            name = f"{self.cfg.can_port}: firmware limits of joint {j + 1} (min {math.degrees(lo):.1f} deg, " \
                   f"max {math.degrees(hi):.1f} deg, top speed {spd:.3f} rad/s)"
            if not hi > lo or not spd > 0:
                raise ArmFault(f"{name} are implausible; refusing to run (restore them with the vendor's tools)")
            lower[j], upper[j] = max(lower[j], lo), min(upper[j], hi)
            if upper[j] - lower[j] < 0.5 * (UPPER[j] - LOWER[j]):
                raise ArmFault(f"{name} leave less than half of the SDK's range "
                               f"[{math.degrees(LOWER[j]):.1f}, {math.degrees(UPPER[j]):.1f}] deg; refusing to run")
        self.firmware_limits = out
        self.safety = SafetyLayer(self.cfg.safety, self.cfg.joint_step(out[:, 2]), lower, upper)
        log.info("%s: firmware limits (min, max rad; rad/s) %s", self.cfg.can_port, np.round(out, 3).tolist())
        return out

    def _confirm_enabled(self) -> None:
        """Send the enable (CAN joint mode, all motors) until every motor reports enabled in frames
        newer than the first request, as the vendor's demo loops; ArmFault naming the motors else."""
        first, deadline = time.time(), time.monotonic() + self.cfg.enable_timeout_s
        resend, confirmed_since = 0.0, None
        while True:
            now = time.monotonic()
            if now >= resend:  # the vendor often needs the enable twice
                self.sdk.MotionCtrl_2(CAN_CTRL, 0x01, self.cfg.speed_percent, 0x00)
                self.sdk.EnableArm(7)
                resend = now + 0.1
            fb = self.feedback()
            if fb.motors_stamp > first and all(fb.motors_enabled) and fb.ctrl_mode == CAN_CTRL:
                confirmed_since = confirmed_since or now
                if now - confirmed_since >= 0.06:  # two reads a motor-driver cycle apart agree
                    return
            else:
                confirmed_since = None
            if now > deadline:
                off = [m for m, on in enumerate(fb.motors_enabled, start=1) if not on] if fb.motors_stamp > first \
                    else "all (no motor driver frame since the request)"
                mode = "" if fb.ctrl_mode == CAN_CTRL else f"; ctrl mode 0x{fb.ctrl_mode:02x}, not CAN"
                raise ArmFault(f"{self.cfg.can_port}: motor(s) {off} did not report enabled within "
                               f"{self.cfg.enable_timeout_s}s (0x261-0x266 status bit 6){mode}; nothing is streamed")
            time.sleep(0.005)

    def wait_settled(self, hold: bool) -> Feedback:
        """Wait until no joint moves faster than ``settle_speed`` for ``settle_s``, sending a hold of
        the measured pose every tick when ``hold``; ArmFault after ``settle_timeout_s``."""
        c = self.cfg
        start = time.monotonic()
        fb = self.feedback()
        if hold:
            self.safety.rebase(fb.state7, start)
        ref, since = fb.q, start
        while True:
            now = time.monotonic()
            fb = self.feedback()
            if hold:
                self._send(self.safety.target(fb.state7, now))
            if np.max(np.abs(fb.q - ref)) > c.settle_speed * c.settle_s:
                ref, since = fb.q, now
            elif now - since >= c.settle_s:
                return fb
            if now - start > c.settle_timeout_s:
                raise ArmFault(f"{c.can_port}: the arm is still moving after {c.settle_timeout_s}s")
            time.sleep(1.0 / c.rate_hz)

    # --- commands -------------------------------------------------------------------------------
    def enable(self) -> None:
        """CAN joint-position mode at the configured speed, every motor confirmed enabled, then the
        gripper; the hold starts at the measured pose and the step limit ramps in."""
        self.wait_for_feedback()
        if self.estopped:
            raise ArmFault(f"{self.cfg.can_port}: refusing to enable: an emergency stop is latched; resume() first")
        reason = self.check_health()
        if reason:
            raise ArmFault(f"{self.cfg.can_port}: refusing to enable: {reason}")
        if self.firmware_limits is None:
            self.check_firmware_limits()
        self._confirm_enabled()
        fb = self.feedback()
        self.sdk.GripperCtrl(units.m_to_micrometre(fb.gripper), units.nm_to_milli(self.cfg.gripper_effort), 0x01, 0)
        self.safety.rebase(fb.state7, time.monotonic())
        self.enabled = True

    def disable(self) -> None:
        """Hold where the arm is until it has settled, then cut motor and gripper power.

        WARNING (vendor): ``DisableArm`` cuts motor power at once and a raised Piper falls. Bring
        the arm to rest or support it before calling this. It is an operator act, never a fault
        reaction (faults hold, or damp-stop through :meth:`estop`), so it refuses while a fault is
        latched, and raises (still holding) when the arm does not settle within ``settle_timeout_s``.
        """
        if self.sdk is None or not self.enabled:
            return
        if self.fault:
            raise ArmFault(f"{self.cfg.can_port}: refusing to cut power with a fault latched ({self.fault})")
        self.wait_settled(hold=True)
        self.sdk.GripperCtrl(0, 0, 0x00, 0)
        self.sdk.DisableArm(7)
        self.enabled = False

    def estop(self) -> None:
        """The vendor's damped stop (0x150 0x01): the arm ignores targets and sinks slowly. Latched:
        only :meth:`resume`, an operator act, clears it."""
        self.sdk.EmergencyStop(0x01)
        self.enabled = False
        self.estopped = True
        self.fault = self.fault or "emergency stop"
        log.error("%s: emergency stop", self.cfg.can_port)

    def resume(self) -> None:
        """Operator act after an emergency stop (ours or the arm's own button): the vendor's reset,
        re-enable, hold at the measured pose and ramp in.

        WARNING (vendor): the reset (0x150 0x02) cuts motor power before the re-enable, and a
        raised arm falls. So this waits for the damped descent to come to rest (``settle_timeout_s``)
        and refuses while the arm still moves; check that the arm is at rest or supported first.
        Sequence: fresh feedback, settled, reset, status no longer e-stop, every motor confirmed
        enabled (re-sent as the vendor does), gripper enabled, hold re-based on feedback, ramp in.
        """
        self.wait_for_feedback()
        if not self.estopped and self.feedback().arm_status != STATUS_ESTOP:
            raise ArmFault(f"{self.cfg.can_port}: nothing to resume: no emergency stop latched or reported")
        self.wait_settled(hold=False)
        log.warning("%s: resuming: reset (motor power off), then re-enable", self.cfg.can_port)
        sent = time.time()
        self.sdk.EmergencyStop(0x02)
        deadline = time.monotonic() + self.cfg.enable_timeout_s
        while not (self.sdk.GetArmStatus().time_stamp > sent and self.feedback().arm_status != STATUS_ESTOP):
            if time.monotonic() > deadline:
                raise ArmFault(f"{self.cfg.can_port}: the arm still reports emergency stop after the reset")
            time.sleep(0.005)
        self.fault, self.estopped, self.enabled, self._low_fps_since = None, False, False, None
        self.enable()
        log.info("%s: resumed: holding at the measured pose", self.cfg.can_port)

    def command(self, target7, now: float | None = None) -> bool:
        """Queue a 7-dim target ``[j1..j6 rad, gripper m]``; False if the safety layer dropped it."""
        return self.safety.accept(target7, time.monotonic() if now is None else now)

    def tick(self, now: float | None = None) -> np.ndarray | None:
        """One control tick: health check, safety, send. Returns what was sent (None: nothing)."""
        if not self.enabled:
            return None
        if self.check_health():
            return None
        target = self.safety.target(self.feedback().state7, time.monotonic() if now is None else now)
        self._send(target)
        return target

    def _send(self, target: np.ndarray) -> None:
        self.sdk.MotionCtrl_2(CAN_CTRL, 0x01, self.cfg.speed_percent, 0x00)
        self.sdk.JointCtrl(*[units.rad_to_millideg(v) for v in target[:6]])
        self.sdk.GripperCtrl(units.m_to_micrometre(target[6]), units.nm_to_milli(self.cfg.gripper_effort), 0x01, 0)

    def hold(self) -> None:
        """Forget pending commands: hold the measured pose (the step limit ramps in again)."""
        if self.sdk is not None and self.enabled:
            self.safety.rebase(self.feedback().state7, time.monotonic())
