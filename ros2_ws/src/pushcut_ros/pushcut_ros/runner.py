"""Runner of a composition: the same nodes and parameters as the launch files.

``ros2 launch`` is not installable from PyPI, so ``make demo``, the tests and ``bench-ros`` start
the specs of ``pushcut_ros.composition`` here, until the trial node has finished its trials (or a
timeout), lifecycle nodes configured and activated:

- in one process (:func:`run`): one rclpy context, every node spinning on its own thread;
- one process per node (:func:`run_processes`), as ``ros2 launch`` runs them, started in any
  order, each with its parameters file and remappings (``--ros-args``).

    pushcut-dryrun --task click_bell --bundle runs/.../bundle --trials 10 [--processes]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
import yaml
from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
from rclpy.parameter import Parameter

from pushcut.motion import EXECUTION_MODES

from .composition import NodeSpec, twin_eval

CLASSES = {
    "twin_node": ("twin_node", "TwinNode"),
    "policy_node": ("policy_node", "PolicyNode"),
    "trial_node": ("trial_node", "TrialNode"),
    "camera_node": ("camera_node", "CameraNode"),
    "piper_arm_node": ("piper_arm_node", "PiperArmNode"),
}


def _node_class(executable: str):
    module, cls = CLASSES[executable]
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def remap_args(spec: NodeSpec) -> list[str]:
    return [arg for a, b in spec.remappings for arg in ("-r", f"{a}:={b}")]


def instantiate(spec: NodeSpec, context):
    params = [Parameter(k, value=v) for k, v in spec.parameters.items()]
    cls = _node_class(spec.executable)
    kwargs = {"context": context, "parameter_overrides": params, "namespace": spec.namespace or None}
    if spec.remappings:
        kwargs["cli_args"] = ["--ros-args", *remap_args(spec)]
    if spec.executable == "piper_arm_node":
        return cls(name=spec.name, **kwargs)
    return cls(**kwargs)


@contextlib.contextmanager
def started(specs: list[NodeSpec], context=None):
    """The nodes of ``specs`` spinning in this process, by name, until the block ends.

    Like ``ros2 launch``, which gives every node its own process, every node gets its own
    single-threaded executor on its own thread: a node blocked in a callback never starves
    another node's timers. ``context`` (default: a new one) lets a caller add nodes of its own.
    """
    own = context is None
    if own:
        context = rclpy.Context()
        rclpy.init(context=context)
    nodes, executors, threads = {}, [], []
    try:
        for spec in specs:
            node = instantiate(spec, context)
            nodes[f"{spec.namespace}/{spec.name}".lstrip("/")] = node
            if spec.lifecycle:
                node.trigger_configure()
                node.trigger_activate()
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            executors.append(executor)
            thread = threading.Thread(target=_spin, args=(executor,), name=f"spin-{spec.name}", daemon=True)
            thread.start()
            threads.append(thread)
        yield nodes, threads
    finally:
        for executor in executors:
            executor.shutdown()
        for thread in threads:
            thread.join(timeout=5)
        for node in nodes.values():
            node.destroy_node()
        if own:
            rclpy.shutdown(context=context)


def run(specs: list[NodeSpec], timeout_s: float = 600.0) -> dict:
    """Run in this process until every trial node has finished; returns the nodes by name."""
    with started(specs) as (nodes, threads):
        trials = [n for n in nodes.values() if type(n).__name__ == "TrialNode"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(t.finished for t in trials):
            if not all(t.is_alive() for t in threads):
                raise RuntimeError("a node's executor stopped (see the error above)")
            time.sleep(0.05)
        if trials and not all(t.finished for t in trials):
            raise TimeoutError(f"the trials did not finish within {timeout_s}s")
    return nodes


def node_command(spec: NodeSpec, params_file: Path) -> list[str]:
    """The command line ``ros2 launch`` would run for ``spec`` (the module instead of the installed
    executable, so it runs from any install of pushcut)."""
    module = CLASSES[spec.executable][0]
    cmd = [sys.executable, "-m", f"{__package__}.{module}", "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        cmd += ["-r", f"__ns:=/{spec.namespace}"]
    return [*cmd, "--params-file", str(params_file), *remap_args(spec)]


def process_name(spec: NodeSpec) -> str:
    return f"{spec.namespace}_{spec.name}".strip("_")


def start_process(spec: NodeSpec, out_dir: Path) -> subprocess.Popen:
    """``spec``'s node in a process of its own, its parameters in ``<out_dir>/<name>.params.yaml``
    and its output in ``<out_dir>/<name>.log`` (:func:`process_name`)."""
    key = process_name(spec)
    params = out_dir / f"{key}.params.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": dict(spec.parameters)}}))
    with open(out_dir / f"{key}.log", "wb") as log:
        return subprocess.Popen(node_command(spec, params), stdout=log, stderr=subprocess.STDOUT)


def run_processes(specs: list[NodeSpec], out_dir: str | Path, order: list[int] | None = None,
                  stagger_s: float = 0.0, timeout_s: float = 600.0) -> dict:
    """One process per node, started in ``order`` (indices into ``specs``) ``stagger_s`` apart;
    lifecycle nodes are configured and activated through their ``change_state`` services. Runs
    until every trial node's process has exited (its trials done); then stops the others with
    SIGINT. Each node's output goes to ``<out_dir>/<name>.log``. Returns what a monitor node heard:
    the policy's frame-to-command latencies."""
    from std_msgs.msg import Float64

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = rclpy.Context()
    rclpy.init(context=context)
    monitor = rclpy.create_node("pushcut_runner", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(monitor)
    latencies: list[float] = []
    monitor.create_subscription(Float64, "/policy/latency_ms", lambda m: latencies.append(m.data), 100)
    procs: dict[str, subprocess.Popen] = {}
    trials = []
    try:
        for i in order if order is not None else range(len(specs)):
            spec = specs[i]
            key = process_name(spec)
            procs[key] = start_process(spec, out_dir)
            if spec.executable == "trial_node":
                trials.append(key)
            if spec.lifecycle:
                _bring_up(monitor, executor, spec)
            executor.spin_once(timeout_sec=0)
            time.sleep(stagger_s)
        deadline = time.monotonic() + timeout_s
        while any(procs[k].poll() is None for k in trials):
            dead = {k: p.returncode for k, p in procs.items() if p.poll() is not None and p.returncode != 0}
            if dead:
                raise RuntimeError(f"node process(es) exited: {dead}; see their logs in {out_dir}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the trials did not finish within {timeout_s}s; node logs in {out_dir}")
            executor.spin_once(timeout_sec=0.05)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        executor.shutdown()
        monitor.destroy_node()
        rclpy.shutdown(context=context)
    return {"latencies_ms": latencies}


def _bring_up(node, executor, spec: NodeSpec, timeout_s: float = 30.0) -> None:
    """Configure, then activate a lifecycle node in another process, as the launch files do.

    A service can be listed before its server is reachable (discovery still holds a node of the
    same name that has gone), and a request sent then is lost: ``get_state``, which changes
    nothing, is asked until the node answers, and only then is a transition requested."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    name = f"/{spec.namespace}/{spec.name}".replace("//", "/")
    deadline = time.monotonic() + timeout_s
    probe = node.create_client(GetState, f"{name}/get_state")
    while True:
        if probe.wait_for_service(timeout_sec=1.0):
            future = probe.call_async(GetState.Request())
            executor.spin_until_future_complete(future, timeout_sec=1.0)
            if future.done():
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: no answer from get_state within {timeout_s}s")
    node.destroy_client(probe)
    client = node.create_client(ChangeState, f"{name}/change_state")
    client.wait_for_service(timeout_sec=timeout_s)
    for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
        future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
        executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        if not (future.done() and future.result().success):
            raise RuntimeError(f"{name}: lifecycle transition {transition} failed (see the node's log)")
    node.destroy_client(client)


def _spin(executor) -> None:
    try:
        executor.spin()
    except (ExternalShutdownException, ShutdownException):
        pass


def dry_run(task: str, bundle: str, trials: int, log_dir: str, max_steps: int = 0, seed_start: int = 100000,
            timeout_s: float = 900.0, processes: bool = False, order: list[int] | None = None,
            stagger_s: float = 0.0, policy: dict | None = None) -> dict:
    """Twin + policy + trial nodes over real DDS, in one process or one process per node (started
    in ``order``); ``policy``: more policy-node parameters. Returns the trial summary and timing
    figures."""
    from pushcut.deploy.trials import TrialLog, summarize

    specs = twin_eval(task, bundle, trials, log_dir, max_steps=max_steps, seed_start=seed_start, policy=policy)
    log = TrialLog(Path(log_dir) / "trials.jsonl")
    before = len(log.read())
    if processes:
        out = run_processes(specs, Path(log_dir) / "nodes", order, stagger_s, timeout_s)
    else:
        node = run(specs, timeout_s)["policy"]
        out = {"latencies_ms": list(node.latencies_ms),
               "tick_intervals_ms": [1000 * (b - a) for a, b in itertools.pairwise(node.tick_times)],
               "command_gaps_ms": list(node.command_gaps_ms),
               "timings_ms": {k: list(v) for k, v in node.timings.items()},
               "stale_drops": node.stale_drops, "inferences": node.inferences, "late_chunks": node.late_chunks}
    rows = log.read()[before:]
    return {"summary": summarize(rows), "trials": rows, **out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pushcut-dryrun", description="Dry run of the ROS 2 stack against the twin")
    ap.add_argument("--task", default="click_bell")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--log-dir", default="trials")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--seed-start", type=int, default=100000)
    ap.add_argument("--processes", action="store_true", help="one process per node, as ros2 launch runs them")
    ap.add_argument("--execution", choices=EXECUTION_MODES, default="sync",
                    help="async: the next chunk is inferred while the current one runs, and spliced in")
    ap.add_argument("--policy-source", default="local", help="local, or host:port of a pushcut-serve server")
    args = ap.parse_args(argv)
    out = dry_run(args.task, args.bundle, args.trials, args.log_dir, args.max_steps, args.seed_start,
                  processes=args.processes,
                  policy={"execution": args.execution, "policy_source": args.policy_source})
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
