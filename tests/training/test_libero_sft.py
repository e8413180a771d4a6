"""LIBERO end to end on a micro policy: expert demo -> SFT -> export -> engine eval (no torch)."""

import json
from dataclasses import replace

import numpy as np

from pushcut.policy.config import LLMConfig, PolicyConfig, VisionConfig
from pushcut.sim import demos
from pushcut.sim.config import EnvConfig
from pushcut.training.config import EvalConfig, SFTConfig, WandbConfig

LIBERO_OBJECT_0 = EnvConfig(kind="libero", task="libero_object", task_ids=(0,), cameras=("agentview",),
                            image_size=(32, 32))
MICRO_LIBERO = PolicyConfig(
    vision=VisionConfig(image_size=32, patch_size=16, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    llm=LLMConfig(hidden_size=48, num_layers=1, num_heads=4, num_kv_heads=4, intermediate_size=96),
    cameras=("agentview",), action_dim=7, chunk_len=8, proprio_dim=8, normalization="q01_q99",
)


def test_libero_expert_demo_sft_export_and_engine_eval(tmp_path):
    from pushcut.policy.export import ExportConfig, export
    from pushcut.sim.libero import LiberoEnv
    from pushcut.training import eval as evaluation
    from pushcut.training import sft

    cfg = SFTConfig(env=LIBERO_OBJECT_0, policy=MICRO_LIBERO, demos_dir=str(tmp_path / "demos"), demos_per_task=1,
                    steps=40, batch_size=8, lr=1e-3, warmup_steps=4, log_every=10, wandb=WandbConfig(mode="disabled"))
    ckpt = sft.train(cfg, tmp_path / "sft", progress=False)

    folder = tmp_path / "demos" / "libero_object_task0"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["instruction"] == "pick up the alphabet soup and place it in the basket"
    ep = demos.load(folder).episodes[0]
    steps = ep["obs_steps"]
    assert steps[0] == 0 and set(range(0, len(ep["actions"]), 8)) <= set(steps.tolist())
    assert ep["images_agentview"].shape == (len(steps), 32, 32, 3) and ep["actions"].shape[1] == 7
    # LIBERO is deterministic from a seed: replaying the demo's actions succeeds again
    env = LiberoEnv(LIBERO_OBJECT_0)
    env.reset(int(ep["seed"]))
    assert env.step(ep["actions"]).success
    env.close()
    # the checkpoint's action bins span LIBERO's [-1, 1] OSC box, not the one demo's range
    stats = json.loads((ckpt / "norm_stats.json").read_text())
    assert stats["action"]["q01"] == [-1.0] * 7 and stats["action"]["q99"] == [1.0] * 7

    bundle = export(ExportConfig(env=LIBERO_OBJECT_0, checkpoint=str(ckpt), out_dir=str(tmp_path / "bundle"),
                                 parity_env_samples=2, parity_random_samples=2, int8=False, fp16=False))
    ev = EvalConfig(env=replace(LIBERO_OBJECT_0, max_steps=24), bundle=str(bundle),
                    episodes=1, num_envs=1)
    summary = evaluation.evaluate(ev, tmp_path / "eval", progress=False)
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["episodes"] == 1 and written["results"][0]["steps"] == 24
    assert summary["per_task"] == {"libero_object": written["success_rate"]}
    assert np.isfinite(written["success_rate"])


def test_libero_expert_takes_only_in_container_goals():
    import pytest

    from pushcut.sim.libero_expert import UnsupportedGoal, pick_place_goal

    assert pick_place_goal({"goal_state": [["in", "milk_1", "basket_1_contain_region"]]}) == ("milk_1", "basket_1")
    for goal in ([["on", "akita_black_bowl_1", "plate_1"]], [["open", "wooden_cabinet_1_top_region"]],
                 [["in", "a_1", "basket_1_contain_region"], ["in", "b_1", "basket_1_contain_region"]]):
        with pytest.raises(UnsupportedGoal, match="one \\(in <object> <container>\\) goal"):
            pick_place_goal({"goal_state": goal})
