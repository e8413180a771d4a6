"""bench-ros: camera-frame-to-command latency and control-tick jitter during a twin dry run."""

from __future__ import annotations

import numpy as np

from bench.common import CACHE, env_int, percentiles, sft_checkpoint, write
from pushcut.policy.export import ExportConfig, export
from pushcut.ros.runner import dry_run
from pushcut.sim.config import EnvConfig


def main() -> None:
    ckpt = sft_checkpoint(50, env_int("PUSHCUT_BENCH_SFT_STEPS", 1500))
    bundle = CACHE / "bundle_50demos"
    if not (bundle / "manifest.json").exists():
        export(ExportConfig(env=EnvConfig(task="click_bell"), checkpoint=str(ckpt), out_dir=str(bundle)))
    log_dir = CACHE / "ros_trials"
    out = dry_run("click_bell", str(bundle), env_int("PUSHCUT_BENCH_ROS_TRIALS", 10), str(log_dir))
    ticks = np.array(out["tick_intervals_ms"])
    nominal = 1000 / 50
    write("ros", {
        "trials": out["summary"],
        "frame_to_command_latency_ms": percentiles(out["latencies_ms"]),
        "control_tick_ms": percentiles(ticks),
        "control_tick_jitter_ms": percentiles(np.abs(ticks - nominal)),
        "nominal_tick_ms": nominal,
        "stale_drops": out["stale_drops"],
        "inferences": out["inferences"],
    })


if __name__ == "__main__":
    main()
