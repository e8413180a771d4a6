"""SFT from a pretrained base (``init_checkpoint``): it starts from the base's weights, and a base
of another architecture, action bounds or prompt tokenizer is refused."""

import json
from dataclasses import replace

import pytest
import torch

from pushcut.policy import checkpoint
from pushcut.policy.modeling import VLAPolicy
from pushcut.policy.preprocess import ByteTokenizer
from pushcut.training import sft
from pushcut.training.config import SFTConfig, WandbConfig

from .conftest import MICRO_ENV, MICRO_POLICY


def _finetune_cfg(base, tmp_path, **kw) -> SFTConfig:
    demos_dir = json.loads((base / "config.json").read_text())["run"]["demos_dir"]  # the base's own demos
    return SFTConfig(**{"env": MICRO_ENV, "policy": MICRO_POLICY, "demos_dir": demos_dir, "demos_per_task": 1,
                        "steps": 1, "batch_size": 4, "lr": 1e-9, "warmup_steps": 1, "log_every": 1,
                        "init_checkpoint": str(base), "wandb": WandbConfig(mode="disabled"), **kw})


def test_finetuning_starts_from_the_base_weights(sft_checkpoint, tmp_path):
    base, *_ = checkpoint.load(sft_checkpoint)
    tuned, *_ = checkpoint.load(sft.train(_finetune_cfg(sft_checkpoint, tmp_path), tmp_path / "run", progress=False))
    fresh = VLAPolicy(MICRO_POLICY).state_dict()
    start, after = base.state_dict(), tuned.state_dict()
    assert all(torch.allclose(after[k], start[k], atol=1e-6) for k in start)  # one step at lr 1e-9
    assert not all(torch.allclose(fresh[k], start[k], atol=1e-3) for k in start)  # a fresh init would show


def test_a_base_with_other_action_bounds_is_refused(sft_checkpoint, tmp_path):
    cfg = _finetune_cfg(sft_checkpoint, tmp_path, norm_bounds="demos")  # the base spans the robot's limits
    with pytest.raises(checkpoint.CheckpointError, match="action bounds differ"):
        sft.train(cfg, tmp_path / "run", progress=False)


def test_a_base_of_another_architecture_is_refused(sft_checkpoint, tmp_path):
    cfg = _finetune_cfg(sft_checkpoint, tmp_path, policy=replace(MICRO_POLICY, chunk_len=5))
    with pytest.raises(checkpoint.CheckpointError, match="chunk_len"):
        sft.train(cfg, tmp_path / "run", progress=False)


def test_a_base_with_another_prompt_tokenizer_is_refused(sft_checkpoint, tmp_path):
    model, stats, _, _, run = checkpoint.load(sft_checkpoint)  # a consistent base whose prompt ids are shifted by one
    base = checkpoint.save(tmp_path / "base", model, stats, ByteTokenizer(offset=2), run_config=run)
    with pytest.raises(checkpoint.CheckpointError, match="prompt tokenizer"):
        sft.train(_finetune_cfg(base, tmp_path), tmp_path / "run", progress=False)
