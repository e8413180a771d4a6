"""In-process runner of a composition: the same nodes and parameters as the launch files.

``ros2 launch`` is not installable from PyPI, so ``make demo``, the tests and ``bench-ros`` start
the specs of ``pushcut_ros.composition`` here: one rclpy context, every node spinning on its
own thread, lifecycle nodes configured and activated, until the trial node has finished its
trials (or a timeout).

    pushcut-dryrun --task click_bell --bundle runs/.../bundle --trials 10
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, ShutdownException, SingleThreadedExecutor
from rclpy.parameter import Parameter

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


def instantiate(spec: NodeSpec, context):
    params = [Parameter(k, value=v) for k, v in spec.parameters.items()]
    cls = _node_class(spec.executable)
    kwargs = {"context": context, "parameter_overrides": params, "namespace": spec.namespace or None}
    if spec.executable == "piper_arm_node":
        return cls(name=spec.name, **kwargs)
    return cls(**kwargs)


def run(specs: list[NodeSpec], timeout_s: float = 600.0) -> dict:
    """Run until every trial node has finished; returns the nodes by name for inspection.

    Like ``ros2 launch``, which gives every node its own process, every node gets its own
    single-threaded executor on its own thread: a node blocked in a callback never starves
    another node's timers.
    """
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
        trials = [n for n in nodes.values() if type(n).__name__ == "TrialNode"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(t.finished for t in trials):
            if not all(t.is_alive() for t in threads):
                raise RuntimeError("a node's executor stopped (see the error above)")
            time.sleep(0.05)
        if trials and not all(t.finished for t in trials):
            raise TimeoutError(f"the trials did not finish within {timeout_s}s")
    finally:
        for executor in executors:
            executor.shutdown()
        for thread in threads:
            thread.join(timeout=5)
        for node in nodes.values():
            node.destroy_node()
        rclpy.shutdown(context=context)
    return nodes


def _spin(executor) -> None:
    try:
        executor.spin()
    except (ExternalShutdownException, ShutdownException):
        pass


def dry_run(task: str, bundle: str, trials: int, log_dir: str, max_steps: int = 0, seed_start: int = 100000,
            timeout_s: float = 900.0) -> dict:
    """Twin + policy + trial nodes over real DDS; returns the trial summary and timing figures."""
    from pushcut.deploy.trials import TrialLog, summarize

    specs = twin_eval(task, bundle, trials, log_dir, max_steps=max_steps, seed_start=seed_start)
    log = TrialLog(Path(log_dir) / "trials.jsonl")
    before = len(log.read())
    nodes = run(specs, timeout_s)
    rows = log.read()[before:]
    policy = nodes["policy"]
    ticks = policy.tick_times
    return {"summary": summarize(rows), "trials": rows, "latencies_ms": list(policy.latencies_ms),
            "tick_intervals_ms": [1000 * (b - a) for a, b in itertools.pairwise(ticks)],
            "stale_drops": policy.stale_drops, "inferences": policy.inferences}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pushcut-dryrun", description="Dry run of the ROS 2 stack against the twin")
    ap.add_argument("--task", default="click_bell")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--log-dir", default="trials")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--seed-start", type=int, default=100000)
    args = ap.parse_args(argv)
    out = dry_run(args.task, args.bundle, args.trials, args.log_dir, args.max_steps, args.seed_start)
    print(json.dumps(out["summary"], indent=2))


if __name__ == "__main__":
    main()
