"""The GRPO learner's plumbing: its device, FSDP2 sharding, full weights, and resumable state.

Replicated learners (the default) keep whole weights and sum gradients across ranks; with
``learner.fsdp`` the weights, gradients and AdamW state are sharded per transformer layer
(FSDP2 ``fully_shard``), and rank 0 gathers the full weights for the rollout workers and the
checkpoint. A checkpoint holds the policy, AdamW's state keyed by parameter name, both RNGs and
the trainer's counters, so a killed run continues where it stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from pushcut.configs import to_dict
from pushcut.policy import checkpoint
from pushcut.policy.inference import TorchPolicy
from pushcut.training.config import TrainConfig


# --- the learner's weights: replicated (gradients summed) or sharded with FSDP2 ------------------
def learner_device(device: str) -> torch.device:
    """``cuda`` means this rank's GPU (``LOCAL_RANK`` under torchrun)."""
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device)


def shard(model: torch.nn.Module, device: str, cpu_offload: bool = False) -> None:
    """FSDP2: each vision and language transformer layer, then the rest, sharded over the ranks.

    Under a bf16 ``policy.dtype`` the shards stay fp32 (master weights, fp32 AdamW state) and are
    gathered in bf16 for compute, gradients reduced in fp32 (``MixedPrecisionPolicy``);
    ``cpu_offload`` keeps shards, gradients and optimizer state in host memory."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized():
        raise RuntimeError("learner.fsdp needs torch.distributed: launch with torchrun (see the README)")
    mesh = init_device_mesh(torch.device(device).type, (dist.get_world_size(),))
    options = {"mesh": mesh}
    if model.compute_dtype != torch.float32:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=model.compute_dtype, reduce_dtype=torch.float32)
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.device(device).type == "cuda")
    for layer in (*model.vision.encoder.layers, *model.llm.layers):
        fully_shard(layer, **options)
    fully_shard(model, **options)


GIB = 1 << 30


def parameter_count(cfg) -> int:
    """Parameters of a policy config, counted on the meta device (nothing allocated)."""
    from pushcut.policy.modeling import VLAPolicy

    with torch.device("meta"):
        return sum(p.numel() for p in VLAPolicy(cfg).parameters())


def trained_count(cfg) -> int:
    """Parameters a LoRA run trains (``policy/lora.py``): the adapters the preset predicts and the
    ``lora.trainable`` modules, counted on the meta device."""
    from pushcut.policy.lora import adapter_params, is_trainable
    from pushcut.policy.modeling import VLAPolicy

    with torch.device("meta"):
        extra = sum(p.numel() for n, p in VLAPolicy(cfg).named_parameters() if is_trainable(n, cfg.lora))
    return adapter_params(cfg) + extra


def learner_state_bytes(n_params: int, dtype: str, world: int, fsdp: bool, cpu_offload: bool,
                        trainable: int | None = None) -> dict[str, float]:
    """Bytes one learner GPU holds for the policy's states, before activations: fp32 master weights,
    fp32 gradients, AdamW's two fp32 moments (sharded over ``world`` ranks under FSDP, in host memory
    with ``cpu_offload``), and under bf16 unsharded, the bf16 copies of every weight that autocast
    keeps through the forward pass (FSDP gathers bf16 copies one layer at a time, as activations do).
    With LoRA (``trainable``: the adapters' and trainable modules' parameters), the frozen weights in
    ``dtype`` and those states for the trained ones only."""
    if trainable is not None:
        t, width = trainable, 2 if dtype != "float32" else 4
        return {f"frozen {dtype} weights": width * (n_params - t), "fp32 weights": 4 * t, "fp32 gradients": 4 * t,
                "AdamW moments": 8 * t, **({"bf16 copies": 2 * t} if dtype != "float32" else {})}
    share = 1 / world if fsdp else 1.0
    on_gpu = 0.0 if cpu_offload else share
    parts = {"fp32 weights": 4 * n_params * on_gpu, "fp32 gradients": 4 * n_params * on_gpu,
             "AdamW moments": 8 * n_params * on_gpu}
    if dtype != "float32" and not fsdp:
        parts["bf16 copies"] = 2 * n_params
    return parts


STATE_SHARE_LIMIT = 0.9  # of a GPU's memory the states may take; the rest is for activations


def check_learner_fits(cfg: TrainConfig, device: torch.device, world: int, total_bytes: int | None = None) -> None:
    """Refuse, before anything is allocated, a learner whose states alone take more than
    ``STATE_SHARE_LIMIT`` of its GPU's memory (``total_bytes``; by default the device's), which would
    run out of memory in its first update: the message gives the estimate and the ways out."""
    if total_bytes is None:
        if device.type != "cuda":
            return
        total_bytes = torch.cuda.get_device_properties(device).total_memory
    n = parameter_count(cfg.policy)
    parts = learner_state_bytes(n, cfg.policy.dtype, world, cfg.learner.fsdp, cfg.learner.cpu_offload,
                                trained_count(cfg.policy) if cfg.policy.lora.rank else None)
    need = sum(parts.values())
    if need > STATE_SHARE_LIMIT * total_bytes:
        detail = ", ".join(f"{k} {v / GIB:.1f}" for k, v in parts.items() if v)
        raise MemoryError(
            f"learner: policy {cfg.policy.name} ({n / 1e9:.2f} B parameters) needs {need / GIB:.1f} GiB per GPU "
            f"for its states before any activation ({detail} GiB; {world} rank(s), fsdp={cfg.learner.fsdp}, "
            f"cpu_offload={cfg.learner.cpu_offload}), and {device} has {total_bytes / GIB:.1f} GiB, too little "
            f"to leave {1 - STATE_SHARE_LIMIT:.0%} for activations. Shard it over "
            "more GPUs (torchrun --nproc_per_node=N ... learner.fsdp=true) or keep the shards, gradients and "
            "AdamW state in host memory (learner.fsdp=true learner.cpu_offload=true).")


def checkpoint_activations(model: torch.nn.Module) -> None:
    """Recompute each vision and language layer's activations in the backward pass instead of keeping
    them from the forward (``learner.activation_checkpointing``): the same gradient for less memory
    and about one more forward pass of compute. Applied before sharding, as FSDP2 expects."""
    for tower in (model.vision, model.llm):
        tower.config.use_cache = False
        enable = getattr(tower, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers before 5.x's rename
            tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights (with LoRA adapters, folded into their layers: the plain policy's).
    Under FSDP a collective: every rank calls it, rank 0 gets them."""
    from pushcut.policy.lora import has_adapters, merged_weights

    if has_adapters(model):
        return merged_weights(model)
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


# --- checkpoint and resume ----------------------------------------------------------------------
def _opt_tensors(model, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW's state keyed ``opt.<parameter name>.<field>`` (full, gathered on rank 0 under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, opt, options=_full_options())
    return {f"opt.{fqn}.{k}": v if torch.is_tensor(v) else torch.tensor(v)
            for fqn, st in sd.get("state", {}).items() for k, v in st.items()}  # empty off rank 0


def _load_opt(model, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    state: dict[str, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            fqn, name = key[len("opt."):].rsplit(".", 1)
            state.setdefault(fqn, {})[name] = v
    names = {n for n, _ in model.named_parameters()}
    if set(state) - names:
        raise checkpoint.CheckpointError(
            f"optimizer state names parameters this model lacks: {sorted(set(state) - names)[:3]}")
    # the fresh optimizer's groups (by parameter name), on every rank
    groups = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))["param_groups"]
    set_optimizer_state_dict(model, opt, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def save_state(run_dir: Path, model, opt, policy: TorchPolicy, cfg: TrainConfig, state: dict, gen: torch.Generator,
               weights: dict[str, torch.Tensor] | None, more: dict[str, torch.Tensor] | None = None):
    """Every rank calls this (gathering is collective under FSDP); rank 0 writes. ``weights`` None
    (colocated rollouts gather none per iteration): gathered here. ``more``: further tensors a
    resumed run needs (the PPO critic's)."""
    if weights is None:
        weights = full_weights(model)
    extra = {**resume_tensors(model, opt, gen), **(more or {})}
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    budget = cfg.time_budget_s
    done = state["iteration"] >= cfg.iterations or (budget is not None and state["wall_s"] >= budget)
    progress = f"iteration {state['iteration']} of {cfg.iterations}" + (
        f", {state['wall_s']:.0f} s of a {budget:g} s budget" if budget is not None else "")
    checkpoint.save(run_dir / "checkpoint", model, policy.norm_stats, policy.tokenizer, run_config=to_dict(cfg),
                    extra={"job": "grpo", "trainer": state}, extra_tensors=extra, weights=weights,
                    complete=done, progress=progress)


def save_best(run_dir: Path, model, policy: TorchPolicy, cfg: TrainConfig, weights: dict[str, torch.Tensor],
              iteration: int, eval_success: float) -> None:
    """The policy alone (no optimizer state) at its best periodic evaluation so far, to
    ``<run>/best``; its meta names the iteration and the greedy success on the evaluation seeds."""
    checkpoint.save(run_dir / "best", model, policy.norm_stats, policy.tokenizer, run_config=to_dict(cfg),
                    extra={"job": "grpo-best", "iteration": iteration, "eval_success": eval_success}, weights=weights,
                    complete=False, progress=f"the best evaluation so far, at iteration {iteration}")


def resume_tensors(model, opt, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """What a resumed run needs beside the weights: AdamW's state (a collective under FSDP: every
    rank calls it) and both RNGs (torch's and the run's generator ``gen``)."""
    return {**_opt_tensors(model, opt), "rng.torch": torch.get_rng_state(), "rng.update": gen.get_state()}


def job_meta(ckpt: Path, job: str, verify: bool = True) -> dict:
    """The meta of a ``job`` checkpoint (``grpo``, ``sft``), refused when another job wrote it."""
    meta = checkpoint.read_meta(ckpt, verify=verify)
    if meta.get("job") != job:
        raise checkpoint.CheckpointError(f"{ckpt} is not a {job} checkpoint (job {meta.get('job')!r}); "
                                         "resume in the run directory that wrote it, or start a fresh one")
    return meta


def load_weights(ckpt: Path, model, job: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Resume, part 1 (before sharding): the weights of a ``job`` checkpoint (``grpo``, ``sft``);
    returns its meta and its extras (:func:`resume_tensors`)."""
    meta = job_meta(ckpt, job, verify=False)  # load() below verifies every file
    loaded, _, _, _, _ = checkpoint.load(ckpt, expected=model.cfg)
    model.load_state_dict(loaded.state_dict())
    return meta, checkpoint.load_extra(ckpt)


def load_adapters(ckpt: Path, model, job: str, base: str, recorded_base) -> tuple[dict, dict[str, torch.Tensor]]:
    """Resume, part 1, of a LoRA run (``policy/lora.py``): ``model`` (its start, the base, with fresh
    adapters) gets the adapters and trainable modules the ``job`` checkpoint kept, refused when the
    base's weights hash, ``base``, is not the one the checkpoint records (``recorded_base(meta)``);
    returns its meta and its extras."""
    from pushcut.policy.lora import load_trainable

    meta = job_meta(ckpt, job)
    if recorded_base(meta) != base:
        raise checkpoint.CheckpointError(f"{ckpt}: its adapters were trained on a base whose weights hash "
                                         f"{recorded_base(meta)}; init_checkpoint hashes {base}: resume from "
                                         "the run's own start")
    extra = checkpoint.load_extra(ckpt)
    load_trainable(model, extra)
    return meta, extra


def load_optimizer_and_rng(model, opt, gen: torch.Generator, extra: dict[str, torch.Tensor]) -> None:
    """Resume, part 2 (after the optimizer exists): AdamW's state and the RNGs."""
    _load_opt(model, opt, extra)
    torch.set_rng_state(extra["rng.torch"])
    gen.set_state(extra["rng.update"])


def init_distributed(cfg: TrainConfig) -> tuple[int, int]:
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend=cfg.learner.backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
