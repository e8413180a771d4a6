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


def test_success_rates_plot_on_a_zero_to_one_axis(tmp_path, monkeypatch):
    """A 20% -> 24% curve is drawn against the whole 0-1 range, not stretched to fill its panel."""
    import matplotlib.pyplot as plt

    rows = [{"step": s, "eval_success": 0.2 + 0.02 * s, "approx_kl": 0.001 * s} for s in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    limits = {}
    real_close = plt.close

    def keep(fig):
        limits.update({ax.get_title(): ax.get_ylim() for ax in fig.axes if ax.get_visible()})
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    plot_curves(tmp_path / "metrics.jsonl", ["eval_success", "approx_kl"], tmp_path / "c.png", "grpo")
    assert limits["eval_success"] == (-0.02, 1.02)
    assert limits["approx_kl"][1] < 0.01  # other metrics keep their own scale
