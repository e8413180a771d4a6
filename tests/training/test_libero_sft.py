"""LIBERO end to end on a micro policy: expert demo -> SFT -> export -> engine eval (no torch),
and GRPO from that SFT."""

import json
from dataclasses import replace

import numpy as np
import pytest

from pushcut.policy.config import LLMConfig, PolicyConfig, VisionConfig
from pushcut.sim import demos
from pushcut.sim.config import EnvConfig
from pushcut.training.config import EvalConfig, SFTConfig, WandbConfig

LIBERO_OBJECT_0 = EnvConfig(kind="libero", task="libero_object", task_ids=(0,), cameras=("agentview",),
                            image_size=(32, 32))
MICRO_LIBERO = PolicyConfig(
    vision=VisionConfig(image_size=32, patch_size=16, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    llm=LLMConfig(hidden_size=48, num_layers=1, num_heads=4, num_kv_heads=4, intermediate_size=96),
    cameras=("agentview",), action_dim=7, chunk_len=8, proprio_dim=8, normalization="q01_q99", center_crop=0.9,
)


@pytest.fixture(scope="module")
def libero_sft(tmp_path_factory):
    """(checkpoint, demos folder root) of the micro policy SFT'd on one scripted libero_object demo."""
    from pushcut.training import sft

    root = tmp_path_factory.mktemp("libero")
    cfg = SFTConfig(env=LIBERO_OBJECT_0, policy=MICRO_LIBERO, demos_dir=str(root / "demos"), demos_per_task=1,
                    steps=40, batch_size=8, lr=1e-3, warmup_steps=4, log_every=10, wandb=WandbConfig(mode="disabled"))
    return sft.train(cfg, root / "sft", progress=False), root


def test_libero_expert_demo_sft_export_and_engine_eval(libero_sft, tmp_path):
    from pushcut.policy.export import ExportConfig, export
    from pushcut.sim.libero import LiberoEnv
    from pushcut.training import eval as evaluation

    ckpt, root = libero_sft

    folder = root / "demos" / "libero_object_task0"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["instruction"] == "pick up the alphabet soup and place it in the basket"
    ep = demos.load(folder).episodes[0]
    steps = ep["obs_steps"]
    assert steps[0] == 0 and set(range(0, len(ep["actions"]), 8)) <= set(steps.tolist())
    assert ep["images_agentview"].shape == (len(steps), 32, 32, 3) and ep["actions"].shape[1] == 7
    # LIBERO is deterministic from a seed: replaying the demo's actions succeeds again
    env = LiberoEnv(LIBERO_OBJECT_0)  # kept for the parity check below (a LIBERO task builds in seconds)
    env.reset(int(ep["seed"]))
    assert env.step(ep["actions"]).success
    # the checkpoint's action bins span the demo's own q01/q99 (the reference's), the gripper left alone
    stats = json.loads((ckpt / "norm_stats.json").read_text())
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(ep["actions"], 0.01, axis=0), rtol=1e-5)
    assert stats["action"]["mask"] == [True] * 6 + [False]

    bundle = export(ExportConfig(env=LIBERO_OBJECT_0, checkpoint=str(ckpt), out_dir=str(tmp_path / "bundle"),
                                 parity_env_samples=2, parity_random_samples=2, int8=False, fp16=False))
    from pushcut.deploy.engine import Engine
    from pushcut.policy.inference import TorchPolicy

    engine, policy = Engine(bundle), TorchPolicy.from_checkpoint(ckpt)
    assert engine.center_crop == policy.cfg.center_crop == 0.9  # the crop travels in the bundle
    obs = [env.reset(int(ep["seed"])).as_dict()]
    env.close()
    np.testing.assert_allclose(engine.logits(obs).reshape(-1), policy.logits(obs).float().numpy().reshape(-1),
                               atol=1e-3)
    ev = EvalConfig(env=replace(LIBERO_OBJECT_0, max_steps=24), bundle=str(bundle),
                    episodes=1, num_envs=1)
    summary = evaluation.evaluate(ev, tmp_path / "eval", progress=False)
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["episodes"] == 1 and written["results"][0]["steps"] == 24
    assert summary["per_task"] == {"libero_object": written["success_rate"]}
    assert "by_side" not in written  # one arm: no sides
    assert np.isfinite(written["success_rate"])


def test_libero_expert_takes_only_in_container_goals():
    import pytest

    from pushcut.sim.libero_expert import UnsupportedGoal, pick_place_goal

    assert pick_place_goal({"goal_state": [["in", "milk_1", "basket_1_contain_region"]]}) == ("milk_1", "basket_1")
    for goal in ([["on", "akita_black_bowl_1", "plate_1"]], [["open", "wooden_cabinet_1_top_region"]],
                 [["in", "a_1", "basket_1_contain_region"], ["in", "b_1", "basket_1_contain_region"]]):
        with pytest.raises(UnsupportedGoal, match="one \\(in <object> <container>\\) goal"):
            pick_place_goal({"goal_state": goal})


def test_libero_grpo_iteration_on_a_micro_config(libero_sft, tmp_path):
    """GRPO on LIBERO from the SFT: an iteration of the trainer (the micro policy never succeeds, so
    its one group carries no gradient) and a checkpoint; then the learner's update on a LIBERO batch
    whose group has one success: a finite loss and a non-zero gradient."""
    import torch

    from pushcut.policy import checkpoint
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo
    from pushcut.training.config import RolloutConfig, TrainConfig
    from pushcut.training.rollout import Job, RolloutWorker
    from pushcut.training.run_log import read_metrics

    ckpt, _ = libero_sft
    cfg = TrainConfig(env=replace(LIBERO_OBJECT_0, max_steps=16), policy=MICRO_LIBERO, init_checkpoint=str(ckpt),
                      n_samples=2, groups_per_iter=1, max_draw_rounds=1, dynamic_sampling=False, iterations=1,
                      eval_every=0, mini_batches=1, lr=1e-3,
                      rollout=RolloutConfig(backend="local", num_workers=1, envs_per_worker=1),
                      wandb=WandbConfig(mode="disabled"))
    final = grpo.train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["step"] == 1 and rows[0]["kept_groups"] == 1
    assert rows[0]["chunks"] == 2 * 2  # two rollouts of two 8-action chunks each (16 steps)
    assert rows[0]["reward"] == 0.0 and rows[0]["grad_norm"] == 0.0
    assert json.loads((final / "meta.json").read_text())["trainer"]["env_steps"] == 2 * 16

    model, stats, tok, _, _ = checkpoint.load(ckpt)
    worker = RolloutWorker(cfg.env, cfg.policy, stats, tok.to_json(), n_envs=1)
    worker.set_weights(model.state_dict())
    trajs = worker.rollout([Job(0, 3, k, 10 + k) for k in range(2)], cfg.temperature)
    trajs[0].success = True
    adv = {(0, k): float(a) for k, a in enumerate(grpo.grpo_advantages(grpo.group_rewards(trajs)[0]))}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    metrics = grpo.update(model, None, opt, TorchPolicy(model, stats, tok), grpo.flatten(trajs, adv), len(trajs), cfg,
                          torch.Generator().manual_seed(0))
    assert np.isfinite(metrics["pg_loss"]) and metrics["grad_norm"] > 0


def test_libero_expert_demos_as_a_lerobot_dataset(tmp_path):
    """format=lerobot on LIBERO: every step a frame at the env's action rate, the panda's state and delta actions
    named, the agentview video; the dataset's actions replayed from its seed succeed again, and it
    maps back onto pushcut's demos for SFT."""
    from pushcut.lerobot import read_dataset
    from pushcut.sim.libero import LiberoEnv

    env_cfg = replace(LIBERO_OBJECT_0, image_size=(64, 64))
    root = demos.record(demos.DemosConfig(env=env_cfg, num_episodes=1, chunk_len=8, obs_offsets=(),
                                          out_dir=str(tmp_path), format="lerobot"), progress=False)
    assert root.name == "libero_object_task0"
    info, (ep,), tasks = read_dataset(root)
    assert info["fps"] == env_cfg.action_hz and info["robot_type"] == "libero_panda"
    assert info["features"]["action"]["names"] == ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]
    n = len(ep["action"])
    assert ep["observation.state"].shape == (n, 8) and ep["observation.images.agentview"].shape == (n, 64, 64, 3)
    assert tasks == ["pick up the alphabet soup and place it in the basket"]
    env = LiberoEnv(env_cfg)
    env.reset(0)
    assert env.step(ep["action"]).success
    env.close()
    (back,) = demos.from_lerobot(root, env_cfg, {"agentview": "observation.images.agentview"})
    assert len(back.episodes[0]["obs_steps"]) == n and back.meta["instruction"] == tasks[0]
