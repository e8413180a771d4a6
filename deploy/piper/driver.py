"""PiperArm: one Piper arm on one CAN bus through the real ``piper_sdk``, behind the safety layer.

The driver owns the SDK interface, the health checks and the safety layer; the ROS lifecycle
node is a thin adapter over it. ``bus='socketcan'`` drives hardware (the vendor's scripts bring
the adapters up as ``can_left`` / ``can_right``); ``bus='virtual'`` points the same SDK at
python-can's in-process virtual bus, where :class:`~pushcut.deploy.piper.emulator.PiperEmulator`
plays the arm.

Health: the bus is lost when ``isOk()`` turns false, the feedback frame rate falls below
``min_fps``, or the newest joint feedback is older than ``stale_s``; absurd feedback (joints far
outside their limits) is a fault too. A lost or faulty bus sends nothing more until
:meth:`reinit` succeeds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from pushcut.deploy.piper import units
from pushcut.deploy.piper.safety import LOWER, UPPER, SafetyConfig, SafetyLayer

log = logging.getLogger(__name__)
PLAUSIBLE_MARGIN = 0.5  # rad beyond the limits that feedback may show before it is a fault


class ArmFault(RuntimeError):
    """The arm or its bus is in a state where no command may be sent."""


@dataclass(frozen=True)
class DriverConfig:
    can_port: str = "can0"
    bus: str = "socketcan"  # socketcan | virtual
    speed_rate: int = 50  # % of the arm's max speed in CAN joint-position mode
    gripper_effort: float = 1.0  # N*m
    stale_s: float = 0.1  # newest joint feedback older than this: bus lost
    min_fps: float = 50.0  # feedback frames per second below this: bus lost
    safety: SafetyConfig = field(default_factory=SafetyConfig)


@dataclass
class Feedback:
    q: np.ndarray  # (6,) rad
    gripper: float  # m
    stamp: float  # s, newest joint frame
    err_code: int
    arm_status: int


def _value(x) -> int:
    return int(getattr(x, "value", x))


class PiperArm:
    def __init__(self, cfg: DriverConfig):
        self.cfg = cfg
        self.safety = SafetyLayer(cfg.safety)
        self.sdk = None
        self.enabled = False
        self.fault: str | None = None
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
        """The explicit recovery path after a lost bus: reconnect, then wait for fresh feedback."""
        self.close()
        self.sdk.ConnectPort(can_init=True, piper_init=self.cfg.bus != "virtual")
        self.wait_for_feedback()
        self.fault = None
        self._low_fps_since = None
        self.safety.reset()
        log.info("%s: bus re-initialised", self.cfg.can_port)

    # --- state ----------------------------------------------------------------------------------
    def feedback(self) -> Feedback:
        js = self.sdk.GetArmJointMsgs()
        gr = self.sdk.GetArmGripperMsgs()
        st = self.sdk.GetArmStatus()
        s = js.joint_state
        q = np.array([s.joint_1, s.joint_2, s.joint_3, s.joint_4, s.joint_5, s.joint_6], dtype=float)
        return Feedback(
            q=np.array([units.millideg_to_rad(v) for v in q]),
            gripper=units.micrometre_to_m(gr.gripper_state.grippers_angle),
            stamp=float(js.time_stamp),
            err_code=_value(st.arm_status.err_code),
            arm_status=_value(st.arm_status.arm_status),
        )

    def check_health(self, now: float | None = None) -> str | None:
        """None when healthy, else the reason; a detected fault latches until :meth:`reinit`."""
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
        elif np.any(fb.q < LOWER[:6] - PLAUSIBLE_MARGIN) or np.any(fb.q > UPPER[:6] + PLAUSIBLE_MARGIN):
            reason = f"implausible joint feedback {np.round(fb.q, 2).tolist()}"
        elif fb.err_code:
            reason = f"arm reports error code 0x{fb.err_code:04x}"
        if reason:
            self.fault = reason
            log.error("%s: %s; holding, no further commands until re-init", self.cfg.can_port, reason)
        return reason

    def _rate_low(self, now: float) -> bool:
        """The SDK's frame rate is sampled per 0.1 s window and can read low for one window under
        load: only a rate that stays low for ``stale_s`` counts."""
        if self.sdk.GetCanFps() >= self.cfg.min_fps:
            self._low_fps_since = None
            return False
        if self._low_fps_since is None:
            self._low_fps_since = now
        return now - self._low_fps_since > self.cfg.stale_s

    # --- commands -------------------------------------------------------------------------------
    def enable(self) -> None:
        """CAN joint-position mode at the configured speed, arm and gripper enabled."""
        self.wait_for_feedback()
        reason = self.check_health()
        if reason:
            raise ArmFault(f"{self.cfg.can_port}: refusing to enable: {reason}")
        fb = self.feedback()
        self.sdk.MotionCtrl_2(0x01, 0x01, self.cfg.speed_rate, 0x00)
        self.sdk.EnableArm(7)
        self.sdk.GripperCtrl(units.m_to_micrometre(fb.gripper), units.nm_to_milli(self.cfg.gripper_effort), 0x01, 0)
        self.safety.reset()
        self.safety.last_target = np.concatenate([fb.q, [fb.gripper]])
        self.enabled = True

    def disable(self) -> None:
        """Hold where the arm is, then disable motors and gripper."""
        if self.sdk is None:
            return
        if self.enabled and not self.fault:
            fb = self.feedback()
            self._send(np.concatenate([fb.q, [fb.gripper]]))
        self.sdk.GripperCtrl(0, 0, 0x00, 0)
        self.sdk.DisableArm(7)
        self.enabled = False

    def estop(self) -> None:
        self.sdk.EmergencyStop(0x01)
        self.enabled = False
        log.error("%s: emergency stop", self.cfg.can_port)

    def command(self, target7, now: float | None = None) -> bool:
        """Queue a 7-dim target ``[j1..j6 rad, gripper m]``; False if the safety layer dropped it."""
        return self.safety.accept(target7, time.monotonic() if now is None else now)

    def tick(self, now: float | None = None) -> np.ndarray | None:
        """One control tick: health check, safety, send. Returns what was sent (None: nothing)."""
        if not self.enabled:
            return None
        if self.check_health():
            return None
        fb = self.feedback()
        target = self.safety.target(np.concatenate([fb.q, [fb.gripper]]), time.monotonic() if now is None else now)
        self._send(target)
        return target

    def _send(self, target: np.ndarray) -> None:
        self.sdk.MotionCtrl_2(0x01, 0x01, self.cfg.speed_rate, 0x00)
        self.sdk.JointCtrl(*[units.rad_to_millideg(v) for v in target[:6]])
        self.sdk.GripperCtrl(units.m_to_micrometre(target[6]), units.nm_to_milli(self.cfg.gripper_effort), 0x01, 0)
