"""bench-driver: command-to-feedback round trip and achieved control rate, two arms at 200 Hz.

The real piper_sdk on python-can's virtual bus against two emulated arms (one bus each).
Round trip: from sending a joint target to the first feedback frame that shows the joint moving.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import percentiles, write
from pushcut.deploy.piper.driver import DriverConfig, PiperArm
from pushcut.deploy.piper.emulator import PiperEmulator


def main() -> None:
    start = np.array([0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.02])
    rigs = []
    for arm_name in ("left", "right"):
        emu = PiperEmulator(f"bench_{arm_name}", initial=start).start()
        arm = PiperArm(DriverConfig(can_port=f"bench_{arm_name}", bus="virtual", speed_rate=100))
        arm.connect()
        arm.enable()
        rigs.append((emu, arm))
    period = 1 / 200
    ticks, rtts = [], []
    t_next = time.perf_counter()
    probe_sent, probe_base = None, None
    end = time.perf_counter() + 5.0
    k = 0
    while time.perf_counter() < end:
        now = time.perf_counter()
        ticks.append(now)
        target = start + np.array([0.2 * np.sin(k / 100), 0.1, -0.1, 0, 0, 0, 0])
        for _, arm in rigs:
            arm.command(target)
            arm.tick()
        fb = rigs[0][1].feedback().q[0]
        if probe_sent is None and k % 50 == 0:
            probe_sent, probe_base = now, fb
        elif probe_sent is not None and abs(fb - probe_base) > 1e-4:
            rtts.append(1000 * (now - probe_sent))
            probe_sent = None
        k += 1
        t_next += period
        delay = t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    for emu, arm in rigs:
        arm.disable()
        arm.close()
        emu.stop()
    intervals = 1000 * np.diff(ticks)
    write("driver", {
        "arms": 2,
        "target_hz": 200,
        "achieved_hz": float(1000 / intervals.mean()),
        "tick_ms": percentiles(intervals),
        "command_to_feedback_ms": percentiles(rtts),
        "safety_counts": {name: dict(arm.safety.counts) for name, (_, arm) in zip(("left", "right"), rigs)},
    })


if __name__ == "__main__":
    main()
