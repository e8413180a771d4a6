"""bench-transfer end to end at the smallest size: two SFTs on their own demos, the suite on each."""

import json

import pytest

import bench.common
from bench import transfer


def test_bench_transfer_trains_both_variants_and_measures_each_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(bench.common, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(transfer, "CACHE", tmp_path / "cache")
    transfer.main(["--tasks", "click_bell", "--demos", "1", "--steps", "2", "--episodes", "1"])
    r = json.loads((tmp_path / "results" / "transfer.json").read_text())
    (task,) = r["tasks"]
    assert task["task"] == "click_bell" and set(task["policies"]) == {"nominal", "randomized"}
    for name, p in task["policies"].items():
        assert p["randomized"] is (name == "randomized")
        assert "nominal" in p["settings"] and "camera_tilt_5deg" in p["perturbations"]
        assert set(p["perturbations"]) == set(p["settings"]) - {"nominal"}
        assert p["nominal"] == p["settings"]["nominal"]["success_rate"] in (0.0, 1.0)
        assert all(s["episodes"] == 1 for s in p["settings"].values())
    # the randomised policy learned from demos recorded randomised, in their own folder
    meta = json.loads((tmp_path / "cache" / "demos_randomized" / "click_bell" / "meta.json").read_text())
    assert meta["env"]["randomization"]["enabled"] is True
    nominal = json.loads((tmp_path / "cache" / "demos" / "click_bell" / "meta.json").read_text())
    assert nominal["env"]["randomization"]["enabled"] is False
    assert set(task["worst_kept_of_nominal"]) == {"nominal", "randomized"}
    # a cached start trained on other randomisation ranges is refused, not reused
    name = "sft_click_bell_1demos_2steps_randomized"
    assert (tmp_path / "cache" / name / "checkpoint" / "meta.json").exists()
    overrides = ["env=click_bell", "policy=tiny", "demos_per_task=1", "steps=2", *bench.common.RANDOMIZED]
    assert bench.common.sft_run(name, overrides, tmp_path / "cache" / "demos_randomized").name == "checkpoint"
    with pytest.raises(ValueError, match=r"trained on another env \(randomization:"):
        bench.common.sft_run(name, [*overrides, "env.randomization.color=0.3"], tmp_path / "cache" / "demos_randomized")


def test_a_start_on_the_wrist_cameras_records_trains_and_is_measured_with_them(tmp_path, monkeypatch):
    from pushcut.policy.inference import TorchPolicy

    monkeypatch.setattr(bench.common, "CACHE", tmp_path / "cache")
    views = ("head", "left_wrist", "right_wrist")
    ckpt = bench.common.sft_checkpoint(1, 2, cameras=views)
    assert ckpt.parent.name == "sft_click_bell_1demos_2steps_head+left_wrist+right_wrist"
    assert tuple(json.loads((ckpt / "config.json").read_text())["policy"]["cameras"]) == views
    demos = tmp_path / "cache" / "demos_head+left_wrist+right_wrist" / "click_bell"
    meta = json.loads((demos / "meta.json").read_text())
    assert tuple(meta["env"]["cameras"]) == views
    policy = TorchPolicy.from_checkpoint(ckpt)
    (episode,) = bench.common.held_out_episodes(policy, "click_bell", 1, num_envs=1, cameras=views)
    assert episode["seed"] == 100_000
    with pytest.raises(KeyError, match="left_wrist"):  # the task config renders the head camera only
        bench.common.held_out_episodes(policy, "click_bell", 1, num_envs=1)
