"""Real-world trial logs: append-only JSONL with fsync, resumable numbering, Wilson intervals.

Each finished trial is one JSON line ``{task, trial, outcome, success, duration_s, bundle_sha256,
seed, notes, recording, started_at}``, written with ``flush`` + ``fsync`` before the next trial
starts, so a process killed at any point loses at most the trial in progress. A torn last line
(killed mid-write) is skipped on reading, with a warning. ``pushcut-trials summary LOG`` prints
per-task success with Wilson 95% intervals and writes a plot (and uploads to wandb when asked).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)
OUTCOMES = ("success", "failure", "timeout", "aborted")


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class TrialLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a torn line %d (a write was interrupted)", self.path, i + 1)
        return rows

    def next_trial(self, task: str) -> int:
        done = [r["trial"] for r in self.read() if r.get("task") == task]
        return max(done, default=0) + 1

    def append(self, record: dict) -> dict:
        if record.get("outcome") not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {record.get('outcome')!r}")
        record = {**record, "success": record["outcome"] == "success"}
        data = (json.dumps(record) + "\n").encode()
        # a torn tail from a killed writer must not glue onto this record
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record


def summarize(rows: list[dict]) -> dict:
    out = {}
    for task in sorted({r["task"] for r in rows}):
        rs = [r for r in rows if r["task"] == task]
        k = sum(r["success"] for r in rs)
        lo, hi = wilson_interval(k, len(rs))
        out[task] = {"trials": len(rs), "successes": k, "success_rate": k / len(rs), "ci95": [lo, hi],
                     "mean_duration_s": sum(r.get("duration_s", 0.0) for r in rs) / len(rs)}
    return out


def plot(summary: dict, out_png: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    rates = [summary[t]["success_rate"] for t in tasks]
    err = [[r - summary[t]["ci95"][0] for t, r in zip(tasks, rates)],
           [summary[t]["ci95"][1] - r for t, r in zip(tasks, rates)]]
    fig, ax = plt.subplots(figsize=(1.8 * len(tasks) + 2, 3))
    ax.bar(tasks, rates, yerr=err, capsize=6, color="#4a7ab5")
    for i, t in enumerate(tasks):
        ax.text(i, 0.02, f"{summary[t]['successes']}/{summary[t]['trials']}", ha="center", color="white")
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (Wilson 95% CI)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pushcut-trials", description="Summaries of real-world trial logs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("summary", help="per-task success with Wilson 95%% intervals")
    s.add_argument("log", help="trials.jsonl")
    s.add_argument("--plot", default=None, help="PNG path (default: beside the log)")
    s.add_argument("--wandb", choices=("offline", "online"), default=None, help="also log to wandb")
    args = ap.parse_args(argv)
    rows = TrialLog(args.log).read()
    if not rows:
        raise SystemExit(f"{args.log}: no finished trials")
    summary = summarize(rows)
    for task, v in summary.items():
        lo, hi = v["ci95"]
        print(f"{task:20s} {v['successes']:3d}/{v['trials']:<3d} = {v['success_rate']:.1%}  "
              f"(95% CI {lo:.1%} - {hi:.1%})")
    png = plot(summary, args.plot or Path(args.log).with_suffix(".png"))
    print(f"plot: {png}")
    if args.wandb:
        import wandb

        run = wandb.init(project="pushcut", job_type="trials", mode=args.wandb, dir=str(Path(args.log).parent))
        run.log({f"{t}/success_rate": v["success_rate"] for t, v in summary.items()})
        run.log({"trials_plot": wandb.Image(str(png)), "trials": wandb.Table(
            columns=list(rows[0].keys()), data=[[r.get(k) for k in rows[0]] for r in rows])})
        run.finish()


if __name__ == "__main__":
    main()
