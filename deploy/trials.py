"""Real-world trial logs: append-only JSONL with fsync, resumable numbering, Wilson intervals.

Each finished trial is one JSON line ``{version, task, trial, outcome, success, duration_s,
bundle_sha256, seed, notes, recording, started_at}`` (``bundle_sha256``: the bundle manifest's
signature, which covers every file of the bundle), written with ``flush`` + ``fsync`` before the
next trial starts, so a process killed at any point loses at most the trial in progress.

Row versions: 2 (``version: 2``) is what this pushcut writes; rows without ``version`` are version
1, what every earlier pushcut wrote, and read as they are; a version-1 row without ``outcome``
(``task``, ``trial``, ``success`` alone) reads as a success or a failure. Reading accepts only
valid rows (a JSON object with a ``task`` string, a positive integer ``trial``, a known
``outcome`` and a boolean ``success`` that agrees with it, of a known version) and reports every
other line with its number and reason: a torn line from a killed writer, bytes that are not UTF-8,
a value that is not an object. Reading never creates or modifies a file. ``pushcut-trials summary
LOG`` prints per-task success with Wilson 95% intervals and writes a plot (and uploads to wandb
when asked); ``pushcut-trials lerobot LOG OUT`` exports the recorded trials as a LeRobot dataset
(``deploy/trials_lerobot.py``).
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
TRIAL_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: rows without a version field (every row written before version 2)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def upgrade_row(row):
    """A row of any readable version as the current version reads it: a version-1 row without
    ``outcome`` gets the one its ``success`` says. Anything else comes back as it is."""
    if not isinstance(row, dict) or "version" in row:
        return row
    row = {**row, "version": 1}
    if "outcome" not in row and isinstance(row.get("success"), bool):
        row["outcome"] = "success" if row["success"] else "failure"
    return row


def check_row(row) -> str | None:
    """Why ``row`` is not a valid trial record (None when it is)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    if row.get("version") not in READABLE_VERSIONS:
        return f"row version {row.get('version')!r}; this pushcut reads {list(READABLE_VERSIONS)}"
    if not isinstance(row.get("task"), str) or not row["task"]:
        return "no task name"
    trial = row.get("trial")
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 1:
        return f"trial {trial!r} is not a positive integer"
    if row.get("outcome") not in OUTCOMES:
        return f"outcome {row.get('outcome')!r} is not one of {list(OUTCOMES)}"
    if row.get("success") is not (row["outcome"] == "success"):
        return f"success {row.get('success')!r} does not agree with outcome {row['outcome']!r}"
    return None


class TrialLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.skipped: list[tuple[int, str]] = []  # (line number, reason) of the last read

    def read(self) -> list[dict]:
        """The valid rows, in order; every other line is skipped, logged and kept in ``skipped``."""
        self.skipped = []
        if not self.path.exists():
            return []
        rows = []
        for i, raw in enumerate(self.path.read_bytes().split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                reason = "not UTF-8 text"
            except json.JSONDecodeError:
                reason = "not JSON (a torn write, or garbage)"
            else:
                row = upgrade_row(row)
                reason = check_row(row)
                if reason is None:
                    rows.append(row)
                    continue
            self.skipped.append((i, reason))
            log.warning("%s: skipping line %d: %s", self.path, i, reason)
        return rows

    def next_trial(self, task: str) -> int:
        done = [r["trial"] for r in self.read() if r.get("task") == task]
        return max(done, default=0) + 1

    def append(self, record: dict) -> dict:
        if record.get("outcome") not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {record.get('outcome')!r}")
        record = {"version": TRIAL_VERSION, **record, "success": record["outcome"] == "success"}
        reason = check_row(record)
        if reason:
            raise ValueError(f"not a valid trial record: {reason}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
                     "aborted": sum(r["outcome"] == "aborted" for r in rs),  # counted as failures
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
    for i, t in enumerate(tasks):  # above the interval: readable at any rate, 0 included
        ax.text(i, summary[t]["ci95"][1] + 0.03, f"{summary[t]['successes']}/{summary[t]['trials']}", ha="center")
    ax.set_ylim(0, 1.15)
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
    e = sub.add_parser("lerobot", help="the recorded trials as a LeRobot v3.0 dataset (one episode per trial)")
    e.add_argument("log", help="trials.jsonl")
    e.add_argument("out", help="the dataset's folder")
    e.add_argument("--fps", type=int, default=25, help="frames per second: the policy's action rate")
    args = ap.parse_args(argv)
    if args.cmd == "lerobot":
        from pushcut.deploy.trials_lerobot import export_trials

        print(f"wrote {export_trials(TrialLog(args.log).read(), args.out, args.fps)}")
        return
    log_file = TrialLog(args.log)
    if not log_file.path.is_file():
        raise SystemExit(f"{args.log}: no such trial log")
    rows = log_file.read()
    if log_file.skipped:
        print(f"{args.log}: skipped {len(log_file.skipped)} invalid line(s) (see the warnings above)")
    if not rows:
        raise SystemExit(f"{args.log}: no finished trials")
    summary = summarize(rows)
    for task, v in summary.items():
        lo, hi = v["ci95"]
        aborted = f", {v['aborted']} aborted (counted as failures)" if v["aborted"] else ""
        print(f"{task:20s} {v['successes']:3d}/{v['trials']:<3d} = {v['success_rate']:.1%}  "
              f"(95% CI {lo:.1%} - {hi:.1%}){aborted}")
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
