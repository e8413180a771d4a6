"""policy_node: cameras + joint states + instruction -> policy -> one smoothed command per tick.

Builds an observation only from inputs that are fresh (``max_age_s``) and time-aligned
(``max_skew_s``); runs the policy (the bundle's engine, ``policy_source: local``, or a
``pushcut-serve`` server, ``policy_source: host:port``) on a worker thread; hands the chunk to the
action-chunk broker, which publishes one command per control tick along the twin's smoothed path.
With stale inputs it publishes nothing (the arm drivers hold): a chunk in progress is abandoned as
soon as its inputs are older than ``max_age_s``, and the node says so. An empty instruction
(``/instruction`` ""; the trial node sends it between trials) idles it.

``execution`` (``pushcut.motion``): ``sync`` runs each chunk to its end and infers on frames
taken after its last command, so the arm waits for every inference; ``async`` starts the next
inference while the chunk runs, ``lead_s`` before the chunk's last segment (0: from the measured
inference latency), on the freshest frames and with the command the arm will have reached at the
takeover as its proprio, and splices the new chunk in there, so the commands never pause. The
twin's ``execution: async`` runs chunks the same way in evaluation.

``/estop`` true, from a publisher of any QoS (:mod:`pushcut_ros.inputs`), silences it within
one control tick: the chunk and any inference in flight are dropped and nothing is published until
``/estop`` false, after which it acts only on frames taken after the release. With
``heartbeat_topic`` set, a deadman that is silent for over ``heartbeat_timeout_s`` (or says false)
does the same until it beats again. A policy server that stops answering (closed, or no reply within
``server_timeout_s``) holds the arms the same way within one tick, and the node reconnects by
itself (every second), then acts on frames taken after the reconnection.

The policy's action rate and the arm speed it was trained at come from the bundle's action
contract (``deploy.bundle.check_contract``), never from a parameter: ``command_hz`` must be a
multiple of the action rate, or the node refuses to start, saying why. Commands carry the trained
speed percentage in ``velocity`` (all joints), which piper_ros reads as its speed and pushcut's arm
node checks against its own (a command at another speed is refused there);
``rehearsal_speed_percent`` sends a lower one instead, for a first motion at low speed (the chunks
run late: not a measurement).

Latency of every chunk is published in ms on ``/policy/<name>_ms``: ``frame_age`` (oldest input
at the request), ``queue`` (waiting for the server's engine), ``inference``, ``transport`` (round
trip minus the server's time), ``broker`` (chunk ready to its first command), ``latency`` (oldest
input to first command) and ``wait`` (how long the arm went without commands before the chunk;
0 when it took over in time). The trial node logs them per trial.

Every input is validated where it enters: a joint state that is not finite or far outside the
Piper's limits, an image of another encoding or an inconsistent size, an instruction the bundle
cannot read whole (the node then idles) is dropped, counted in
``rejected`` and logged (throttled) with its reason; nothing derived from it is published. The
engine refuses non-finite inputs and logits. Per-tick diagnostics are rolling windows.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String

from pushcut import spec
from pushcut.configs import ranges, require
from pushcut.deploy.broker import ActionChunkBroker
from pushcut.deploy.bundle import check_compatible, check_contract
from pushcut.deploy.client import ServerLost
from pushcut.deploy.load import load_policy
from pushcut.deploy.piper.driver import DriverConfig
from pushcut.deploy.piper.safety import implausible
from pushcut.motion import EXECUTION_MODES

from .conversions import arm_array, arm_state_msg, image_array, join_state, split_action, stamp_to_s
from .inputs import HEARTBEAT_TIMEOUT_S, StateInput, TopicAudit, make_heartbeat
from .params import declare
from .spin import spin_main
from .topics import (
    ESTOP_TOPIC,
    INSTRUCTION_TOPIC,
    POLICY_TIMINGS,
    camera_topic,
    joint_command_topic,
    joint_states_topic,
    policy_timing_topic,
)

WINDOW = 10_000  # per-tick diagnostics kept (about 50 s at 200 Hz)
RECONNECT_S = 1.0
SERVER_START_S = 10.0  # a policy server is waited for this long at start
LATENCY_WINDOW = 50  # inference round trips behind the measured lead


@ranges(server_timeout_s=">0", command_hz=">=1", lead_s=">=0", added_latency_s=">=0",
        max_age_s=">0", max_skew_s=">=0", heartbeat_timeout_s=">0", rehearsal_speed_percent="[0,100]")
@dataclass(frozen=True)
class PolicyNodeParams:
    """The policy node's ROS parameters."""

    bundle: str = ""
    policy_source: str = "local"  # local | host:port of a pushcut-serve server
    server_timeout_s: float = 0.5  # a server silent this long is lost: the arms hold
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    variant: str = "fp32"
    command_hz: int = int(DriverConfig.rate_hz)  # commands per second to the arms: the driver's rate
    execution: str = "sync"  # sync | async (overlapped, spliced chunks)
    lead_s: float = 0.0  # async: start the next inference this long ahead (0: measured)
    added_latency_s: float = 0.0  # local: rehearse a slower policy
    max_age_s: float = 0.25
    max_skew_s: float = 0.1
    instruction: str = ""
    heartbeat_topic: str = ""  # the operator's deadman (std_msgs/Bool); "" = off
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
    rehearsal_speed_percent: int = 0  # >0: a first motion below the trained speed (chunks run late); 0: the bundle's

    def __post_init__(self) -> None:
        require(self.execution in EXECUTION_MODES, f"execution {self.execution!r}: one of {list(EXECUTION_MODES)}")


def aspect_mismatch(frame_hw: tuple[int, int], trained_hw: tuple[int, int]) -> str | None:
    """Why frames of ``frame_hw`` (height, width) do not look as the training renders of
    ``trained_hw`` did once both are resized to the policy's square input (None: they do)."""
    frame, trained = frame_hw[1] / frame_hw[0], trained_hw[1] / trained_hw[0]
    if abs(frame - trained) < 0.01:
        return None
    return (f"frames of aspect {frame:.2f} ({frame_hw[1]}x{frame_hw[0]}) are squeezed into the policy's square "
            f"input differently from the {trained:.2f} renders it was trained on ({trained_hw[1]}x{trained_hw[0]}): "
            f"the same scene looks {'wider' if frame > trained else 'narrower'} to it; train on the camera's own "
            f"frames (env.image_size=[{frame_hw[0]},{frame_hw[1]}])")


def make_policy(p: PolicyNodeParams):
    """The local bundle or a client of a policy server (``policy_source``: local | host:port)."""
    if p.policy_source == "local" and not p.bundle:
        raise ValueError("parameter 'bundle' (an exported bundle directory) is required with policy_source local")
    if p.policy_source == "local":
        return load_policy(p.bundle, kind="bundle", providers=p.providers, variant=p.variant)
    return load_policy(p.policy_source, kind="server", timeout_s=p.server_timeout_s,
                       wait_s=SERVER_START_S)  # the server may still be starting


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("policy", **kwargs)
        p = self.params = declare(self, PolicyNodeParams)
        self.execution, self.lead_s, self.timeout_s = p.execution, p.lead_s, p.server_timeout_s
        self.policy = make_policy(p)
        self.added_latency_s = p.added_latency_s
        self.remote = p.policy_source != "local"
        manifest = self.policy.manifest
        check_compatible(manifest, spec.DUAL_ARM_DIM, list(spec.TWIN_CAMERAS))
        rehearsal = p.rehearsal_speed_percent or None
        contract = check_contract(manifest, p.command_hz, rehearsal, rehearsal=bool(rehearsal))
        if rehearsal:
            self.get_logger().warning(f"rehearsal at {rehearsal}% speed, trained at {contract['speed_percent']}%: "
                                      "the chunks run late; trials show the motion, not the policy's success")
        self.cameras = [c["name"] for c in manifest["cameras"]]
        self.image_size = manifest["cameras"][0]["image_size"]
        self.frame_size = tuple(contract["frame_size"])
        self.get_logger().info(f"policy: {self.policy.source}, execution {self.execution}, "
                               f"{contract['action_hz']} Hz actions at {contract['speed_percent']}% speed")
        self.command_hz = p.command_hz
        self.broker = ActionChunkBroker(p.command_hz // contract["action_hz"])
        self.max_age, self.max_skew = p.max_age_s, p.max_skew_s
        self.speed_percent = float(rehearsal or contract["speed_percent"])
        self.instruction = p.instruction or manifest["instruction"].get("default", "")
        problem = self.instruction and self.policy.instruction_problem(self.instruction)
        if problem:
            raise ValueError(f"parameter 'instruction': {problem}")
        self.images: dict[str, tuple[np.ndarray, float]] = {}
        self.states: dict[str, tuple[np.ndarray, float]] = {}
        for cam in self.cameras:
            self.create_subscription(Image, camera_topic(cam), lambda m, c=cam: self._on_image(c, m), 5)
        for arm in spec.ARMS:
            self.create_subscription(JointState, joint_states_topic(arm), lambda m, a=arm: self._on_state(a, m), 10)
        self.audit = TopicAudit(self)
        self.instruction_input = StateInput(self, String, INSTRUCTION_TOPIC, self._on_instruction, audit=self.audit)
        self.estop_input = StateInput(self, Bool, ESTOP_TOPIC, self._on_estop, audit=self.audit)
        self.heartbeat = make_heartbeat(self, p.heartbeat_topic, p.heartbeat_timeout_s, self.audit)
        self.heartbeat_lost = self.heartbeat is not None  # until the first beat
        self.cmd_pubs = {a: self.create_publisher(JointState, joint_command_topic(a), 10) for a in spec.ARMS}
        self.timing_pubs = {k: self.create_publisher(Float64, policy_timing_topic(k), 10) for k in POLICY_TIMINGS}
        self.fresh_after = 0.0  # frames must be newer than this (node clock, s)
        self.stale_drops = 0
        self.abandoned_chunks = 0
        self.inferences = 0
        self.late_chunks = 0  # async: chunks back after their planned takeover
        self.rejected: Counter[str] = Counter()
        self.timings: dict[str, deque[float]] = {k: deque(maxlen=WINDOW) for k in POLICY_TIMINGS}
        self.latencies_ms = self.timings["latency"]
        self.tick_times: deque[float] = deque(maxlen=WINDOW)
        self.command_gaps_ms: deque[float] = deque(maxlen=WINDOW)  # between commands of one episode
        self._last_publish: tuple[int, float] | None = None  # (epoch, perf_counter)
        self._round_trips: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.lead_ticks = self._measured_lead()
        self._resized: set[str] = set()
        self._lock = threading.Lock()
        self._pending: dict | None = None  # a chunk back from the policy, not yet taken over
        self._busy = False
        self._ticks = 0
        self._first_command_of: dict | None = None  # the chunk whose first command is due
        self._dry_since: float | None = None  # when the broker ran out while a chunk was awaited
        self._chunks_this_episode = 0
        self._epoch = 0  # bumped whenever what an inference in flight was for stops counting
        self.estopped = False
        self.estop_at: float | None = None  # when the last e-stop arrived (node clock, s)
        self.server_lost_at: float | None = None  # node clock, s; None while the server answers
        self._next_reconnect = 0.0
        self.timer = self.create_timer(1.0 / p.command_hz, self._tick, callback_group=MutuallyExclusiveCallbackGroup())

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
        size = self.image_size
        if img.shape[:2] != (size, size) and cam not in self._resized:
            self._resized.add(cam)
            self.get_logger().info(f"{cam}: {img.shape[1]}x{img.shape[0]} frames are resized to {size}x{size} "
                                   "for the policy, as in training")
            if note := aspect_mismatch(img.shape[:2], self.frame_size):
                self.get_logger().warning(f"{cam}: {note}")
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
        if set(self.images) != set(self.cameras) or set(self.states) != set(spec.ARMS):
            return float("inf")
        return now - min(t for _, t in (*self.images.values(), *self.states.values()))

    def _on_instruction(self, msg: String) -> None:
        """A new instruction starts a new episode: drop the current chunk. One the policy cannot
        read whole is dropped, and the node idles (it never acts on a cut-off instruction)."""
        try:
            problem = self.policy.instruction_problem(msg.data) if msg.data else None
        except (ServerLost, ValueError) as exc:
            problem = f"could not be checked ({exc})"
        if problem:
            self._reject("instruction", f"{problem}; idle until a valid one")
        with self._lock:
            self.instruction = "" if problem else msg.data
            self._drop_chunk()
            self.fresh_after = 0.0

    def _on_estop(self, msg: Bool) -> None:
        with self._lock:
            if msg.data == self.estopped:
                return
            self.estopped = msg.data
            self._drop_chunk()
            now = self._now()
            self.fresh_after = now  # after a release, act only on frames taken after it
            if msg.data:
                self.estop_at = now
        if msg.data:
            self.get_logger().error("e-stop: commands stopped until /estop is released")
        else:
            self.get_logger().warning("e-stop released: acting on fresh frames")

    def _deadman_holds(self) -> bool:
        """With a heartbeat configured: True while it is silent (publish nothing, the arms hold);
        the chunk is dropped when it goes silent, and after it returns only fresh frames count."""
        if self.heartbeat is None:
            return False
        alive = self.heartbeat.alive()
        if alive == (not self.heartbeat_lost):
            return not alive
        self.heartbeat_lost = not alive
        with self._lock:
            self._drop_chunk()
            self.fresh_after = self._now()
        if alive:
            self.get_logger().warning(f"heartbeat on {self.heartbeat.topic}: acting on fresh frames")
        else:
            self.get_logger().error(f"heartbeat on {self.heartbeat.topic} silent for over "
                                    f"{self.heartbeat.timeout_s} s: commands stopped, the arms hold")
        return not alive

    def _drop_chunk(self) -> None:
        """Forget the chunk in progress and the result of any inference in flight (under the lock);
        the next chunk starts a new episode of chunks (from rest, no wait counted)."""
        self.broker.reset()
        self._pending = None
        self._epoch += 1
        self._dry_since = None
        self._first_command_of = None
        self._chunks_this_episode = 0

    def observation(self, now: float) -> tuple[dict, float] | None:
        """The observation and its oldest stamp, or None when inputs are missing, stale or not
        newer than ``fresh_after``."""
        if self.inputs_age(now) > self.max_age:
            return None
        stamps = [t for _, t in self.images.values()] + [t for _, t in self.states.values()]
        if max(stamps) - min(stamps) > self.max_skew:
            return None
        if min(stamps) <= self.fresh_after:
            return None  # frames from before the last command (sync) or already used (async): wait
        obs = {
            spec.IMAGES: {c: img for c, (img, _) in self.images.items()},
            spec.PROPRIO: join_state({a: q for a, (q, _) in self.states.items()}).astype(np.float32),
            spec.INSTRUCTION: self.instruction,
        }
        return obs, min(stamps)

    # --- control --------------------------------------------------------------------------------
    def _measured_lead(self) -> int:
        """Async: ticks ahead of the takeover at which the next inference starts (``lead_s``, or
        from the round trips so far; one policy step before the first)."""
        if self.lead_s > 0:
            return math.ceil(self.lead_s * self.command_hz)
        if not self._round_trips:
            return self.broker.substeps
        p90 = float(np.percentile(self._round_trips, 90))
        return math.ceil(1.25 * p90 * self.command_hz) + 1

    def _infer(self, obs: dict, request: dict) -> None:
        t0 = time.perf_counter()
        try:
            chunk = self.policy.infer(obs)
            if self.added_latency_s:  # rehearse a slower policy
                time.sleep(self.added_latency_s)
            round_trip = time.perf_counter() - t0
            timing = self.policy.timing or {"queue_ms": 0.0, "infer_ms": round_trip * 1000, "transport_ms": 0.0}
            with self._lock:
                self._round_trips.append(round_trip)
                self.lead_ticks = self._measured_lead()  # once per round trip, not every tick
                if request["epoch"] == self._epoch:  # else an e-stop, a new instruction or a loss came
                    self._pending = {**request, "chunk": chunk, "timing": timing, "ready": self._now(),
                                     "ready_tick": self._ticks}
            self.inferences += 1
        except ServerLost as exc:
            self._server_lost(str(exc))
        except Exception as exc:  # noqa: BLE001 - a failed inference holds the arms, it does not crash the node
            self.get_logger().error(f"inference failed: {exc}")
        finally:
            self._busy = False

    def _server_lost(self, why: str) -> None:
        with self._lock:
            if self.server_lost_at is None:
                self.server_lost_at = self._now()
                self._drop_chunk()
                self.get_logger().error(f"policy server lost, arms hold: {why}")
            self._next_reconnect = time.monotonic() + RECONNECT_S

    def _reconnect(self) -> None:
        try:
            self.policy.connect()
        except ServerLost:
            self._next_reconnect = time.monotonic() + RECONNECT_S
        else:
            with self._lock:
                self.server_lost_at = None
                self.fresh_after = self._now()
            self.get_logger().warning("policy server back: acting on fresh frames")
        finally:
            self._busy = False

    def _take_over(self, now: float) -> None:
        """Splice the chunk that came back into the broker (under the lock)."""
        p, self._pending = self._pending, None
        keep = 0
        if self.execution == "async":
            keep = max(p["keep"] - (self._ticks - p["tick"]), 0)
            if p["keep"] and not keep:
                self.late_chunks += 1
        current = join_state({a: q for a, (q, _) in self.states.items()})
        self.broker.set_chunk(p["chunk"], current, keep)
        wait = 0.0 if self._dry_since is None else now - self._dry_since
        self._dry_since = None
        self._first_command_of = {**p, "wait": wait, "tick_in": self._ticks + keep,
                                  "counts": self._chunks_this_episode > 0}
        self._chunks_this_episode += 1

    def _wants_inference(self) -> bool:
        if self._busy or self._pending is not None:
            return False
        if self.execution == "sync":
            return self.broker.remaining == 0
        return self.broker.remaining <= self.lead_ticks + self.broker.substeps

    def _tick(self) -> None:
        now = self._now()
        self.tick_times.append(time.perf_counter())
        self._ticks += 1
        if self.remote and self.server_lost_at is None and not self.policy.connected:
            self._server_lost("the connection closed")
        if self.server_lost_at is not None:
            if not self._busy and time.monotonic() >= self._next_reconnect:
                self._busy = True
                threading.Thread(target=self._reconnect, daemon=True).start()
            return  # no server: publish nothing, the arms hold
        if self._deadman_holds():
            return
        with self._lock:
            if self.estopped or not self.instruction:
                return  # stopped or idle: publish nothing, the arms hold
            if self._pending is not None and (self.execution == "async" or self.broker.remaining == 0):
                self._take_over(now)
        if self.broker.remaining and self.inputs_age(now) > self.max_age:
            with self._lock:  # the chunk was planned on frames that have gone stale: hold
                self._drop_chunk()
            self.abandoned_chunks += 1
            self.get_logger().warning(f"inputs older than max_age_s {self.max_age}: chunk abandoned, arms hold",
                                      throttle_duration_sec=1.0)
            return
        if self._wants_inference():
            self._request(now)
        with self._lock:  # an e-stop that arrived since the top of this tick wins
            if self.estopped or self.server_lost_at is not None or self.heartbeat_lost:
                return
            if self.broker.remaining == 0:
                if self._dry_since is None and self._chunks_this_episode:
                    self._dry_since = now  # the arm waits for the next chunk from here
                return
            command = self.broker.next()
            stamp = self.get_clock().now().to_msg()
            if self.execution == "sync":
                self.fresh_after = stamp_to_s(stamp)
            for arm, target in split_action(command).items():
                msg = arm_state_msg(target, stamp)
                msg.velocity = [self.speed_percent] * len(msg.position)
                self.cmd_pubs[arm].publish(msg)
            t = time.perf_counter()
            if self._last_publish and self._last_publish[0] == self._epoch:
                self.command_gaps_ms.append((t - self._last_publish[1]) * 1000)
            self._last_publish = (self._epoch, t)
            first = self._first_command_of
            if first is not None and self._ticks >= first["tick_in"]:
                self._first_command_of = None
                self._account(first, self._now())

    def _request(self, now: float) -> None:
        got = self.observation(now)
        if got is None:
            if self.broker.remaining == 0:
                self.stale_drops += 1  # stale, missing or pre-command inputs: the arms hold
            return
        obs, stamp = got
        keep = 0
        if self.execution == "async":
            keep = max(self.broker.remaining - self.broker.substeps, 0)
            planned = self.broker.planned(keep)
            if planned is not None:  # the proprio at the takeover, as at a chunk boundary in training
                obs[spec.PROPRIO] = planned.astype(np.float32)
            self.fresh_after = stamp
        self._busy = True
        request = {"epoch": self._epoch, "stamp": stamp, "asked": now, "tick": self._ticks, "keep": keep}
        threading.Thread(target=self._infer, args=(obs, request), daemon=True).start()

    def destroy_node(self) -> None:
        self.policy.close()  # a server's connection is released, not left to time out
        super().destroy_node()

    def _account(self, p: dict, first_command: float) -> None:
        """Publish and keep the latency of a chunk at its first command."""
        t = p["timing"]
        values = {"frame_age": (p["asked"] - p["stamp"]) * 1000, "queue": t["queue_ms"],
                  "inference": t["infer_ms"], "transport": t["transport_ms"],
                  "broker": (first_command - p["ready"]) * 1000,
                  "latency": (first_command - p["stamp"]) * 1000}
        if p["counts"]:
            values["wait"] = p["wait"] * 1000
        for k, v in values.items():
            self.timings[k].append(v)
            self.timing_pubs[k].publish(Float64(data=float(v)))


def main(args=None) -> None:
    spin_main(PolicyNode, args)  # inference runs on its own thread


if __name__ == "__main__":
    main()
