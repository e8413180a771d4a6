"""Run logging: ``metrics.jsonl`` (always), wandb (offline by default), learning-curve PNGs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pushcut.configs import to_dict

log = logging.getLogger(__name__)


class RunLogger:
    def __init__(self, run_dir: str | Path, config, wandb_cfg, job: str, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = open(self.path, "a" if resume else "w")  # noqa: SIM115 - held open until close()
        self._wandb = None
        if wandb_cfg.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                mode=wandb_cfg.mode,
                dir=str(self.run_dir),
                job_type=job,
                config=to_dict(config),
                resume="allow" if resume else None,
                id=self._run_id(resume),
            )

    def _run_id(self, resume: bool) -> str:
        f = self.run_dir / "wandb_id.txt"
        if resume and f.exists():
            return f.read_text().strip()
        import uuid

        rid = uuid.uuid4().hex[:12]
        f.write_text(rid)
        return rid

    def log(self, metrics: dict, step: int) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl``; a line that is not a JSON object with a step (a write torn by
    a kill) is dropped with a message naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            log.warning("%s: dropping line %d, not a metrics row (a write torn by a kill?)", path, i)
    return rows


def keep_metrics_before(run_dir: Path, step: int) -> list[dict]:
    """On resume: rewrite ``metrics.jsonl`` with the rows logged before ``step`` (the ones after the
    checkpoint are redone) and return them."""
    keep = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["step"] < step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    return keep


# plotted on 0-1
FRACTIONS = {"eval_success", "eval_success_sampled", "success", "reward", "reward_left", "reward_right", "token_acc"}


def plot_curves(metrics_path: str | Path, keys: list[str], out_png: str | Path, title: str = "",
                marks: dict[str, tuple[str, float]] | None = None) -> Path | None:
    """One panel per metric in ``keys`` against step, at most three to a row; skips keys never
    logged. Steps are whole numbers on the axis, and a short run shows its points; success rates
    (``FRACTIONS``) on a 0-1 axis, so a few points of noise do not look like a trend. ``marks``:
    metric -> (label, value) drawn as a dashed level on its panel (e.g. the SFT start's success)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(metrics_path)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 50 else None)
        if marks and k in marks:
            label, value = marks[k]
            ax.axhline(value, color="grey", linestyle="--", label=label)
            ax.legend(fontsize="small")
        if k in FRACTIONS:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
