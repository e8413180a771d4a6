"""VLAPolicy: an OpenVLA-OFT-style vision-language-action model with parallel decoding.

Sequence fed to a Llama-style backbone (attending bidirectionally, as OFT's parallel decoding)::

    [image patches of each camera] [proprio token] [prompt tokens] [chunk_len * action_dim queries]

One forward pass gives logits over the ``n_bins`` action tokens (the last ``n_bins`` rows of the
LM head) at every query position, so sampling at temperature T, greedy decoding, log-probs and
entropy all come from the same logits (``policy.sampling``). Built from ``transformers`` config
classes (SigLIP vision tower, Llama backbone); nothing is downloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

from pushcut.devices import torch_dtype
from pushcut.policy.config import PolicyConfig


def llama_config(cfg: PolicyConfig) -> LlamaConfig:
    c = LlamaConfig(
        hidden_size=cfg.llm.hidden_size,
        num_hidden_layers=cfg.llm.num_layers,
        num_attention_heads=cfg.llm.num_heads,
        num_key_value_heads=cfg.llm.num_kv_heads,
        intermediate_size=cfg.llm.intermediate_size,
        vocab_size=cfg.llm.vocab_size,
        max_position_embeddings=cfg.llm.max_positions,
        pad_token_id=0,
    )
    c._attn_implementation = "sdpa"
    return c


def siglip_config(cfg: PolicyConfig) -> SiglipVisionConfig:
    c = SiglipVisionConfig(
        hidden_size=cfg.vision.hidden_size,
        intermediate_size=cfg.vision.intermediate_size,
        num_hidden_layers=cfg.vision.num_layers,
        num_attention_heads=cfg.vision.num_heads,
        image_size=cfg.vision.image_size,
        patch_size=cfg.vision.patch_size,
    )
    c._attn_implementation = "sdpa"
    return c


class VLAPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.llm.hidden_size
        self.vision = SiglipVisionModel(siglip_config(cfg))
        # OFT reads patch features; SigLIP's attention-pooling head is kept (checkpoint keys) but not run.
        self.vision.use_head = False
        self.vision.head.requires_grad_(False)
        self.projector = nn.Sequential(nn.Linear(cfg.vision.hidden_size, d), nn.GELU(), nn.Linear(d, d))
        self.camera_embed = nn.Parameter(torch.zeros(len(cfg.cameras), 1, d))
        self.proprio_proj = (
            nn.Sequential(nn.Linear(cfg.proprio_dim, d), nn.GELU(), nn.Linear(d, d)) if cfg.use_proprio else None
        )
        self.llm = LlamaModel(llama_config(cfg))
        self.action_queries = nn.Parameter(torch.randn(cfg.n_action_tokens, d) * 0.02)
        self.lm_head = nn.Linear(d, cfg.llm.vocab_size, bias=False)
        self.compute_dtype = torch_dtype(cfg.dtype)  # export traces in float32 (policy.export)

    def forward(
        self,
        pixels: torch.Tensor,  # (B, n_cameras, 3, S, S) in [-1, 1]
        proprio: torch.Tensor,  # (B, proprio_dim), normalised
        input_ids: torch.Tensor,  # (B, L) prompt ids
        text_mask: torch.Tensor,  # (B, L) bool, True for real tokens
        features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Action-token logits (B, chunk_len * action_dim, n_bins), float32; with ``features``, also
        the policy's features (B, hidden): the action queries' last hidden states, averaged (what a
        PPO critic reads).

        Computed in ``compute_dtype`` (``policy.dtype``): under bfloat16 the matrix products run in
        bf16 on whatever weights the model holds (fp32 masters in the learner, a bf16 copy in rollout
        workers) while norms and softmax stay in fp32 (``torch.autocast``); the logits come back in
        fp32, so log-probs, the loss and sampling are computed in fp32.
        """
        if self.compute_dtype == torch.float32:
            h = self._hidden(pixels, proprio, input_ids, text_mask)
            logits = self._head(h)
        else:
            with torch.autocast(pixels.device.type, dtype=self.compute_dtype):
                h = self._hidden(pixels, proprio, input_ids, text_mask)
                logits = self._head(h)
        return (logits.float(), h.mean(1).float()) if features else logits.float()

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.lm_head.weight[-self.cfg.n_bins :])  # (B, A, n_bins)

    def _hidden(self, pixels, proprio, input_ids, text_mask) -> torch.Tensor:
        b, n_cam = pixels.shape[:2]
        patches = self.vision(pixel_values=pixels.flatten(0, 1)).last_hidden_state  # (B*C, P, Dv)
        patches = self.projector(patches)  # (B*C, P, D)
        patches = (patches.view(b, n_cam, -1, patches.shape[-1]) + self.camera_embed).flatten(1, 2)  # (B, C*P, D)
        parts = [patches]
        if self.proprio_proj is not None:
            parts.append(self.proprio_proj(proprio)[:, None])  # (B, 1, D)
        parts.append(self.llm.embed_tokens(input_ids))  # (B, L, D)
        n_act = self.action_queries.shape[0]
        parts.append(self.action_queries.unsqueeze(0).expand(b, -1, -1))  # (B, A, D)
        x = torch.cat(parts, dim=1)  # (B, S, D)
        n_prefix = x.shape[1] - n_act - input_ids.shape[1]
        keys = torch.cat(
            [
                torch.ones(b, n_prefix, dtype=torch.bool, device=x.device),
                text_mask.to(torch.bool),
                torch.ones(b, n_act, dtype=torch.bool, device=x.device),
            ],
            dim=1,
        )  # (B, S)
        # Bidirectional: an additive (B, 1, 1, S) mask that broadcasts over queries. No row is fully
        # masked (the prefix is always visible), so it equals the boolean mask exactly, and the
        # exported graph needs no Where/IsNaN over (S, S) scores.
        attn = torch.zeros(keys.shape, dtype=x.dtype, device=x.device).masked_fill(~keys, torch.finfo(x.dtype).min)
        attn = attn[:, None, None, :]
        return self.llm(inputs_embeds=x, attention_mask=attn).last_hidden_state[:, -n_act:]  # (B, A, D)
