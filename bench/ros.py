"""bench-ros: the ROS 2 stack against the twin, over DDS on loopback.

- the dry run in one process: camera-frame-to-command latency, control-tick jitter, success;
- the same dry run with one process per node, as ``ros2 launch`` runs it: success and latency;
- e-stop: time from publishing ``/estop`` to the last command anyone receives (repeated), for each
  QoS a sender may have (ROS 2's default, best-effort, transient-local);
- staleness: when the cameras stop, time from the last fresh frame to the last command (repeated);
- chunk execution: sync vs async (``execution``), the engine in the node vs a ``pushcut-serve``
  server over loopback (its own process), and both modes with 150 ms added to every inference:
  the arm's wait for inference per chunk, the gaps between commands, each latency component and
  success on the same seeds; and the twin's own evaluation, sync vs async, on the same seeds.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import rclpy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool

from bench.common import CACHE, cached_bundle, env_int, percentiles, sft_checkpoint, write
from pushcut.ros.composition import NodeSpec, twin_eval
from pushcut.ros.conversions import arm_state_msg, image_msg, stamp_to_s
from pushcut.ros.inputs import SENDER_QOS
from pushcut.ros.runner import dry_run, started
from pushcut.ros.topics import ESTOP_TOPIC
from pushcut.sim.config import EnvConfig

COMMAND_HZ = 50
REPEATS = 5
SERVER_PORT = 8765
ADDED_LATENCY_S = 0.15


def _fresh(name: str) -> str:
    """An empty trial-log folder: a dry run resumes an existing log, which would move its seeds."""
    path = CACHE / name
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def _until(executor, cond, timeout: float, every=None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if every:
            every()
        executor.spin_once(timeout_sec=0.01)
        if cond():
            return True
    return False


def _probe(context, name: str):
    node = rclpy.create_node(name, context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    received: list[tuple[float, JointState]] = []  # (monotonic receipt time, command)
    for arm in ("left", "right"):
        node.create_subscription(JointState, f"/{arm}/joint_command",
                                 lambda m: received.append((time.monotonic(), m)), 100)
    return node, executor, received


def estop_to_last_command(bundle: str, log_dir: str, qos) -> dict:
    """The twin dry run; once commands flow, ``/estop`` true from a sender with ``qos``; the time
    from its publication to the last command received after it (0 when none; about the 1 s
    listened when the stop went unheard), then release and wait for the next trial's. Also the
    stack's subscriptions that matched the sender."""
    specs = twin_eval("click_bell", bundle, 1000, log_dir, command_hz=COMMAND_HZ, record=False)
    context = rclpy.Context()
    rclpy.init(context=context)
    gaps = []
    try:
        with started(specs, context):
            node, executor, received = _probe(context, "bench_operator")
            estop = node.create_publisher(Bool, ESTOP_TOPIC, qos)
            # discovery: each node's subscriptions that match this sender (none: the stack cannot hear it)
            _until(executor, lambda: estop.get_subscription_count() >= len(specs), 10)
            matched = estop.get_subscription_count()
            for _ in range(REPEATS):
                n = len(received)
                if not _until(executor, lambda n=n: len(received) > n + 5, 60):
                    raise TimeoutError("no commands within 60 s")
                t0 = time.monotonic()
                estop.publish(Bool(data=True))
                _until(executor, lambda: False, 1.0)  # listen for a second
                after = [t for t, _ in received if t > t0]
                gaps.append(1000 * (max(after) - t0) if after else 0.0)
                estop.publish(Bool(data=False))
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return {"each": gaps, "max": max(gaps), "matched_subscriptions": matched}


def last_frame_to_last_command(bundle: str) -> list[float]:
    """The policy node alone, fed 25 Hz frames and joint states by a probe; once commands flow the
    frames stop (joint states go on): the time from the last frame's stamp to the last command's."""
    spec = NodeSpec("policy_node", "policy", parameters={"bundle": bundle, "command_hz": COMMAND_HZ})
    context = rclpy.Context()
    rclpy.init(context=context)
    gaps = []
    try:
        with started([spec], context) as (nodes, _):
            node, executor, received = _probe(context, "bench_cameras")
            image_pub = node.create_publisher(Image, "/cameras/head/image_raw", 10)
            state_pubs = {a: node.create_publisher(JointState, f"/{a}/joint_states", 10) for a in ("left", "right")}
            size = nodes["policy"].image_size
            img = np.full((size, size, 3), 128, np.uint8)
            q7 = np.array([0.0, 1.2, -1.1, 0.0, 0.9, 0.0, 0.07])
            cameras_on, last = [True], [0.0, 0.0]  # [last publish time, last frame stamp]

            def publish():
                if time.monotonic() - last[0] < 0.04:
                    return
                last[0] = time.monotonic()
                stamp = node.get_clock().now().to_msg()
                if cameras_on[0]:
                    image_pub.publish(image_msg(img, stamp, "head"))
                    last[1] = stamp_to_s(stamp)
                for pub in state_pubs.values():
                    pub.publish(arm_state_msg(q7, stamp))

            for _ in range(REPEATS):
                cameras_on[0] = True
                n = len(received)
                if not _until(executor, lambda n=n: len(received) > n + 5, 60, publish):
                    raise TimeoutError("no commands within 60 s")
                cameras_on[0] = False
                stopped = time.monotonic()
                _until(executor, lambda: False, 1.0, publish)
                after = [stamp_to_s(m.header.stamp) for t, m in received if t > stopped]
                gaps.append(1000 * (max(after) - last[1]) if after else 0.0)
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    return gaps


def _execution_figures(out: dict) -> dict:
    """What the chunk-execution comparison reports of one dry run."""
    timings = out["timings_ms"]
    return {"trials": out["summary"], "successes": [r["success"] for r in out["trials"]],
            "wait_for_inference_ms": percentiles(timings["wait"] or [0.0]),
            "command_gap_ms": percentiles(out["command_gaps_ms"], (50, 99, 100)),
            "late_chunks": out["late_chunks"], "inferences": out["inferences"],
            **{f"{k}_ms": percentiles(timings[k]) for k in ("frame_age", "queue", "inference", "transport",
                                                            "broker", "latency")}}


def _serve(bundle: str):
    """``pushcut-serve`` in its own process on SERVER_PORT; returns it once it listens."""
    cmd = [sys.executable, "-m", "pushcut.deploy.serve", f"bundle={bundle}", f"port={SERVER_PORT}",
           "hydra.run.dir=" + _fresh("serve")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("serving"):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # a full pipe would block it
            return proc
    raise RuntimeError(f"pushcut-serve did not start (exit {proc.wait()})")


def chunk_execution(bundle: str, trials: int, sync_local: dict) -> dict:
    from pushcut.deploy.engine import Engine
    from pushcut.training.eval import run_episodes

    runs = {"sync_local": sync_local}
    runs["async_local"] = dry_run("click_bell", bundle, trials, _fresh("ros_async"), policy={"execution": "async"})
    server = _serve(bundle)
    try:
        for ex in ("sync", "async"):
            runs[f"{ex}_server"] = dry_run("click_bell", bundle, trials, _fresh(f"ros_{ex}_server"),
                                           policy={"execution": ex, "policy_source": f"127.0.0.1:{SERVER_PORT}"})
    finally:
        server.terminate()
        server.wait()
    for ex in ("sync", "async"):
        runs[f"{ex}_local_plus_150ms"] = dry_run("click_bell", bundle, trials, _fresh(f"ros_{ex}_slow"),
                                                 policy={"execution": ex, "added_latency_s": ADDED_LATENCY_S})
    seeds = list(range(100_000, 100_000 + trials))
    engine = Engine(bundle)
    twin = {}
    for ex in ("sync", "async"):
        rows = run_episodes(engine, EnvConfig(task="click_bell", execution=ex), seeds, 1, progress=False)
        ok = [r["success"] for r in rows]
        twin[ex] = {"successes": ok, "success_rate": float(np.mean(ok))}
    return {"dry_runs": {k: _execution_figures(v) for k, v in runs.items()}, "twin_eval_same_seeds": twin,
            "added_latency_s": ADDED_LATENCY_S, "control_tick_ms": 1000 / COMMAND_HZ}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench-ros", description=__doc__.splitlines()[0])
    ap.add_argument("--estop-only", action="store_true", help="measure the e-stop alone (writes ros_estop.json)")
    args = ap.parse_args(argv)
    steps = env_int("PUSHCUT_BENCH_SFT_STEPS", 1500)
    bundle = cached_bundle(sft_checkpoint(50, steps), "bundle_50demos" if steps == 1500 else
                           f"bundle_50demos_{steps}steps", EnvConfig(task="click_bell"))
    estop = {name: estop_to_last_command(str(bundle), _fresh(f"ros_trials_estop_{name}"), qos)
             for name, qos in SENDER_QOS.items()}
    if args.estop_only:
        write("ros_estop", {"estop_to_last_command_ms": estop, "bundle": bundle.name})
        return
    trials = env_int("PUSHCUT_BENCH_ROS_TRIALS", 10)
    in_process = dry_run("click_bell", str(bundle), trials, _fresh("ros_trials"))
    processes = dry_run("click_bell", str(bundle), trials, _fresh("ros_trials_processes"), processes=True)
    ticks = np.array(in_process["tick_intervals_ms"])
    nominal = 1000 / COMMAND_HZ
    stale = last_frame_to_last_command(str(bundle))
    execution = chunk_execution(str(bundle), trials, in_process)
    write("ros", {
        "trials": in_process["summary"],
        "frame_to_command_latency_ms": percentiles(in_process["latencies_ms"]),
        "control_tick_ms": percentiles(ticks),
        "control_tick_jitter_ms": percentiles(np.abs(ticks - nominal)),
        "nominal_tick_ms": nominal,
        "stale_drops": in_process["stale_drops"],
        "inferences": in_process["inferences"],
        "one_process_per_node": {"trials": processes["summary"],
                                 "frame_to_command_latency_ms": percentiles(processes["latencies_ms"])},
        "estop_to_last_command_ms": estop,
        "last_fresh_frame_to_last_command_ms": {"each": stale, "max": max(stale), "max_age_ms": 250.0},
        "chunk_execution": execution,
    })


if __name__ == "__main__":
    main()
