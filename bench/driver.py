"""bench-driver: the Piper driver against two emulated arms, one CAN bus each, at the deployed
defaults (speed rate 50%, 200 Hz).

The real piper_sdk on python-can's virtual bus. Measured: the achieved control rate and the
command-to-feedback round trip (from sending a joint target to the first feedback frame that shows
the joint moving) while both arms follow a slow sinusoid; the largest lead of a sent joint target
over the measured joints during a far move (bounded by ``max_relative_target``); the time from an
emergency stop reported by the arm (its own button, 0x2A1) to the last target frame on the bus.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import percentiles, write
from pushcut.deploy.piper.driver import DriverConfig, PiperArm
from pushcut.deploy.piper.emulator import JC12, PiperEmulator

START = np.array([0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.02])
FAR = np.array([2.0, 1.5, -1.5, 0.5, 0.5, 0.5, 0.05])


def control_loop(rigs, seconds: float, target_fn, on_tick=None) -> list[float]:
    """Tick both arms at their control rate for ``seconds``; returns the tick times."""
    period = 1 / rigs[0][1].cfg.rate_hz
    ticks = []
    t_next = time.perf_counter()
    end = t_next + seconds
    k = 0
    while time.perf_counter() < end:
        ticks.append(time.perf_counter())
        for _, arm in rigs:
            arm.command(target_fn(k))
            sent = arm.tick()
            if on_tick is not None:
                on_tick(arm, sent)
        k += 1
        t_next += period
        delay = t_next - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return ticks


def main() -> None:
    rigs = []
    for arm_name in ("left", "right"):
        emu = PiperEmulator(f"bench_{arm_name}", initial=START).start()
        arm = PiperArm(DriverConfig(can_port=f"bench_{arm_name}", bus="virtual"))
        arm.connect()
        arm.enable()
        rigs.append((emu, arm))
    left = rigs[0][1]

    rtts, probe = [], {"sent": None, "base": None, "k": 0}

    def round_trip(arm, _sent):
        if arm is not left:
            return
        now, fb = time.perf_counter(), arm.feedback().q[0]
        if probe["sent"] is None and probe["k"] % 50 == 0:
            probe["sent"], probe["base"] = now, fb
        elif probe["sent"] is not None and abs(fb - probe["base"]) > 1e-4:
            rtts.append(1000 * (now - probe["sent"]))
            probe["sent"] = None
        probe["k"] += 1

    ticks = control_loop(rigs, 5.0, lambda k: START + np.array([0.2 * np.sin(k / 100), 0.1, -0.1, 0, 0, 0, 0]),
                         round_trip)
    intervals = 1000 * np.diff(ticks)

    leads = []
    control_loop(rigs, 2.5, lambda k: FAR,
                 lambda arm, sent: sent is not None and leads.append(float(np.abs(sent[:6] - arm.feedback().q).max())))

    reported = {}
    for emu, arm in rigs:
        emu.press_estop()
        reported[arm.cfg.can_port] = emu.estop_reported_at
    control_loop(rigs, 0.5, lambda k: START)
    estop_ms = {arm.cfg.can_port: 1000 * (emu.last_received[JC12] - reported[arm.cfg.can_port]) for emu, arm in rigs}
    faults = {arm.cfg.can_port: arm.fault for _, arm in rigs}

    for emu, arm in rigs:
        arm.close()
        emu.stop()
    write("driver", {
        "arms": 2,
        "speed_percent": left.cfg.speed_percent,
        "target_hz": left.cfg.rate_hz,
        "achieved_hz": float(1000 / intervals.mean()),
        "tick_ms": percentiles(intervals),
        "command_to_feedback_ms": percentiles(rtts),
        "far_move": {"max_lead_rad": max(leads), "bound_rad": left.cfg.safety.max_relative_target,
                     "step_per_tick_rad": float(left.safety.step[0]), "ticks": len(leads)},
        "estop_reported_to_last_target_ms": estop_ms,
        "latched_faults": faults,
        "safety_counts": {name: dict(arm.safety.counts) for name, (_, arm) in zip(("left", "right"), rigs)},
    })


if __name__ == "__main__":
    main()
