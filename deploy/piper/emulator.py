"""An emulated Piper arm on python-can's in-process ``virtual`` bus, speaking the real frames.

It plays the arm's firmware: decodes the command frames the real ``piper_sdk`` sends (motion
control 0x151, joint targets 0x155-0x157 in 0.001 degree, gripper 0x159 in 0.001 mm, enable /
disable 0x471, emergency stop 0x150), moves its joints toward the targets at a realistic speed
(the speed rate percentage of ``max_joint_speed``), and streams feedback frames the SDK decodes
(status 0x2A1, joints 0x2A5-0x2A7, gripper 0x2A8, big-endian, as the SDK parses them).

Faults for tests: ``drop_prob`` (feedback frames lost), ``silent`` (no feedback at all),
``error_code`` (arm status reports an error), ``garbage`` (random frames, and joint feedback
frames at +-250 degrees, beyond every joint's range, interleaved with the real ones).

What arrives is kept for inspection, bounded: the last ``keep_frames`` frames (:meth:`commands`)
and a count per frame id since start (:meth:`count`); a driver at 200 Hz sends about a thousand
frames a second, so an emulated dry run of an hour would otherwise hold millions.
"""

from __future__ import annotations

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
JOINT_CONFIG, SET_ZERO = 0x475, 0xAE
MOTION_1, MOTION_2, JC12, JC34, JC56, GRIPPER_CMD, ENABLE = 0x150, 0x151, 0x155, 0x156, 0x157, 0x159, 0x471


class PiperEmulator:
    def __init__(self, channel: str, rate_hz: float = 200.0, max_joint_speed: float = JOINT_MAX_SPEED,
                 max_gripper_speed: float = 0.1, initial: np.ndarray | None = None, seed: int = 0,
                 keep_frames: int = 20_000):
        self.channel = channel
        self.bus = can.Bus(channel=channel, interface="virtual", receive_own_messages=False)
        self.dt = 1.0 / rate_hz
        self.max_joint_speed = max_joint_speed
        self.max_gripper_speed = max_gripper_speed
        self.q = np.zeros(6) if initial is None else np.asarray(initial[:6], dtype=float).copy()
        self.gripper = 0.0 if initial is None else float(initial[6])
        self.q_target = self.q.copy()
        # encoder zero offsets: reported angle = physical angle - offset (calibration sets them)
        self.zero_offset = np.zeros(6)
        self.gripper_zero_offset = 0.0
        self.motor_enabled = np.zeros(6, dtype=bool)
        self.gripper_target = self.gripper
        self.enabled = False
        self.estopped = False
        self.speed_rate = 0
        self.ctrl_mode = 0
        self.move_mode = 0
        # faults
        self.drop_prob = 0.0
        self.silent = False
        self.error_code = 0
        self.garbage = False
        # what arrived, for tests
        self.received: deque[can.Message] = deque(maxlen=keep_frames)
        self.received_counts: Counter[int] = Counter()
        self.frames_sent = 0
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
        self.bus.shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- firmware -------------------------------------------------------------------------------
    def _handle(self, msg: can.Message) -> None:
        d = bytes(msg.data)
        with self._lock:
            self.received.append(msg)
            self.received_counts[msg.arbitration_id] += 1
            if msg.arbitration_id == ENABLE and len(d) >= 2:
                motors = range(6) if d[0] in (0xFF, 7) else [d[0] - 1] if 1 <= d[0] <= 6 else []
                for m in motors:
                    if d[1] == 0x02 and not self.motor_enabled[m]:
                        self.q_target[m] = self.q[m] - self.zero_offset[m]  # a motor holds where it wakes up
                    self.motor_enabled[m] = d[1] == 0x02
                self.enabled = bool(self.motor_enabled.all())
            elif msg.arbitration_id == JOINT_CONFIG and len(d) >= 2 and d[1] == SET_ZERO:
                joints = range(6) if d[0] == 7 else [d[0] - 1] if 1 <= d[0] <= 6 else []
                for j in joints:
                    if not self.motor_enabled[j]:  # the firmware zeroes only a released joint
                        self.zero_offset[j] = self.q[j]
                        self.q_target[j] = 0.0
            elif msg.arbitration_id == MOTION_1 and len(d) >= 1:
                if d[0] == 0x01:
                    self.estopped = True
                    self.q_target, self.gripper_target = self.q - self.zero_offset, self.gripper
                elif d[0] == 0x02:
                    self.estopped = False
            elif msg.arbitration_id == MOTION_2 and len(d) >= 3:
                self.ctrl_mode, self.move_mode, self.speed_rate = d[0], d[1], d[2]
            elif msg.arbitration_id in (JC12, JC34, JC56) and len(d) == 8:
                a, b = struct.unpack(">ii", d)
                i = {JC12: 0, JC34: 2, JC56: 4}[msg.arbitration_id]
                if self.enabled and not self.estopped and self.ctrl_mode == 0x01:
                    self.q_target[i] = units.millideg_to_rad(a)
                    self.q_target[i + 1] = units.millideg_to_rad(b)
            elif msg.arbitration_id == GRIPPER_CMD and len(d) == 8:
                angle, _effort, code, zero = struct.unpack(">iHBB", d)
                if zero == SET_ZERO:
                    self.gripper_zero_offset = self.gripper
                elif self.enabled and not self.estopped and code & 0x01:
                    self.gripper_target = units.micrometre_to_m(angle)

    def _move(self) -> None:
        with self._lock:
            if not self.enabled or self.estopped:
                return
            # commands are in reported (calibrated) angles; the motors move physical ones
            q_goal = self.q_target + self.zero_offset
            step = self.max_joint_speed * max(self.speed_rate, 1) / 100.0 * self.dt
            self.q += np.clip(q_goal - self.q, -step, step)
            lo = np.array([lim[0] for lim in JOINT_LIMITS])
            hi = np.array([lim[1] for lim in JOINT_LIMITS])
            self.q = np.clip(self.q, lo, hi)
            g_step = self.max_gripper_speed * self.dt
            self.gripper += float(np.clip(self.gripper_target - self.gripper, -g_step, g_step))
            self.gripper = float(np.clip(self.gripper, *GRIPPER_RANGE_M))

    def _send(self, arbitration_id: int, data: bytes) -> None:
        if self.silent or (self.drop_prob and self._rng.random() < self.drop_prob):
            return
        self.bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False,
                                  timestamp=time.time()))
        self.frames_sent += 1

    def _feedback(self) -> None:
        with self._lock:
            q = [units.rad_to_millideg(v) for v in self.q - self.zero_offset]
            g = units.m_to_micrometre(self.gripper - self.gripper_zero_offset)
            arm_status = 0x01 if self.estopped else 0x00
            status = struct.pack(">BBBBBBH", self.ctrl_mode, arm_status, self.move_mode, 0, 0, 0, self.error_code)
        self._send(STATUS, status)
        self._send(J12, struct.pack(">ii", q[0], q[1]))
        self._send(J34, struct.pack(">ii", q[2], q[3]))
        self._send(J56, struct.pack(">ii", q[4], q[5]))
        self._send(GRIPPER_FB, struct.pack(">ihBB", g, 0, 0x01 if self.enabled else 0x00, 0))
        if self.garbage:
            self._send(self._rng.randrange(0x700), bytes(self._rng.randrange(256) for _ in range(8)))
            for jid in (J12, J34, J56):  # impossible angles the SDK's own 300-degree filter lets through
                self._send(jid, struct.pack(">ii", 250_000, -250_000))

    def _run(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            while True:
                msg = self.bus.recv(timeout=0)
                if msg is None:
                    break
                self._handle(msg)
            self._move()
            self._feedback()
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
            if gripper is not None:
                self.gripper = self.gripper_target = gripper

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
