"""LeRobot v3.0 datasets: the twin's expert demos written as one, read back, refused when they do
not fit, and SFT on one equal to SFT on the same frames as pushcut demos."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from pushcut.lerobot import LeRobotFormatError, read_dataset
from pushcut.sim import demos
from pushcut.sim.config import EnvConfig
from pushcut.spec import dual_arm_names

ENV = EnvConfig(task="click_bell", image_size=(64, 64), max_steps=60)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot")
    cfg = demos.DemosConfig(env=ENV, num_episodes=2, chunk_len=10, obs_offsets=(), out_dir=str(out), format="lerobot")
    return demos.record(cfg, progress=False)


def test_the_experts_demos_as_a_lerobot_dataset(dataset):
    info, episodes, tasks = read_dataset(dataset)
    assert info["codebase_version"] == "v3.0" and info["fps"] == ENV.action_hz and info["robot_type"] == "piper_dual"
    feats = info["features"]
    assert feats["observation.state"]["names"] == dual_arm_names() == feats["action"]["names"]
    assert feats["observation.images.head"]["shape"] == [64, 64, 3]
    assert feats["observation.images.head"]["info"]["video.codec"] == "av1"
    assert info["total_episodes"] == 2 and info["total_frames"] == sum(len(e["action"]) for e in episodes)
    assert tasks == ["click the bell", "click the bell"]
    stats = json.loads((dataset / "meta" / "stats.json").read_text())
    assert np.asarray(stats["observation.images.head"]["mean"]).shape == (3, 1, 1)
    # the frames are the expert's: its actions from the seed, the state before each, every frame a video frame
    from pushcut.sim.twin.env import TwinEnv

    env = TwinEnv(ENV)
    for seed, ep in zip((0, 1), episodes):
        n = len(ep["action"])
        assert ep["observation.state"].shape == (n, 14) and ep["observation.images.head"].shape == (n, 64, 64, 3)
        first = env.reset(seed)
        np.testing.assert_allclose(ep["observation.state"][0], first.proprio)
        # AV1 in yuv420p is lossy: the decoded frame is near the rendered one, not equal
        assert np.abs(ep["observation.images.head"][0].astype(int) - first.images["head"]).mean() < 8
        step = None
        for start in range(0, n, 10):
            step = env.step(ep["action"][start : start + 10])
        assert step.success  # replaying the dataset's actions succeeds, as the expert did
    env.close()


def test_datasets_that_do_not_fit_are_refused_with_the_reason(dataset, tmp_path):
    cams = {"head": "observation.images.head"}
    with pytest.raises(LeRobotFormatError, match="recorded at 25 fps; the policy acts at env.action_hz=20"):
        demos.from_lerobot(dataset, replace(ENV, action_hz=20, physics_hz=500), cams)
    with pytest.raises(LeRobotFormatError, match=r"'action' is \[14\]; the libero env's is \[7\]"):
        demos.from_lerobot(dataset, EnvConfig(kind="libero", task="libero_object", cameras=("agentview",),
                                              action_hz=25), {"agentview": "observation.images.head"},
                           state_key="action")
    with pytest.raises(LeRobotFormatError, match="has no video 'observation.images.wrist' for camera 'head'"):
        demos.from_lerobot(dataset, ENV, {"head": "observation.images.wrist"})
    with pytest.raises(LeRobotFormatError, match="has no feature 'observation.joints'"):
        demos.from_lerobot(dataset, ENV, cams, state_key="observation.joints")
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "data" / "chunk-000" / "file-000.parquet").unlink()
    with pytest.raises(LeRobotFormatError, match="data/chunk-000/file-000.parquet is missing"):
        read_dataset(broken)
    info = json.loads((broken / "meta" / "info.json").read_text())
    (broken / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(LeRobotFormatError, match="codebase_version 'v2.1'; this reads v3.0"):
        read_dataset(broken)
    with pytest.raises(LeRobotFormatError, match="not a LeRobot dataset: no meta/info.json"):
        read_dataset(tmp_path)


def test_sft_on_a_lerobot_dataset_equals_sft_on_the_same_frames_as_pushcut_demos(dataset, tmp_path):
    """The same episodes once as the LeRobot dataset and once written in pushcut's demo format (every
    frame an observation): the same batches, so the same losses step for step."""
    from pushcut.artefacts import write_json_atomic
    from pushcut.configs import to_dict
    from pushcut.training import sft
    from pushcut.training.config import LeRobotSourceConfig, SFTConfig, WandbConfig
    from pushcut.training.run_log import read_metrics
    from tests.training.conftest import MICRO_POLICY

    (demo_set,) = demos.from_lerobot(dataset, ENV, {"head": "observation.images.head"})
    folder = tmp_path / "demos" / "click_bell"
    folder.mkdir(parents=True)
    entries = []
    for k, ep in enumerate(demo_set.episodes):
        np.savez(folder / f"episode_{k:05d}.npz", **ep, seed=np.int64(k))
        entries.append({"file": f"episode_{k:05d}.npz", "seed": k, "steps": len(ep["actions"])})
    acts = np.concatenate([e["actions"] for e in demo_set.episodes])
    props = np.concatenate([e["obs_proprio"] for e in demo_set.episodes])
    write_json_atomic(folder / "meta.json", {
        "format": demos.DEMO_FORMAT, "version": demos.DEMO_VERSION, "task": "click_bell",
        "instruction": demo_set.meta["instruction"], "env": to_dict(ENV), "chunk_len": 10, "cameras": ["head"],
        "image_size": [64, 64], "episodes": entries, "failed_seeds": [], "action_stats": demos.array_stats(acts),
        "proprio_stats": demos.array_stats(props)})
    policy = replace(MICRO_POLICY, vision=replace(MICRO_POLICY.vision, image_size=64))
    base = {"env": ENV, "policy": policy, "demos_per_task": 2, "steps": 4, "batch_size": 8, "log_every": 1,
            "wandb": WandbConfig(mode="disabled")}
    sft.train(SFTConfig(**base, demos_dir=str(tmp_path / "demos")), tmp_path / "npz", progress=False)
    sft.train(SFTConfig(**base, lerobot=LeRobotSourceConfig(root=str(dataset))), tmp_path / "lr", progress=False)
    losses = [[r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r]
              for run in ("npz", "lr")]
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_a_lerobot_dataset_mixes_with_pushcuts_demos_at_its_share(dataset, tmp_path):
    """lerobot.share=0.25: a quarter of every batch from the dataset (e.g. real), the rest from
    demos_dir's demos (e.g. sim), whatever their sizes; the draws follow the weights."""
    import torch

    from pushcut.training import sft
    from pushcut.training.config import LeRobotSourceConfig, SFTConfig, WandbConfig
    from tests.training.conftest import MICRO_POLICY

    real = demos.from_lerobot(dataset, ENV, {"head": "observation.images.head"})
    sim = [demos.DemoSet(meta={"task": "click_bell"}, episodes=[{"obs_steps": np.arange(90)}])]
    w = sft.sample_weights(sim + real, 0.25)
    n_real = sum(len(e["obs_steps"]) for s in real for e in s.episodes)
    assert w.shape == (90 + n_real,) and float(w.sum()) == pytest.approx(1.0)
    assert float(w[90:].sum()) == pytest.approx(0.25)
    idx = sft.draw_batch(len(w), 4000, w, torch.Generator().manual_seed(0))
    assert abs(float((idx >= 90).float().mean()) - 0.25) < 0.03
    assert sft.sample_weights(real, None) is None
    with pytest.raises(ValueError, match="one of them is empty"):
        sft.sample_weights(real, 0.5)
    policy = replace(MICRO_POLICY, vision=replace(MICRO_POLICY.vision, image_size=64))
    cfg = SFTConfig(env=ENV, policy=policy, demos_dir=str(tmp_path / "demos"), demos_per_task=1, steps=2,
                    batch_size=4, lerobot=LeRobotSourceConfig(root=str(dataset), share=0.5),
                    wandb=WandbConfig(mode="disabled"))
    assert {s.meta["task"] for s in sft.demo_sets(cfg)} == {"click_bell", "click the bell"}  # both sources
    sft.train(cfg, tmp_path / "run", progress=False)
