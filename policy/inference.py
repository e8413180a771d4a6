"""TorchPolicy: a VLAPolicy with its statistics and tokenizer behind the one ``Policy`` interface.

``infer(obs) -> actions (chunk_len, action_dim)`` decodes greedily (evaluation); ``act_batch``
samples at a temperature for RL rollouts and also returns the tokens and their log-probs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pushcut.interface import Policy
from pushcut.policy import sampling
from pushcut.policy.action_tokenizer import ActionTokenizer, Normalizer, decode_chunks
from pushcut.policy.modeling import VLAPolicy
from pushcut.policy.preprocess import (
    PROMPT,
    ByteTokenizer,
    HFTokenizer,
    build_inputs,
    instruction_problem,
    proprio_normalizer,
)
from pushcut.sim.config import EnvConfig, read_env
from pushcut.spec import GRIPPER_NORMALISED, GRIPPER_RANGE_M, JOINT_MAX_SPEED, dual_arm_names

ROBOTS = {"twin": "piper_dual", "libero": "libero_panda"}  # env kind -> the robot its actions drive


def action_contract(pcfg, env: EnvConfig) -> dict:
    """How training executed the policy's actions, which a robot must repeat: the robot they drive,
    the action rate, the chunk and how long it lasts, the size the cameras were rendered at before
    the policy's resize, and on the twin the arm's speed setting (the joints' top speed) and the
    gripper's mapping. ``deploy.bundle.check_contract`` refuses a robot
    setting that contradicts it."""
    contract = {"robot": ROBOTS[env.kind], "task": env.task, "action_hz": env.action_hz,
                "chunk_len": pcfg.chunk_len, "chunk_s": pcfg.chunk_len / env.action_hz,
                "frame_size": list(env.image_size)}  # (height, width) the cameras were rendered at
    if env.kind == "twin":
        contract.update(speed_percent=env.speed_percent,
                        joint_speed_rad_s=JOINT_MAX_SPEED * env.speed_percent / 100.0,
                        gripper={"action": list(GRIPPER_NORMALISED), "meaning": "0 closed, 1 open",
                                 "range_m": list(GRIPPER_RANGE_M)})
    return contract


def interface(pcfg, default_instruction: str = "", env: EnvConfig | None = None) -> dict:
    """What a robot needs to know of a policy (the manifest's action space, cameras, proprio,
    instruction and, given the env it was trained on, its action contract): written into every
    bundle, and sent by ``pushcut-serve`` for a checkpoint."""
    return {
        **({"action_contract": action_contract(pcfg, env)} if env is not None else {}),
        "action_space": {
            "dim": pcfg.action_dim,
            "chunk_len": pcfg.chunk_len,
            "n_bins": pcfg.n_bins,
            "vocab_size": pcfg.llm.vocab_size,
            "normalization": pcfg.normalization,
            "names": dual_arm_names() if pcfg.action_dim == 14 else [f"a{i}" for i in range(pcfg.action_dim)],
        },
        "cameras": [{"name": c, "image_size": pcfg.vision.image_size,
                     **({"center_crop": pcfg.center_crop} if pcfg.center_crop else {})} for c in pcfg.cameras],
        "proprio": {"dim": pcfg.proprio_dim, "used": pcfg.use_proprio},
        "instruction": {"tokenizer": "tokenizer.json", "prompt": PROMPT, "default": default_instruction},
    }


def trained_env(run_config: Mapping, where: str) -> EnvConfig | None:
    """The env a checkpoint was trained on, from its run config (None where it stored none)."""
    return read_env(run_config["env"], where) if run_config.get("env") else None


class TorchPolicy(Policy):
    """A checkpoint's model on ``device``; ``from_checkpoint`` loads and verifies one."""

    def __init__(self, model: VLAPolicy, norm_stats: Mapping, tokenizer: ByteTokenizer | HFTokenizer,
                 device: str = "cpu", env: EnvConfig | None = None):
        self.model = model.to(device).eval()
        self.cfg = model.cfg
        self.device = device
        self.tokenizer = tokenizer
        self.norm_stats = dict(norm_stats)
        if "action" not in norm_stats:
            raise KeyError("normalisation statistics lack 'action'")
        self.action_norm = Normalizer(norm_stats["action"], self.cfg.normalization, self.cfg.action_dim)
        self.proprio_norm = proprio_normalizer(norm_stats, self.cfg.proprio_dim)
        self.action_tokenizer = ActionTokenizer(self.cfg.n_bins, self.cfg.llm.vocab_size)
        self.manifest = interface(self.cfg, env=env)
        self.source = f"torch {device}"

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu") -> TorchPolicy:
        from pushcut.policy import checkpoint

        model, stats, tok, _, run = checkpoint.load(path, map_location=device)
        return cls(model, stats, tok, device, env=trained_env(run, f"{path}: config.json run.env"))

    def inputs(self, observations: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        arrays = build_inputs(
            observations, self.cfg.cameras, self.cfg.vision.image_size, self.tokenizer, self.proprio_norm,
            self.cfg.center_crop,
        )
        dtype = self.model.compute_dtype  # float inputs follow the model's compute dtype
        return {k: torch.from_numpy(v).to(self.device, dtype if v.dtype.kind == "f" else None)
                for k, v in arrays.items()}

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """Bin indices (B, A) -> un-normalised action chunks (B, chunk_len, action_dim)."""
        return decode_chunks(bins, self.action_tokenizer, self.action_norm, self.cfg.chunk_len, self.cfg.action_dim)

    @torch.no_grad()
    def logits(self, observations: Sequence[Mapping]) -> torch.Tensor:
        return self.model(**self.inputs(observations))

    def act_batch(
        self, observations: Sequence[Mapping], temperature: float, generator: torch.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sampled chunks (B, T, D), their bins (B, A) and chunk log-probs (B,) at ``temperature``.

        ``temperature == 0`` decodes greedily (log-probs are then those at T=1).
        """
        logits = self.logits(observations)
        if temperature > 0:
            bins = sampling.sample(logits, temperature, generator)
            logp = sampling.chunk_log_prob(logits, bins, temperature)
        else:
            bins = sampling.greedy(logits)
            logp = sampling.chunk_log_prob(logits, bins, 1.0)
        b = bins.cpu().numpy()
        return self.decode(b), b, logp.cpu().numpy()

    def infer_batch(self, observations: Sequence[Mapping]) -> np.ndarray:
        """Greedy action chunks (B, chunk_len, action_dim)."""
        return self.act_batch(observations, temperature=0.0)[0]

    def infer(self, obs: Mapping) -> np.ndarray:
        """Greedy action chunk (chunk_len, action_dim) for one observation dict."""
        return self.act_batch([obs], temperature=0.0)[0][0]

    def instruction_problem(self, text: str) -> str | None:
        return instruction_problem(self.tokenizer, text)
