"""LoRA adapters (policy.lora) on the micro policy: what learns, what the merged weights are, a run
that resumes exactly and refuses another base, and the 7B's memory estimate."""

from dataclasses import replace

import pytest
import torch

from pushcut.policy import checkpoint, lora
from pushcut.policy.config import LoraConfig
from pushcut.policy.modeling import VLAPolicy

from .conftest import MICRO_POLICY
from .test_grpo_runs import _train_cfg

LORA = replace(MICRO_POLICY, lora=LoraConfig(rank=4))


def _inputs(pc, b=2):
    s = pc.vision.image_size
    return {"pixels": torch.randn(b, len(pc.cameras), 3, s, s), "proprio": torch.randn(b, pc.proprio_dim),
            "input_ids": torch.randint(0, 100, (b, 8)), "text_mask": torch.ones(b, 8, dtype=torch.bool)}


def test_only_the_adapters_and_the_declared_modules_learn_and_merging_changes_nothing():
    torch.manual_seed(0)
    model = lora.add_adapters(VLAPolicy(LORA), LORA.lora)
    model(**_inputs(LORA)).square().mean().backward()
    learned = {n for n, p in model.named_parameters() if p.grad is not None}
    assert learned == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.split(".")[0] in LORA.lora.trainable for n in learned)
    assert not any(n.startswith("vision.") or (n.startswith("llm.") and ".lora_" not in n) for n in learned)
    assert any(".lora_B" in n for n in learned) and "lm_head.weight" in learned  # the action head learns
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert adapters == lora.adapter_params(LORA) > 0  # r x (in + out) per adapted layer, as predicted
    for n, p in model.named_parameters():  # adapters that have learned something
        if ".lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    plain = VLAPolicy(LORA)
    plain.load_state_dict(lora.merged_weights(model))  # the plain policy's names, nothing left over
    x = _inputs(LORA)
    torch.testing.assert_close(plain.eval()(**x), model.eval()(**x), rtol=1e-5, atol=1e-5)


def test_a_lora_run_resumes_exactly_checkpoints_a_plain_policy_and_refuses_another_base(sft_checkpoint, tmp_path):
    from pushcut.policy.export import ExportConfig, export
    from pushcut.training import grpo

    from .conftest import MICRO_ENV

    def cfg(iterations, start=sft_checkpoint):  # the demos in the loss: a gradient whatever the rollouts give
        return _train_cfg(start, policy=LORA, dynamic_sampling=False, iterations=iterations, lr=1e-2, bc_coef=1.0,
                          bc_batch=4)

    grpo.train(cfg(2), tmp_path / "whole", progress=False)
    grpo.train(cfg(1), tmp_path / "split", progress=False)
    grpo.train(cfg(2), tmp_path / "split", progress=False)
    a, *_ = checkpoint.load(tmp_path / "whole" / "checkpoint")  # merged: an ordinary policy checkpoint
    b, *_ = checkpoint.load(tmp_path / "split" / "checkpoint")
    base, *_ = checkpoint.load(sft_checkpoint)
    moved = set()
    for (k, va), vb, v0 in zip(a.state_dict().items(), b.state_dict().values(), base.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)
        if not torch.equal(va, v0):
            moved.add(k)
    assert moved and not any(k.startswith("vision.") for k in moved)  # the frozen tower stayed the base's
    assert any(k.startswith("llm.layers.") for k in moved)  # adapters folded into the backbone
    export(ExportConfig(env=MICRO_ENV, checkpoint=str(tmp_path / "whole" / "checkpoint"),
                        out_dir=str(tmp_path / "bundle"), parity_env_samples=2, parity_random_samples=2))
    # colocated (the 7B's one-GPU placement): the adapted learner itself rolls out, and writes a plain
    # checkpoint
    from pushcut.training.config import RolloutConfig

    grpo.train(replace(cfg(1), rollout=RolloutConfig(placement="colocated")), tmp_path / "colocated", progress=False)
    checkpoint.load(tmp_path / "colocated" / "checkpoint")
    # resuming on a start that is not the base the adapters were trained on
    other = tmp_path / "other"
    grpo.train(_train_cfg(sft_checkpoint, dynamic_sampling=False, iterations=1, lr=1e-2), other, progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="its adapters were trained on a base whose weights hash"):
        grpo.train(replace(cfg(3, start=other / "checkpoint"), bc_coef=0.0), tmp_path / "split", progress=False)


def test_the_7b_with_lora_fits_one_80gb_gpu_and_the_full_learner_does_not():
    from pushcut.configs import compose, from_hydra
    from pushcut.training.config import TrainConfig
    from pushcut.training.learner import check_learner_fits

    gpu = 80 * 2**30
    for rank in (32, 0):
        cfg = from_hydra(TrainConfig, compose("train", ["policy=openvla_oft_7b", f"policy.lora.rank={rank}",
                                                        "init_checkpoint=x"]))
        if rank:
            check_learner_fits(cfg, torch.device("cuda"), 1, total_bytes=gpu)  # ~17 GiB of states
        else:
            with pytest.raises(MemoryError, match=r"needs 12\d\.\d GiB per GPU"):
                check_learner_fits(cfg, torch.device("cuda"), 1, total_bytes=gpu)
    with pytest.raises(ValueError, match="adapters train on one GPU without sharding"):
        from pushcut.training.config import LearnerConfig

        _train_cfg("x", policy=LORA, learner=LearnerConfig(fsdp=True))


def test_lora_sft_on_a_base_resumes_bit_identically_and_keeps_the_tower(sft_checkpoint, tmp_path, monkeypatch):
    """SFT with adapters on the micro start as its base: killed after its step-4 checkpoint and run
    again, it ends where the uninterrupted run does; the checkpoint is the plain policy with the
    adapters folded in, the vision tower the base's."""
    from pushcut.training import sft
    from pushcut.training.config import SFTConfig, WandbConfig

    from .conftest import MICRO_ENV

    cfg = SFTConfig(env=MICRO_ENV, policy=LORA, demos_dir=str(tmp_path / "demos"), demos_per_task=2, steps=8,
                    batch_size=8, lr=1e-2, warmup_steps=1, save_every=4, init_checkpoint=str(sft_checkpoint),
                    wandb=WandbConfig(mode="disabled"))
    straight = sft.train(cfg, tmp_path / "straight", progress=False)
    real = sft.lr_at

    def dies(step, c):
        if step == 6:
            raise RuntimeError("killed")
        return real(step, c)

    monkeypatch.setattr(sft, "lr_at", dies)
    with pytest.raises(RuntimeError, match="killed"):
        sft.train(cfg, tmp_path / "run", progress=False)
    monkeypatch.undo()
    resumed = sft.train(cfg, tmp_path / "run", progress=False)
    a, b, base = (checkpoint.load(p)[0].state_dict() for p in (straight, resumed, sft_checkpoint))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert all(torch.equal(a[k], base[k]) for k in a if k.startswith("vision."))
    assert any(not torch.equal(a[k], base[k]) for k in a if k.startswith("llm.layers."))
    with pytest.raises(ValueError, match="adapters fine-tune a base; give init_checkpoint"):
        replace(cfg, init_checkpoint=None)
