"""Load a local OpenVLA-OFT checkpoint directory (HF / Prismatic layout) into a VLAPolicy.

Read from the directory (nothing is downloaded):
  config.json                 ``text_config`` (Llama sizes), ``n_action_bins``, ``image_sizes``,
                              ``vision_backbone_id``
  dataset_statistics.json     ``{dataset: {"action": {q01, q99, mask, ...}, "proprio": {...}}}``
  model.safetensors           or ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``
  proprio_projector--*.pt     OFT's proprio MLP (``fc1``, ``fc2``), read with ``weights_only=True``

Weight names: ``language_model.model.*`` -> the Llama backbone, ``language_model.lm_head`` -> the
LM head (action tokens are its last ``n_action_bins`` rows), ``projector.fc1/fc2`` -> the
projector, ``vision_backbone.featurizer.*`` (timm ViT: fused ``qkv``) -> the SigLIP tower. The
fused SigLIP+DINOv2 backbone (``fused_featurizer``, a 3-layer projector) is refused with a clear
error rather than loaded half-way. OFT's action chunk length and dimension are constants of its
code, not of the checkpoint: pass them (LIBERO: 8 x 7).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from pushcut.policy.config import LLMConfig, PolicyConfig, VisionConfig
from pushcut.policy.modeling import VLAPolicy
from pushcut.policy.preprocess import ByteTokenizer, HFTokenizer

MLP_INDEX = {"fc1": 0, "fc2": 2}  # OFT's fc1/fc2 -> our nn.Sequential(Linear, GELU, Linear)
VISION_HEADS = {"siglip-vit-so400m": 16, "siglip-vit-b16": 12, "siglip-vit-so400m-384px": 16}


class OpenVLALoadError(ValueError):
    pass


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(path / shard))
        return state
    single = path / "model.safetensors"
    if not single.exists():
        raise OpenVLALoadError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return load_file(single)


def _norm_stats(path: Path, dataset: str | None) -> dict:
    f = path / "dataset_statistics.json"
    if not f.exists():
        raise OpenVLALoadError(f"{path}: no dataset_statistics.json (the action statistics must travel with the model)")
    stats = json.loads(f.read_text())
    if dataset is None:
        if len(stats) != 1:
            raise OpenVLALoadError(f"{path}: statistics for several datasets {sorted(stats)}; pass dataset=")
        dataset = next(iter(stats))
    if dataset not in stats:
        raise OpenVLALoadError(f"{path}: no statistics for dataset {dataset!r}; it has {sorted(stats)}")
    return stats[dataset]


def _map_vision(src: dict[str, torch.Tensor], d: int) -> dict[str, torch.Tensor]:
    out = {}
    pre, dst = "vision_backbone.featurizer.", "vision."
    for k, v in src.items():
        if not k.startswith(pre):
            continue
        name = k[len(pre):]
        if name.startswith("patch_embed.proj."):
            out[dst + "embeddings.patch_embedding." + name.split(".")[-1]] = v
        elif name == "pos_embed":
            out[dst + "embeddings.position_embedding.weight"] = v.reshape(-1, v.shape[-1])
        elif name.startswith("norm."):
            out[dst + "post_layernorm." + name.split(".")[-1]] = v
        elif name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            layer = f"{dst}encoder.layers.{i}."
            kind = rest.split(".")[-1]
            if rest.startswith("attn.qkv."):
                for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[f"{layer}self_attn.{proj}.{kind}"] = v[j * d : (j + 1) * d]
            elif rest.startswith("attn.proj."):
                out[f"{layer}self_attn.out_proj.{kind}"] = v
            elif rest.startswith(("norm1.", "norm2.")):
                out[f"{layer}layer_norm{rest[4]}.{kind}"] = v
            elif rest.startswith(("mlp.fc1.", "mlp.fc2.")):
                out[f"{layer}mlp.{rest.split('.')[1]}.{kind}"] = v
        # attn_pool.* (the MAP head) is not used by OpenVLA
    return out


def policy_config(config: dict, weights: dict[str, torch.Tensor], action_dim: int, chunk_len: int,
                  cameras: tuple[str, ...], use_proprio: bool, proprio_dim: int) -> PolicyConfig:
    text = config.get("text_config")
    if not text:
        raise OpenVLALoadError("config.json has no text_config (is this an OpenVLA checkpoint?)")
    patch = weights["vision_backbone.featurizer.patch_embed.proj.weight"]  # (D, 3, p, p)
    d_vis = patch.shape[0]
    n_layers = 1 + max(int(k.split(".")[3]) for k in weights if k.startswith("vision_backbone.featurizer.blocks."))
    backbone = config.get("vision_backbone_id", "")
    heads = VISION_HEADS.get(backbone.replace("-224px", ""), config.get("vision_num_heads", max(1, d_vis // 64)))
    image = (config.get("image_sizes") or [224])[0]
    return PolicyConfig(
        name=f"openvla_oft:{backbone or 'vit'}",
        vision=VisionConfig(image_size=image, patch_size=patch.shape[-1], hidden_size=d_vis, num_layers=n_layers,
                            num_heads=heads,
                            intermediate_size=weights["vision_backbone.featurizer.blocks.0.mlp.fc1.weight"].shape[0]),
        llm=LLMConfig(hidden_size=text["hidden_size"], num_layers=text["num_hidden_layers"],
                      num_heads=text["num_attention_heads"],
                      num_kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
                      intermediate_size=text["intermediate_size"],
                      vocab_size=weights["language_model.lm_head.weight"].shape[0],
                      max_positions=text.get("max_position_embeddings", 2048)),
        cameras=cameras, action_dim=action_dim, chunk_len=chunk_len, n_bins=config.get("n_action_bins", 256),
        proprio_dim=proprio_dim, use_proprio=use_proprio, normalization="q01_q99", center_crop=0.9,
    )


def load_openvla_oft(path: str | Path, action_dim: int = 7, chunk_len: int = 8,
                     cameras: tuple[str, ...] = ("agentview",), dataset: str | None = None, proprio_dim: int = 8):
    """(model, norm_stats, tokenizer, report) from an OpenVLA-OFT checkpoint directory."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise OpenVLALoadError(f"{path}: no config.json")
    config = json.loads(cfg_file.read_text())
    weights = _read_weights(path)
    if any(k.startswith("vision_backbone.fused_featurizer.") for k in weights) or "projector.fc3.weight" in weights:
        raise OpenVLALoadError(f"{path}: the fused SigLIP+DINOv2 backbone is not supported; "
                               "use a SigLIP-only checkpoint")
    if "language_model.lm_head.weight" not in weights:
        raise OpenVLALoadError(f"{path}: no language_model.lm_head.weight (not an OpenVLA checkpoint?)")
    proprio_files = sorted(path.glob("proprio_projector*.pt"))
    pcfg = policy_config(config, weights, action_dim, chunk_len, cameras, bool(proprio_files), proprio_dim)
    model = VLAPolicy(pcfg)
    mapped = _map_vision(weights, pcfg.vision.hidden_size)
    for k, v in weights.items():
        if k.startswith("language_model.model."):
            mapped["llm." + k[len("language_model.model."):]] = v
        elif k == "language_model.lm_head.weight":
            mapped["lm_head.weight"] = v
        elif k.startswith("projector.fc"):
            mapped[f"projector.{MLP_INDEX[k.split('.')[1]]}.{k.split('.')[-1]}"] = v
    if proprio_files:
        proprio = torch.load(proprio_files[-1], map_location="cpu", weights_only=True)
        proprio = {k.removeprefix("module."): v for k, v in proprio.items()}
        for k, v in proprio.items():
            layer, kind = k.split(".")[-2:]
            mapped[f"proprio_proj.{MLP_INDEX[layer]}.{kind}"] = v
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
           for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    unknown = [k for k in mapped if k not in own]
    if bad or unknown:
        raise OpenVLALoadError(f"{path}: weights do not fit: {(bad + unknown)[:5]}")
    model.load_state_dict(mapped, strict=False)
    initialised = sorted(set(own) - set(mapped))
    stats = _norm_stats(path, dataset)
    norm_stats = {"action": stats["action"], "proprio": stats.get("proprio", {"min": [-1.0] * proprio_dim,
                                                                             "max": [1.0] * proprio_dim})}
    if (path / "tokenizer.json").exists() or (path / "tokenizer.model").exists():
        tokenizer, tok_kind = HFTokenizer.from_dir(str(path), pcfg.max_prompt_len), "the checkpoint's tokenizer"
    else:
        tokenizer = ByteTokenizer(max_len=pcfg.max_prompt_len)
        tok_kind = "byte tokenizer (no tokenizer files in the checkpoint)"
    report = {"loaded": len(mapped), "initialised": initialised, "config": pcfg.name, "tokenizer": tok_kind}
    return model.eval(), norm_stats, tokenizer, report
