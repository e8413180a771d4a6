"""LoRA adapters on the policy (``policy.lora.rank`` > 0), through ``peft``.

``add_adapters`` puts a rank-r adapter beside every linear layer of the language backbone named in
``lora.targets`` (Llama's q/k/v/o and MLP projections) and freezes every other weight but the
``lora.trainable`` modules (the action queries, the action head, the proprio projector): what the
optimiser, its state and the gradients hold shrinks to those, while the frozen weights stay in
``policy.dtype``. ``merged_weights`` folds the adapters into their layers (W + alpha / r * B A)
under the plain model's names, so that a run's checkpoint is an ordinary policy checkpoint that
eval, export, serving and rollout workers load as they are; ``trainable_tensors`` are what a run
keeps beside it to resume, with the hash of the base the adapters sit on (``base_hash``).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from pushcut.policy.config import LoraConfig, PolicyConfig

ADAPTER = "default"  # peft's adapter name


def target_pattern(lora: LoraConfig) -> str:
    """The modules adapted: the language backbone's linear layers named in ``lora.targets``."""
    return rf"llm\..*\.({'|'.join(map(re.escape, lora.targets))})"


def add_adapters(model: nn.Module, lora: LoraConfig, seed: int = 0, frozen_dtype: str = "float32") -> nn.Module:
    """``model`` with adapters injected (in place; B starts at 0, so the output is unchanged) and
    every parameter frozen but the adapters and the ``trainable`` modules, the frozen ones kept in
    ``frozen_dtype`` (``policy.dtype``: bf16 halves the base's memory; the trained ones stay fp32).
    ``seed`` draws A."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=target_pattern(lora))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(name, lora))
        if not p.requires_grad and frozen_dtype != "float32":
            p.data = p.data.to(getattr(torch, frozen_dtype))
    return model


def optimised_parameters(model: nn.Module):
    """What the optimiser holds: with adapters, the parameters that learn; else every one."""
    return [p for p in model.parameters() if p.requires_grad] if has_adapters(model) else model.parameters()


def is_trainable(name: str, lora: LoraConfig) -> bool:
    return ".lora_" in name or any(name == t or name.startswith(t + ".") for t in lora.trainable)


def has_adapters(model: nn.Module) -> bool:
    return any(".lora_" in n for n, _ in model.named_parameters())


def merged_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every adapter folded into its layer, in fp32 (as checkpoints
    store weights, whatever dtype the frozen base was kept in)."""
    from peft.tuners.lora import LoraLayer

    deltas = {name: module.get_delta_weight(ADAPTER) for name, module in model.named_modules()
              if isinstance(module, LoraLayer)}
    out = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        layer, _, leaf = key.rpartition(".base_layer.")
        if layer and leaf == "weight":
            value = value + deltas[layer].to(value.dtype)
        out[f"{layer}.{leaf}" if layer else key] = value.detach().float() if value.is_floating_point() else value
    return out


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run keeps to resume: the adapters and the trainable modules, by name."""
    return {f"lora.{n}": p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("lora."):
                params[key[len("lora."):]].copy_(value)


def adapter_params(pcfg: PolicyConfig) -> int:
    """Adapter parameters the preset predicts: r x (in + out) per adapted layer (Llama: q, k, v, o
    and the three MLP projections of every layer)."""
    llm, r = pcfg.llm, pcfg.lora.rank
    d, ff = llm.hidden_size, llm.intermediate_size
    kv = d // llm.num_heads * llm.num_kv_heads
    shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d),
              "gate_proj": (d, ff), "up_proj": (d, ff), "down_proj": (ff, d)}
    return llm.num_layers * sum(r * (i + o) for t, (i, o) in shapes.items() if t in pcfg.lora.targets)


def base_hash(meta: dict) -> str:
    """The base a run's adapters sit on: the sha256 of its init checkpoint's weights."""
    return meta["files"]["model.safetensors"]
