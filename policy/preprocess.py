"""Observation pre-processing shared by training and the ONNX engine (numpy + OpenCV, and the
Rust ``tokenizers`` library for a real checkpoint's tokenizer; never torch).

Images: optionally centre-cropped to a share of their area (``center_crop``, OpenVLA-OFT's
LIBERO crop: 0.9, then resized bilinearly), resized to the vision tower's square input (area
interpolation), scale to [-1, 1]
(SigLIP's mean 0.5 / std 0.5), channels first, cameras stacked in the policy's camera order.
Text: a byte-level tokenizer for the built-in presets, or a real checkpoint's own tokenizer;
either is serialised into ``tokenizer.json`` and travels in checkpoints and bundles. The prompt
follows OpenVLA: "In: What action should the robot take to {task}?\nOut:".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

PROMPT = "In: What action should the robot take to {task}?\nOut:"


def center_crop(img: np.ndarray, area: float) -> np.ndarray:
    """The centred window holding ``area`` of the image (each side scaled by sqrt(area)); the
    policy's resize then brings it to its input size bilinearly, as OpenVLA's ``crop_and_resize``."""
    h, w = img.shape[:2]
    ch, cw = round(h * area**0.5), round(w * area**0.5)
    top, left = (h - ch) // 2, (w - cw) // 2
    return img[top : top + ch, left : left + cw]


def preprocess_images(images: Mapping[str, np.ndarray], cameras: Sequence[str], size: int,
                      crop: float | None = None) -> np.ndarray:
    """uint8 (H, W, 3) per camera -> float32 (n_cameras, 3, size, size) in [-1, 1]; ``crop``: the
    area share ``center_crop`` keeps first."""
    missing = [c for c in cameras if c not in images]
    if missing:
        raise KeyError(f"observation lacks camera(s) {missing}; it has {sorted(images)}")
    out = np.empty((len(cameras), 3, size, size), dtype=np.float32)
    for i, cam in enumerate(cameras):
        img = np.asarray(images[cam])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"camera {cam!r}: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
        if crop is not None:
            img = center_crop(img, crop)
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR if crop else cv2.INTER_AREA)
        out[i] = (img.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)
    return out


def prompt(text: str) -> str:
    """The instruction as the policy reads it: OpenVLA's prompt around the lower-cased task."""
    return PROMPT.format(task=text.lower().strip())


class ByteTokenizer:
    """UTF-8 bytes as ids ``offset .. offset+255``; id 0 pads. Serialisable to JSON."""

    kind = "byte"

    def __init__(self, offset: int = 1, max_len: int = 64):
        self.offset, self.max_len = offset, max_len
        self.pad_id = 0
        self.vocab_size = offset + 256

    def _ids(self, text: str) -> np.ndarray:
        """The prompt's ids, whole (``encode`` keeps the first ``max_len``)."""
        return np.frombuffer(prompt(text).encode("utf-8"), dtype=np.uint8).astype(np.int64) + self.offset

    def length(self, text: str) -> int:
        """Tokens of ``text`` in the prompt, before truncation to ``max_len``."""
        return len(self._ids(text))

    def encode(self, text: str) -> np.ndarray:
        return self._ids(text)[: self.max_len]

    def batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids (B, L) and a bool mask (B, L) of real tokens."""
        enc = [self.encode(t) for t in texts]
        length = max(len(e) for e in enc)
        ids = np.full((len(enc), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(enc), length), dtype=bool)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = e
            mask[i, : len(e)] = True
        return ids, mask

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "offset": self.offset, "max_len": self.max_len})

    @classmethod
    def from_json(cls, text: str) -> ByteTokenizer:
        d = json.loads(text)
        if d.get("kind") != cls.kind:
            raise ValueError(f"not a byte tokenizer: {d.get('kind')!r}")
        return cls(offset=d["offset"], max_len=d["max_len"])


def proprio_normalizer(stats: Mapping[str, Mapping], dim: int):
    """Min/max normaliser of the proprio vector (OpenVLA-OFT normalises proprio by bounds)."""
    from pushcut.policy.action_tokenizer import Normalizer

    if "proprio" not in stats:
        raise KeyError("normalisation statistics lack 'proprio'")
    return Normalizer(stats["proprio"], "min_max", dim)


def build_inputs(
    observations: Sequence[Mapping],
    cameras: Sequence[str],
    image_size: int,
    tokenizer: ByteTokenizer | HFTokenizer,
    proprio_norm,
    crop: float | None = None,
) -> dict[str, np.ndarray]:
    """A batch of observation dicts (``pushcut.spec`` keys) -> the model's numpy inputs."""
    from pushcut import spec

    pixels = np.stack([preprocess_images(o[spec.IMAGES], cameras, image_size, crop) for o in observations])
    proprio = np.stack([proprio_norm.normalize(o[spec.PROPRIO]) for o in observations]).astype(np.float32)
    ids, mask = tokenizer.batch([o[spec.INSTRUCTION] for o in observations])
    return {"pixels": pixels, "proprio": proprio, "input_ids": ids, "text_mask": mask}


class HFTokenizer:
    """A checkpoint's own tokenizer (e.g. OpenVLA's Llama tokenizer), same interface.

    Runs on the Rust ``tokenizers`` library (no torch, no transformers), so the engine encodes
    exactly as training did; it serialises into the same ``tokenizer.json`` file as the byte
    tokenizer (``{"kind": "hf", "max_len", "pad_id", "tokenizer": <the fast-tokenizer JSON>}``),
    and so travels in checkpoints and bundles.
    """

    kind = "hf"

    def __init__(self, fast_json: str, max_len: int = 64, pad_id: int = 0):
        from tokenizers import Tokenizer

        self.fast_json = fast_json
        self.tok = Tokenizer.from_str(fast_json)
        self.max_len, self.pad_id = max_len, pad_id

    @classmethod
    def from_dir(cls, path: str, max_len: int = 64) -> HFTokenizer:
        """A Hugging Face tokenizer directory (``tokenizer.json``, or a slow ``tokenizer.model``,
        which ``transformers`` converts once)."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not getattr(tok, "is_fast", False):
            raise ValueError(f"{path}: no fast tokenizer could be made (install sentencepiece and protobuf?)")
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        return cls(tok.backend_tokenizer.to_str(), max_len, pad)

    def _ids(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(prompt(text)).ids, dtype=np.int64)

    length = ByteTokenizer.length

    def encode(self, text: str) -> np.ndarray:
        return self._ids(text)[: self.max_len]

    batch = ByteTokenizer.batch

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "max_len": self.max_len, "pad_id": self.pad_id,
                           "tokenizer": json.loads(self.fast_json)})

    @classmethod
    def from_json(cls, text: str) -> HFTokenizer:
        d = json.loads(text)
        return cls(json.dumps(d["tokenizer"]), d["max_len"], d["pad_id"])


def instruction_problem(tokenizer: ByteTokenizer | HFTokenizer, text: str) -> str | None:
    """Why ``text`` cannot be given to a policy with ``tokenizer`` whole (None when it can): control
    characters, or a prompt longer than the tokenizer keeps (the rest would be cut silently)."""
    if not text.strip().isprintable():
        return f"instruction {text[:80]!r} holds control characters"
    n = tokenizer.length(text)
    if n > tokenizer.max_len:
        return f"instruction {text[:80]!r} is {n} tokens in the prompt; the policy reads {tokenizer.max_len}"
    return None


def load_tokenizer(text: str) -> ByteTokenizer | HFTokenizer:
    """The tokenizer a checkpoint or bundle carries in ``tokenizer.json``."""
    kind = json.loads(text).get("kind")
    kinds = {c.kind: c for c in (ByteTokenizer, HFTokenizer)}
    if kind not in kinds:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {sorted(kinds)}")
    return kinds[kind].from_json(text)
