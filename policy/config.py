"""Typed policy configuration (the ``policy/`` Hydra group): an OpenVLA-OFT-style VLA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pushcut.configs import ranges, require

# Fields that fix the weights' shapes: a checkpoint must match the config on all of them.
ARCHITECTURE_FIELDS = ("vision", "llm", "action_dim", "chunk_len", "n_bins", "cameras", "proprio_dim", "use_proprio")


@ranges(image_size=">=1", patch_size=">=1", hidden_size=">=1", num_layers=">=1", num_heads=">=1",
        intermediate_size=">=1")
@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """A SigLIP-style ViT over each camera image."""

    image_size: int = 64
    patch_size: int = 16
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128

    def __post_init__(self) -> None:
        require(self.image_size % self.patch_size == 0, "vision.image_size must be a multiple of patch_size")
        require(self.hidden_size % self.num_heads == 0, "vision.hidden_size must divide by num_heads")


@ranges(hidden_size=">=1", num_layers=">=1", num_heads=">=1", num_kv_heads=">=1", intermediate_size=">=1",
        vocab_size=">=2", max_positions=">=1")
@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """A Llama-style backbone, attending bidirectionally for parallel decoding."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 256
    vocab_size: int = 513  # byte tokenizer (257) + 256 action bins
    max_positions: int = 2048

    def __post_init__(self) -> None:
        require(self.hidden_size % self.num_heads == 0, "llm.hidden_size must divide by num_heads")
        require(self.num_heads % self.num_kv_heads == 0, "llm.num_heads must divide by num_kv_heads")


@ranges(rank=">=0", alpha=">0", dropout="[0,1)")
@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """LoRA adapters (``peft``) on the language backbone's linear layers; ``rank`` 0: off, every
    weight trains. With adapters, the backbone and vision tower stay frozen and only the adapters
    and the ``trainable`` modules learn (policy/lora.py)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    trainable: tuple[str, ...] = ("action_queries", "lm_head", "proprio_proj")  # learn whole beside the adapters


@ranges(action_dim=">=1", chunk_len=">=1", n_bins=">=2", proprio_dim=">=1", max_prompt_len=">=1",
        center_crop="(0,1]")
@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    name: str = "tiny"
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    cameras: tuple[str, ...] = ("head",)
    action_dim: int = 14
    chunk_len: int = 25
    n_bins: int = 256
    proprio_dim: int = 14
    use_proprio: bool = True
    normalization: Literal["q01_q99", "min_max"] = "min_max"
    max_prompt_len: int = 64
    dtype: Literal["float32", "bfloat16"] = "float32"
    center_crop: float | None = None  # share of the image area kept, centred, before the resize (LIBERO: 0.9)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank > 0: train adapters on a frozen backbone

    def __post_init__(self) -> None:
        require(self.llm.vocab_size >= self.n_bins, "llm.vocab_size must hold the n_bins action tokens")
        require(len(self.cameras) > 0, "policy.cameras must name at least one camera")

    @property
    def n_action_tokens(self) -> int:
        return self.chunk_len * self.action_dim


def check_policy_fits_env(policy: PolicyConfig, env, source: str = "policy") -> None:
    """The ``source`` policy's action and proprio dims and cameras against the env's
    (``pushcut.sim.config.EnvConfig``), both named."""
    from pushcut.sim.registry import ACTION_DIM, PROPRIO_DIM

    require(
        policy.action_dim == ACTION_DIM[env.kind],
        f"{source}: action_dim {policy.action_dim} does not match the {env.kind} env's {ACTION_DIM[env.kind]}",
    )
    require(
        not policy.use_proprio or policy.proprio_dim == PROPRIO_DIM[env.kind],
        f"{source}: proprio_dim {policy.proprio_dim} does not match the {env.kind} env's {PROPRIO_DIM[env.kind]}",
    )
    missing = [c for c in policy.cameras if c not in env.cameras]
    require(not missing, f"{source}: camera(s) {missing} are not rendered by env.cameras {list(env.cameras)}")
    size = policy.vision.image_size
    require(env.kind != "libero" or tuple(env.image_size) == (size, size),
            f"{source}: LIBERO frames are resized to the policy's input, {size}x{size}; "
            f"set env.image_size=[{size},{size}] (it is {list(env.image_size)})")
