"""trial_node: the real-world evaluation protocol for stack_bowls and click_bell.

Per trial: prompt the operator to reset the scene (in dry runs: reset the twin to the trial's
seed), send the instruction, and stop at success, failure or timeout. The outcome comes from the
operator (``/trial/mark`` SetBool, ``/trial/abort``, or the terminal UI) or, in dry runs, from the
twin's ``/twin/success``. Every finished trial is appended to ``<log_dir>/trials.jsonl`` with
fsync (``pushcut.deploy.trials``) and recorded as MCAP (cameras, joint states, commands). The
record carries the policy's latency during the trial (``latency_ms``: p50, max and count of each
``/policy/<name>_ms``: frame age, queue, inference, transport, broker, latency, wait).
Numbering resumes from the log, so a killed node loses no finished trial.

``/estop`` true aborts the trial in progress (logged as ``aborted``, reason ``e-stop``) and
refuses new ones until ``/estop`` false; dry runs then go on with the next trial. In dry runs the
node waits until the twin and the policy have subscribed before it resets the twin, and repeats
the reset until the twin answers, so the nodes may start in any order, one process each.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Int64, String
from std_srvs.srv import SetBool, Trigger

from pushcut.deploy.bundle import load_manifest
from pushcut.deploy.trials import TrialLog
from pushcut.sim.tasks import TASKS
from pushcut.spec import ARMS

from .inputs import StateInput, TopicAudit
from .recorder import McapRecorder
from .topics import (
    ESTOP_TOPIC,
    INSTRUCTION_TOPIC,
    LATCHED,
    POLICY_TIMINGS,
    camera_topic,
    joint_command_topic,
    joint_states_topic,
    policy_timing_topic,
)

IDLE, RESETTING, RUNNING = "idle", "resetting", "running"
RESET_RETRY_S = 1.0  # a reset the twin has not answered by then is sent again


class TrialNode(Node):
    def __init__(self, **kwargs):
        super().__init__("trial", **kwargs)
        self.declare_parameter("task", "click_bell")
        self.declare_parameter("num_trials", 10)  # 0: until stopped
        self.declare_parameter("log_dir", "trials")
        self.declare_parameter("bundle", "")
        self.declare_parameter("mode", "operator")  # operator | twin (dry run: twin resets and judges)
        self.declare_parameter("seed_start", 100000)
        self.declare_parameter("timeout_s", 0.0)  # 0: the task's step limit at 25 Hz
        self.declare_parameter("cameras", ["head", "left_wrist", "right_wrist"])
        self.declare_parameter("record", True)
        self.declare_parameter("terminal_ui", False)
        self.declare_parameter("notes", "")
        g = lambda n: self.get_parameter(n).value
        self.task, self.mode, self.num_trials = g("task"), g("mode"), g("num_trials")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; known: {sorted(TASKS)}")
        if self.mode not in ("operator", "twin"):
            raise ValueError("mode must be 'operator' or 'twin'")
        task = TASKS[self.task]()
        self.instruction = task.instruction
        # operator mode: the task's step limit at 25 Hz; dry runs end on /twin/done, this is a backstop
        self.timeout_s = g("timeout_s") or task.max_steps / 25.0 * (1 if self.mode == "operator" else 20)
        self.seed_start, self.record, self.notes = g("seed_start"), g("record"), g("notes")
        self.bundle_sha = self._bundle_hash(g("bundle"))
        self.log_dir = Path(g("log_dir"))
        self.log_dir.mkdir(parents=True, exist_ok=True)  # the writer fails at start, not after a trial
        self.log = TrialLog(self.log_dir / "trials.jsonl")
        self.trial = self.log.next_trial(self.task)
        if self.log.skipped:
            self.get_logger().warning(f"{self.log.path}: skipped {len(self.log.skipped)} invalid line(s) "
                                      f"(line, reason): {self.log.skipped[:5]}")
        self.completed = 0
        self.state = IDLE
        self.recorder: McapRecorder | None = None
        self.started = 0.0
        self.success = False
        self._outcome: str | None = None
        self._reason = ""
        self._reset_sent = 0.0
        self.estopped = False
        self.instruction_pub = self.create_publisher(String, INSTRUCTION_TOPIC, LATCHED)
        self.reset_pub = self.create_publisher(Int64, "/twin/reset", 10)
        self.create_subscription(Int64, "/twin/ready", self._on_ready, 10)
        self.create_subscription(Bool, "/twin/success", self._on_success, 10)
        self.create_subscription(Bool, "/twin/done", self._on_done, 10)
        self.audit = TopicAudit(self)
        self.estop_input = StateInput(self, Bool, ESTOP_TOPIC, self._on_estop, audit=self.audit)
        self._timings = {k: deque(maxlen=10_000) for k in POLICY_TIMINGS}  # this trial's, per chunk
        for k in POLICY_TIMINGS:
            self.create_subscription(Float64, policy_timing_topic(k), lambda m, k=k: self._on_timing(k, m), 50)
        for topic in map(camera_topic, g("cameras")):
            self.create_subscription(Image, topic, lambda m, t=topic: self._rec(t, "sensor_msgs/msg/Image", m), 5)
        for arm in ARMS:
            for topic in (joint_states_topic(arm), joint_command_topic(arm)):
                self.create_subscription(JointState, topic,
                                         lambda m, t=topic: self._rec(t, "sensor_msgs/msg/JointState", m), 10)
        self.create_service(Trigger, "/trial/start", self._srv_start)
        self.create_service(SetBool, "/trial/mark", self._srv_mark)
        self.create_service(Trigger, "/trial/abort", self._srv_abort)
        self.create_timer(0.02, self._tick)
        self.get_logger().info(f"{self.task}: next trial {self.trial}, log {self.log.path}")
        self.instruction_pub.publish(String(data=""))  # the policy idles until a trial starts
        if self.mode == "twin":
            self._start()
        elif g("terminal_ui"):
            threading.Thread(target=self._terminal_ui, daemon=True).start()

    @staticmethod
    def _bundle_hash(bundle: str) -> str:
        if not bundle:
            return ""
        return load_manifest(bundle, verify=False)["signature"]  # covers the manifest and every file

    # --- protocol -------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.num_trials > 0 and self.completed >= self.num_trials

    @property
    def seed(self) -> int:
        return self.seed_start + self.trial - 1

    def _start(self) -> bool:
        if self.state != IDLE or self.finished or self.estopped:
            return False
        self.success = False
        self._outcome, self._reason = None, ""
        if self.mode == "twin":
            self.state = RESETTING  # the reset goes out from _tick once the twin and the policy listen
            self._reset_sent = 0.0
        else:
            self.get_logger().info(f"trial {self.trial}: scene reset by the operator; running")
            self._run()
        return True

    def _on_ready(self, msg: Int64) -> None:
        if self.state == RESETTING and msg.data == self.seed:
            self._run()

    def _peers_listen(self) -> bool:
        """The twin takes resets and the policy takes instructions (discovery has matched both)."""
        return self.reset_pub.get_subscription_count() > 0 and self.instruction_pub.get_subscription_count() > 0

    def _on_estop(self, msg: Bool) -> None:
        if msg.data == self.estopped:
            return
        self.estopped = msg.data
        if msg.data:
            self.get_logger().error(f"e-stop: trial {self.trial} aborted; no trial starts until /estop is released"
                                    if self.state == RUNNING else "e-stop: no trial starts until /estop is released")
            if self.state == RUNNING:
                self._reason = "e-stop"
                self._finish("aborted")  # and the policy is told to idle
            self.state = IDLE
        else:
            self.get_logger().warning("e-stop released")
            if self.mode == "twin":
                self._start()

    def _run(self) -> None:
        if self.record:
            self.recorder = McapRecorder(self.log_dir / "recordings" / f"{self.task}_{self.trial:04d}.mcap")
        self.instruction_pub.publish(String(data=self.instruction))
        for values in self._timings.values():
            values.clear()
        self.started = time.monotonic()
        self.state = RUNNING

    def _on_success(self, msg: Bool) -> None:
        if self.mode == "twin" and self.state == RUNNING and msg.data:
            self._outcome = "success"

    def _on_done(self, msg: Bool) -> None:
        """In dry runs the twin's own step limit ends a trial (its time runs with the commands)."""
        if self.mode == "twin" and self.state == RUNNING and msg.data and self._outcome is None:
            self._outcome = "timeout"

    def _tick(self) -> None:
        if self.state == RESETTING and time.monotonic() - self._reset_sent > RESET_RETRY_S and self._peers_listen():
            self.reset_pub.publish(Int64(data=self.seed))
            self._reset_sent = time.monotonic()
        if self.state != RUNNING:
            return
        if self._outcome is None and time.monotonic() - self.started > self.timeout_s:
            self._outcome = "timeout"
        if self._outcome is not None:
            self._finish(self._outcome)

    def _finish(self, outcome: str) -> None:
        duration = time.monotonic() - self.started
        recording = ""
        if self.recorder is not None:
            self.recorder.close()
            recording = str(self.recorder.path)
            self.recorder = None
        record = self.log.append({
            "task": self.task, "trial": self.trial, "outcome": outcome, "duration_s": round(duration, 3),
            "bundle_sha256": self.bundle_sha, "seed": self.seed if self.mode == "twin" else None,
            "mode": self.mode, "notes": self.notes, "recording": recording, "finished_at": time.time(),
            **({"reason": self._reason} if self._reason else {}),
            "latency_ms": {k: {"p50": round(float(np.percentile(v, 50)), 2), "max": round(max(v), 2), "n": len(v)}
                           for k, v in self._timings.items() if v},
        })
        self.get_logger().info(f"trial {self.trial}: {outcome} in {duration:.1f}s")
        self.instruction_pub.publish(String(data=""))  # stop: the policy drops its chunk
        self.trial += 1
        self.completed += 1
        self.state = IDLE
        if self.mode == "twin" and not self.finished:
            self._start()  # refused while e-stopped
        return record

    def _on_timing(self, name: str, msg: Float64) -> None:
        """The policy's latency of each chunk, kept for the trial's record."""
        if self.state == RUNNING and np.isfinite(msg.data):
            self._timings[name].append(float(msg.data))

    def _rec(self, topic: str, datatype: str, msg) -> None:
        if self.recorder is not None and self.state == RUNNING:
            self.recorder.write(topic, datatype, msg)

    # --- operator -------------------------------------------------------------------------------
    def _srv_start(self, request, response):
        response.success = self._start()
        response.message = f"trial {self.trial} running" if response.success else f"cannot start in state {self.state}"
        return response

    def _srv_mark(self, request, response):
        if self.state != RUNNING:
            response.success, response.message = False, "no trial is running"
            return response
        self._outcome = "success" if request.data else "failure"
        response.success, response.message = True, f"trial {self.trial} marked {self._outcome}"
        return response

    def _srv_abort(self, request, response):
        if self.state != RUNNING:
            response.success, response.message = False, "no trial is running"
            return response
        self._outcome = "aborted"
        response.success, response.message = True, f"trial {self.trial} aborted"
        return response

    def _terminal_ui(self) -> None:
        print("[enter] start trial   s: success   f: failure   a: abort", flush=True)
        for line in sys.stdin:
            key = line.strip().lower()
            if key == "" and self.state == IDLE:
                self._start()
            elif key in ("s", "f") and self.state == RUNNING:
                self._outcome = "success" if key == "s" else "failure"
            elif key == "a" and self.state == RUNNING:
                self._outcome = "aborted"


def main(args=None) -> None:
    with rclpy.init(args=args):
        node = TrialNode()
        try:
            while rclpy.ok() and not node.finished:
                rclpy.spin_once(node, timeout_sec=0.1)
        except KeyboardInterrupt:
            pass
        finally:
            node.destroy_node()


if __name__ == "__main__":
    main()
