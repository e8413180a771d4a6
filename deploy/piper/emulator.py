"""An emulated Piper arm on python-can's in-process ``virtual`` bus, speaking the real frames.

It plays the arm's firmware as piper_sdk 0.6.2 defines it. It decodes the command frames the SDK
sends: motion control 0x150 (0x01 emergency stop, 0x02 reset) and 0x151, joint targets 0x155-0x157
in 0.001 degree, gripper 0x159 in 0.001 mm, motor enable / disable 0x471, joint zero 0x475, the
limit query 0x472. It moves its joints toward the targets at the speed rate percentage of
``max_joint_speed`` and streams what the SDK decodes: arm status 0x2A1 (ctrl mode, arm status,
error bits), joints 0x2A5-0x2A7, gripper 0x2A8 (status bit 6 = enabled, bit 0 = supply voltage
low), motor drivers high speed 0x251-0x256 (every 4th tick) and low speed 0x261-0x266 (every
10th tick; status bit 6 = driver enabled), and the limit reply 0x473.

Stop semantics as the vendor describes them: 0x150 0x01 is the damped stop (targets are ignored,
the loaded joints 2 and 3 sink slowly toward rest, status reports emergency stop); 0x150 0x02
resets: every motor loses power, errors clear, the controller drops to standby. A powered motor
that loses power (reset or disable) lets its loaded joint fall toward rest at ``fall_speed``;
each such cut is recorded in ``power_cuts`` with the arm's speed at that moment.

Faults for tests: ``drop_prob`` (feedback frames lost), ``silent`` (no feedback at all),
``bus_off`` (the controller is off the bus: it neither hears nor speaks), ``error_code`` (0x2A1
error bits), ``status_fault`` (an 0x2A1 arm status such as 0x07 collision), ``press_estop()`` (the
arm's own stop button), ``ignore_enable`` (motors, 1..6, that never enable), ``drop_motor()`` (a
motor that loses power mid-run), ``driver_faults`` (extra 0x261-0x266 status bits per motor, e.g.
bit 4 collision), ``limits`` (what the
firmware answers to 0x472, e.g. corrupt min = max), ``garbage`` (random frames, and joint feedback
at +-250 degrees interleaved with the real ones).

What arrives is kept for inspection, bounded: the last ``keep_frames`` frames (:meth:`commands`)
and a count per frame id since start (:meth:`count`); a driver at 200 Hz sends about a thousand
frames a second, so an emulated dry run of an hour would otherwise hold millions.
"""

from __future__ import annotations

import math
import random
import struct
import threading
import time
from collections import Counter, deque
from typing import Self

import can
import numpy as np

from pushcut.deploy.piper import units
from pushcut.spec import GRIPPER_RANGE_M, JOINT_LIMITS, JOINT_MAX_SPEED

STATUS, J12, J34, J56, GRIPPER_FB = 0x2A1, 0x2A5, 0x2A6, 0x2A7, 0x2A8
HIGH_SPD, LOW_SPD = 0x251, 0x261  # motor n answers on base + n - 1
JOINT_CONFIG, SET_ZERO = 0x475, 0xAE
LIMIT_QUERY, LIMIT_REPLY = 0x472, 0x473
MOTION_1, MOTION_2, JC12, JC34, JC56, GRIPPER_CMD, ENABLE = 0x150, 0x151, 0x155, 0x156, 0x157, 0x159, 0x471
ESTOP, RESET = 0x01, 0x02  # 0x150 byte 0
STATUS_NORMAL, STATUS_ESTOP = 0x00, 0x01  # 0x2A1 byte 1
DRIVER_ENABLED = 1 << 6  # 0x261-0x266 byte 5 and 0x2A8 byte 6
LOADED = (1, 2)  # joints 2 and 3 (0-based) carry the arm's weight
REST = np.zeros(6)  # the folded pose an unpowered arm sinks to
LIMITS = np.array([[round(math.degrees(hi) * 10), round(math.degrees(lo) * 10), round(JOINT_MAX_SPEED * 1000)]
                   for lo, hi in JOINT_LIMITS])  # firmware units: max, min in 0.1 degree; speed in 0.001 rad/s


class PiperEmulator:
    def __init__(self, channel: str, rate_hz: float = 200.0, max_joint_speed: float = JOINT_MAX_SPEED,
                 max_gripper_speed: float = 0.1, initial: np.ndarray | None = None, seed: int = 0,
                 keep_frames: int = 20_000, damp_speed: float = 0.2, fall_speed: float = 2.0):
        self.channel = channel
        self.bus = can.Bus(channel=channel, interface="virtual", receive_own_messages=False)
        self.dt = 1.0 / rate_hz
        self.max_joint_speed = max_joint_speed
        self.max_gripper_speed = max_gripper_speed
        self.damp_speed = damp_speed
        self.fall_speed = fall_speed
        self.q = np.zeros(6) if initial is None else np.asarray(initial[:6], dtype=float).copy()
        self.qd = np.zeros(6)
        self.gripper = 0.0 if initial is None else float(initial[6])
        self.q_target = self.q.copy()
        # encoder zero offsets: reported angle = physical angle - offset (calibration sets them)
        self.zero_offset = np.zeros(6)
        self.gripper_zero_offset = 0.0
        self.motor_enabled = np.zeros(6, dtype=bool)
        self.falling = np.zeros(6, dtype=bool)
        self.gripper_target = self.gripper
        self.gripper_enabled = False
        self.estopped = False
        self.speed_percent = 0
        self.ctrl_mode = 0
        self.move_mode = 0
        self.power_cuts: list[tuple[float, int, float]] = []  # (time, joint 1..6, joint speed rad/s)
        self.estop_reported_at: float | None = None
        # faults
        self.drop_prob = 0.0
        self.silent = False
        self.bus_off = False
        self.error_code = 0
        self.status_fault = 0
        self.ignore_enable: set[int] = set()
        self.driver_faults = [0] * 6
        self.limits = LIMITS.copy()
        self.garbage = False
        # what arrived, for tests
        self.received: deque[can.Message] = deque(maxlen=keep_frames)
        self.received_counts: Counter[int] = Counter()
        self.last_received: dict[int, float] = {}
        self.frames_sent = 0
        self._tick = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"piper-emulator-{channel}", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> PiperEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._receive()  # frames sent before the stop still reach the arm
        self.bus.shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- firmware -------------------------------------------------------------------------------
    def _power(self, motor: int, on: bool) -> None:
        """Motor ``motor`` (0-based) gains or loses power; a loaded joint that loses it falls."""
        if on and motor + 1 in self.ignore_enable:
            return
        if on and not self.motor_enabled[motor]:
            self.q_target[motor] = self.q[motor] - self.zero_offset[motor]  # a motor holds where it wakes up
            self.falling[motor] = False
        if not on and self.motor_enabled[motor]:
            self.power_cuts.append((time.time(), motor + 1, float(self.qd[motor])))
            self.falling[motor] = motor in LOADED
        self.motor_enabled[motor] = on

    def _handle(self, msg: can.Message) -> None:
        d = bytes(msg.data)
        i = msg.arbitration_id
        with self._lock:
            self.received.append(msg)
            self.received_counts[i] += 1
            self.last_received[i] = time.time()
            if i == ENABLE and len(d) >= 2:
                motors = range(6) if d[0] in (0xFF, 7) else [d[0] - 1] if 1 <= d[0] <= 6 else []
                for m in motors:
                    self._power(m, d[1] == 0x02)
            elif i == JOINT_CONFIG and len(d) >= 2 and d[1] == SET_ZERO:
                joints = range(6) if d[0] == 7 else [d[0] - 1] if 1 <= d[0] <= 6 else []
                for j in joints:
                    if not self.motor_enabled[j]:  # the firmware zeroes only a released joint
                        self.zero_offset[j] = self.q[j]
                        self.q_target[j] = 0.0
            elif i == MOTION_1 and len(d) >= 1:
                if d[0] == ESTOP:
                    self.estopped = True
                elif d[0] == RESET:  # power off, errors and flags cleared: the arm falls
                    for m in range(6):
                        self._power(m, False)
                    self.estopped, self.error_code, self.status_fault = False, 0, 0
                    self.ctrl_mode, self.gripper_enabled = 0x00, False
            elif i == MOTION_2 and len(d) >= 3:
                self.ctrl_mode, self.move_mode, self.speed_percent = d[0], d[1], d[2]
            elif i in (JC12, JC34, JC56) and len(d) == 8:
                a, b = struct.unpack(">ii", d)
                j = {JC12: 0, JC34: 2, JC56: 4}[i]
                if self.motor_enabled.all() and not self.estopped and self.ctrl_mode == 0x01:
                    self.q_target[j] = units.millideg_to_rad(a)
                    self.q_target[j + 1] = units.millideg_to_rad(b)
            elif i == GRIPPER_CMD and len(d) == 8:
                angle, _effort, code, zero = struct.unpack(">iHBB", d)
                if zero == SET_ZERO:
                    self.gripper_zero_offset = self.gripper
                else:
                    self.gripper_enabled = bool(code & 0x01)
                    if self.gripper_enabled and self.motor_enabled.all() and not self.estopped:
                        self.gripper_target = units.micrometre_to_m(angle)
            elif i == LIMIT_QUERY and len(d) >= 2 and 1 <= d[0] <= 6 and d[1] == 0x01:
                hi, lo, spd = (int(v) for v in self.limits[d[0] - 1])
                self._send(LIMIT_REPLY, struct.pack(">BhhHB", d[0], hi, lo, spd, 0))

    def _move(self) -> None:
        with self._lock:
            q_before = self.q.copy()
            if self.estopped:  # damped: the loaded joints sink slowly toward rest
                step = self.damp_speed * self.dt
                for j in LOADED:
                    self.q[j] += np.clip(REST[j] - self.q[j], -step, step)
            elif self.motor_enabled.all():
                # commands are in reported (calibrated) angles; the motors move physical ones
                q_goal = self.q_target + self.zero_offset
                step = self.max_joint_speed * max(self.speed_percent, 1) / 100.0 * self.dt
                self.q += np.clip(q_goal - self.q, -step, step)
                g_step = self.max_gripper_speed * self.dt
                self.gripper += float(np.clip(self.gripper_target - self.gripper, -g_step, g_step))
            fall = self.fall_speed * self.dt
            for j in np.flatnonzero(self.falling):
                self.q[j] += np.clip(REST[j] - self.q[j], -fall, fall)
                self.falling[j] = self.q[j] != REST[j]
            lo = np.array([lim[0] for lim in JOINT_LIMITS])
            hi = np.array([lim[1] for lim in JOINT_LIMITS])
            self.q = np.clip(self.q, lo, hi)
            self.gripper = float(np.clip(self.gripper, *GRIPPER_RANGE_M))
            self.qd = (self.q - q_before) / self.dt

    def _send(self, arbitration_id: int, data: bytes) -> None:
        if self.silent or self.bus_off or (self.drop_prob and self._rng.random() < self.drop_prob):
            return
        self.bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False,
                                  timestamp=time.time()))
        self.frames_sent += 1

    def _feedback(self) -> None:
        with self._lock:
            q = [units.rad_to_millideg(v) for v in self.q - self.zero_offset]
            g = units.m_to_micrometre(self.gripper - self.gripper_zero_offset)
            arm_status = STATUS_ESTOP if self.estopped else self.status_fault
            status = struct.pack(">BBBBBBH", self.ctrl_mode, arm_status, self.move_mode, 0, 0, 0, self.error_code)
            gripper_status = DRIVER_ENABLED if self.gripper_enabled else 0
            motors = [(int(self.motor_enabled[m]), self.q[m] - self.zero_offset[m], self.qd[m]) for m in range(6)]
        self._send(STATUS, status)
        self._send(J12, struct.pack(">ii", q[0], q[1]))
        self._send(J34, struct.pack(">ii", q[2], q[3]))
        self._send(J56, struct.pack(">ii", q[4], q[5]))
        self._send(GRIPPER_FB, struct.pack(">ihBB", g, 0, gripper_status, 0))
        if self._tick % 4 == 0:  # speed 0.001 rad/s, current 0.001 A, position 0.001 rad
            for m, (_, pos, vel) in enumerate(motors):
                self._send(HIGH_SPD + m, struct.pack(">hHi", round(vel * 1000), 0, round(pos * 1000)))
        if self._tick % 10 == 0:  # 24.0 V, 30 C driver and motor, status byte, bus current
            for m, (on, _, _) in enumerate(motors):
                code = DRIVER_ENABLED * on | self.driver_faults[m]
                self._send(LOW_SPD + m, struct.pack(">HhbBH", 240, 30, 30, code, 0))
        if self.garbage:
            self._send(self._rng.randrange(0x700), bytes(self._rng.randrange(256) for _ in range(8)))
            for jid in (J12, J34, J56):  # impossible angles the SDK's own 300-degree filter lets through
                self._send(jid, struct.pack(">ii", 250_000, -250_000))

    def _receive(self) -> None:
        while (msg := self.bus.recv(timeout=0)) is not None:
            if not self.bus_off:
                self._handle(msg)

    def _run(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            self._receive()
            self._move()
            self._feedback()
            self._tick += 1
            next_t += self.dt
            delay = next_t - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.perf_counter()

    # --- the operator's hands --------------------------------------------------------------------
    def move_by_hand(self, joint: int | None = None, angle: float = 0.0, gripper: float | None = None) -> None:
        """Back-drive a released joint (1..6) to a physical ``angle``, or the gripper to ``gripper`` m."""
        with self._lock:
            if joint is not None:
                if self.motor_enabled[joint - 1]:
                    raise RuntimeError(f"joint {joint} is powered; release it before moving it by hand")
                self.q[joint - 1] = angle
                self.q_target[joint - 1] = angle - self.zero_offset[joint - 1]
                self.falling[joint - 1] = False  # held
            if gripper is not None:
                self.gripper = self.gripper_target = gripper

    def press_estop(self) -> None:
        """The stop button on the arm's own controller: the damped stop, reported in 0x2A1."""
        with self._lock:
            self.estopped = True
            self.estop_reported_at = time.time()

    def drop_motor(self, motor: int) -> None:
        """Motor ``motor`` (1..6) loses power on its own, as a driver fault would do."""
        with self._lock:
            self._power(motor - 1, False)

    # --- inspection -----------------------------------------------------------------------------
    def state(self) -> tuple[np.ndarray, float]:
        with self._lock:
            return self.q.copy(), self.gripper

    def commands(self, arbitration_id: int) -> list[can.Message]:
        """The kept frames (the last ``keep_frames`` of all ids) with this id, oldest first."""
        with self._lock:
            return [m for m in self.received if m.arbitration_id == arbitration_id]

    def count(self, arbitration_id: int) -> int:
        """How many frames with this id arrived since start, kept or not."""
        with self._lock:
            return self.received_counts[arbitration_id]

    @property
    def enabled(self) -> bool:
        return bool(self.motor_enabled.all())
