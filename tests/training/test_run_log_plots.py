"""Plots of short runs stay readable: a grid of panels, whole-number steps."""

import json

import matplotlib.image

from pushcut.training.run_log import plot_curves


def test_a_short_run_plots_as_a_grid_with_whole_step_ticks(tmp_path):
    keys = ["eval_success", "reward", "kept_groups", "clipfrac", "approx_kl", "entropy"]
    rows = [{"step": s, **{k: 0.1 * s for k in keys}} for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_curves(tmp_path / "metrics.jsonl", keys, tmp_path / "curves.png", "grpo")
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width <= 2 * height, (width, height)  # 3 x 2 panels, not a 6-panel strip
