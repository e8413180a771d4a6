"""policy_node: cameras + joint states + instruction -> ONNX engine -> one smoothed command per tick.

Builds an observation only from inputs that are fresh (``max_age_s``), time-aligned
(``max_skew_s``) and taken after the last command it sent (never acting on frames from before
the motion it commanded); runs the bundle's engine (``pushcut.deploy.engine``) on a worker thread;
hands the chunk to the action-chunk broker, which publishes one command per control tick along
the twin's smoothed path. With stale inputs it publishes nothing (the arm drivers hold): a chunk in
progress is abandoned as soon as its inputs are older than ``max_age_s``, and the node says so.
An empty instruction (``/instruction`` ""; the trial node sends it between trials) idles it.

``/estop`` true silences it within one control tick: the chunk and any inference in flight are
dropped and nothing is published until ``/estop`` false, after which it acts only on frames taken
after the release. Commands carry the speed percentage ``speed_percent`` in ``velocity`` (all
joints), which piper_ros reads as its speed (100 % when empty); pushcut's arm node uses its own.

Every input is validated where it enters: a joint state that is not finite or far outside the
Piper's limits, an image of another encoding or an inconsistent size, an instruction the bundle
cannot read whole (the node then idles) is dropped, counted in
``rejected`` and logged (throttled) with its reason; nothing derived from it is published. The
engine refuses non-finite inputs and logits. Per-tick diagnostics are rolling windows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String

from pushcut import spec
from pushcut.deploy.bundle import check_compatible
from pushcut.deploy.engine import Engine
from pushcut.deploy.piper.safety import implausible
from pushcut.deploy.policy import ActionChunkBroker
from pushcut.policy.preprocess import instruction_problem

from .conversions import (
    ESTOP_TOPIC,
    INSTRUCTION_TOPIC,
    LATCHED,
    arm_array,
    arm_state_msg,
    camera_topic,
    image_array,
    join_state,
    joint_command_topic,
    joint_states_topic,
    spin_main,
    split_action,
    stamp_to_s,
)

WINDOW = 10_000  # per-tick diagnostics kept (about 50 s at 200 Hz)


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("policy", **kwargs)
        self.declare_parameter("bundle", "")
        self.declare_parameter("providers", ["CPUExecutionProvider"])
        self.declare_parameter("variant", "fp32")
        self.declare_parameter("control_hz", 200)
        self.declare_parameter("step_hz", 25)  # the policy's action period (the twin's control rate)
        self.declare_parameter("max_age_s", 0.25)
        self.declare_parameter("max_skew_s", 0.1)
        self.declare_parameter("instruction", "")
        self.declare_parameter("speed_percent", 50)  # the velocity field of each command (piper_ros: 1-100)
        g = self.get_parameter
        bundle = g("bundle").value
        if not bundle:
            raise ValueError("parameter 'bundle' (an exported bundle directory) is required")
        self.engine = Engine(bundle, providers=g("providers").value, variant=g("variant").value)
        check_compatible(self.engine.manifest, spec.DUAL_ARM_DIM, list(spec.TWIN_CAMERAS))
        self.get_logger().info(f"bundle {bundle} on {self.engine.providers[0]}")
        control_hz, step_hz = g("control_hz").value, g("step_hz").value
        if control_hz % step_hz:
            raise ValueError(f"control_hz {control_hz} must be a multiple of step_hz {step_hz}")
        self.broker = ActionChunkBroker(control_hz // step_hz)
        self.max_age, self.max_skew = g("max_age_s").value, g("max_skew_s").value
        self.speed_percent = float(g("speed_percent").value)
        if not 1 <= self.speed_percent <= 100:
            raise ValueError(f"speed_percent {self.speed_percent} must be within 1-100")
        self.instruction = g("instruction").value or self.engine.manifest["instruction"].get("default", "")
        problem = self.instruction and instruction_problem(self.engine.tokenizer, self.instruction)
        if problem:
            raise ValueError(f"parameter 'instruction': {problem}")
        self.images: dict[str, tuple[np.ndarray, float]] = {}
        self.states: dict[str, tuple[np.ndarray, float]] = {}
        for cam in self.engine.cameras:
            self.create_subscription(Image, camera_topic(cam), lambda m, c=cam: self._on_image(c, m), 5)
        for arm in spec.ARMS:
            self.create_subscription(JointState, joint_states_topic(arm), lambda m, a=arm: self._on_state(a, m), 10)
        self.create_subscription(String, INSTRUCTION_TOPIC, self._on_instruction, LATCHED)
        self.create_subscription(Bool, ESTOP_TOPIC, self._on_estop, LATCHED)
        self.cmd_pubs = {a: self.create_publisher(JointState, joint_command_topic(a), 10) for a in spec.ARMS}
        self.latency_pub = self.create_publisher(Float64, "/policy/latency_ms", 10)
        self.last_command_stamp = 0.0
        self.stale_drops = 0
        self.abandoned_chunks = 0
        self.inferences = 0
        self.rejected: Counter[str] = Counter()
        self.latencies_ms: deque[float] = deque(maxlen=WINDOW)
        self.tick_times: deque[float] = deque(maxlen=WINDOW)
        self._resized: set[str] = set()
        self._lock = threading.Lock()
        self._pending: tuple[np.ndarray, float] | None = None
        self._busy = False
        self._first_of_chunk = False
        self._epoch = 0  # bumped whenever what an inference in flight was for stops counting
        self.estopped = False
        self.estop_at: float | None = None  # when the last e-stop arrived (node clock, s)
        self.timer = self.create_timer(1.0 / control_hz, self._tick, callback_group=MutuallyExclusiveCallbackGroup())

    # --- inputs ---------------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, what: str, reason: str) -> None:
        self.rejected[what] += 1
        self.get_logger().warning(f"dropping {what}: {reason} ({self.rejected[what]} so far)",
                                  throttle_duration_sec=1.0)

    def _on_image(self, cam: str, msg: Image) -> None:
        try:
            img = image_array(msg)
        except ValueError as exc:
            return self._reject(f"{cam} image", str(exc))
        size = self.engine.image_size
        if img.shape[:2] != (size, size) and cam not in self._resized:
            self._resized.add(cam)
            self.get_logger().info(f"{cam}: {img.shape[1]}x{img.shape[0]} frames are resized to {size}x{size} "
                                   "for the policy, as in training")
        self.images[cam] = (img, stamp_to_s(msg.header.stamp))

    def _on_state(self, arm: str, msg: JointState) -> None:
        try:
            q = arm_array(msg)
        except ValueError as exc:
            return self._reject(f"{arm} joint state", str(exc))
        if implausible(q):
            return self._reject(f"{arm} joint state", f"outside the Piper's limits: {np.round(q, 3).tolist()}")
        self.states[arm] = (q, stamp_to_s(msg.header.stamp))

    def inputs_age(self, now: float) -> float:
        """Seconds since the oldest of the newest frame of every input (inf when one is missing)."""
        if set(self.images) != set(self.engine.cameras) or set(self.states) != set(spec.ARMS):
            return float("inf")
        return now - min(t for _, t in (*self.images.values(), *self.states.values()))

    def _on_instruction(self, msg: String) -> None:
        """A new instruction starts a new episode: drop the current chunk. One the policy cannot
        read whole is dropped, and the node idles (it never acts on a cut-off instruction)."""
        problem = instruction_problem(self.engine.tokenizer, msg.data) if msg.data else None
        if problem:
            self._reject("instruction", f"{problem}; idle until a valid one")
        with self._lock:
            self.instruction = "" if problem else msg.data
            self._drop_chunk()
            self.last_command_stamp = 0.0

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if msg.data == self.estopped:
                return
            self.estopped = msg.data
            self._drop_chunk()
            now = self._now()
            self.last_command_stamp = now  # after a release, act only on frames taken after it
            if msg.data:
                self.estop_at = now
        if msg.data:
            self.get_logger().error("e-stop: commands stopped until /estop is released")
        else:
            self.get_logger().warning("e-stop released: acting on fresh frames")

    def _drop_chunk(self) -> None:
        """Forget the chunk in progress and the result of any inference in flight (under the lock)."""
        self.broker.reset()
        self._pending = None
        self._epoch += 1

    def observation(self, now: float) -> tuple[dict, float] | None:
        """The observation and its oldest stamp, or None when inputs are missing or stale."""
        if self.inputs_age(now) > self.max_age:
            return None
        stamps = [t for _, t in self.images.values()] + [t for _, t in self.states.values()]
        if max(stamps) - min(stamps) > self.max_skew:
            return None
        if min(stamps) <= self.last_command_stamp:
            return None  # frames from before the last command: wait for the next ones
        obs = {
            spec.IMAGES: {c: img for c, (img, _) in self.images.items()},
            spec.PROPRIO: join_state({a: q for a, (q, _) in self.states.items()}).astype(np.float32),
            spec.INSTRUCTION: self.instruction,
        }
        return obs, min(stamps)

    # --- control --------------------------------------------------------------------------------
    def _infer(self, obs: dict, stamp: float, epoch: int) -> None:
        try:
            chunk = self.engine.infer(obs)
            with self._lock:
                if epoch == self._epoch:  # else an e-stop or a new instruction came meanwhile
                    self._pending = (chunk, stamp)
            self.inferences += 1
        except Exception as exc:  # noqa: BLE001 - a failed inference holds the arms, it does not crash the node
            self.get_logger().error(f"inference failed: {exc}")
        finally:
            self._busy = False

    def _tick(self) -> None:
        now = self._now()
        self.tick_times.append(time.perf_counter())
        with self._lock:
            if self.estopped or not self.instruction:
                return  # stopped or idle: publish nothing, the arms hold
            if self.broker.remaining == 0 and self._pending is not None:
                chunk, stamp = self._pending
                self._pending = None
                current = join_state({a: q for a, (q, _) in self.states.items()})
                self.broker.set_chunk(chunk, current)
                self._first_of_chunk = stamp
        if self.broker.remaining and self.inputs_age(now) > self.max_age:
            with self._lock:  # the chunk was planned on frames that have gone stale: hold
                self._drop_chunk()
            self.abandoned_chunks += 1
            self.get_logger().warning(f"inputs older than max_age_s {self.max_age}: chunk abandoned, arms hold",
                                      throttle_duration_sec=1.0)
            return
        if self.broker.remaining == 0:
            if not self._busy:
                got = self.observation(now)
                if got is None:
                    self.stale_drops += 1
                    return  # stale, missing or pre-command inputs: publish nothing, the arms hold
                self._busy = True
                threading.Thread(target=self._infer, args=(*got, self._epoch), daemon=True).start()
            return
        with self._lock:  # an e-stop that arrived since the top of this tick wins
            if self.estopped or self.broker.remaining == 0:
                return
            command = self.broker.next()
            stamp = self.get_clock().now().to_msg()
            self.last_command_stamp = stamp_to_s(stamp)
            for arm, target in split_action(command).items():
                msg = arm_state_msg(target, stamp)
                msg.velocity = [self.speed_percent] * len(msg.position)
                self.cmd_pubs[arm].publish(msg)
        if self._first_of_chunk:
            latency = (self._now() - self._first_of_chunk) * 1000
            self.latencies_ms.append(latency)
            self.latency_pub.publish(Float64(data=latency))
            self._first_of_chunk = False


def main(args=None) -> None:
    spin_main(PolicyNode, args)  # inference runs on its own thread


if __name__ == "__main__":
    main()
