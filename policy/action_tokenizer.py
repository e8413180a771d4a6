"""Action (un)normalisation and 256-bin tokenisation, numpy only (the ONNX engine shares it).

Normalisation maps each action dimension to [-1, 1] with dataset statistics: ``q01``/``q99``
bounds (LIBERO, OpenVLA-OFT) or ``min``/``max`` (dual-arm, RoboTwin). Dimensions whose bounds
coincide are passed through as the constant bound. A ``mask`` in the statistics (OpenVLA's) leaves
the dimensions it marks false as they are, clipped to [-1, 1] (LIBERO's gripper). Missing
statistics are an error, never a silent pass-through.

Tokenisation: [-1, 1] is cut into ``n_bins`` equal bins; bin ``i`` is the LM vocabulary id
``vocab_size - n_bins + i`` (the last ``n_bins`` ids, as OpenVLA); decoding returns the bin
centre, so the round-trip error is at most half a bin (1 / n_bins).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

NORMALIZATIONS = {"q01_q99": ("q01", "q99"), "min_max": ("min", "max")}


class Normalizer:
    def __init__(self, stats: Mapping[str, np.ndarray | list], mode: str, dim: int):
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {mode!r}; known: {list(NORMALIZATIONS)}")
        lo_key, hi_key = NORMALIZATIONS[mode]
        missing = [k for k in (lo_key, hi_key) if k not in stats]
        if missing:
            raise KeyError(f"normalisation statistics lack {missing} needed by {mode!r} (have {sorted(stats)})")
        self.lo = np.asarray(stats[lo_key], dtype=np.float64)
        self.hi = np.asarray(stats[hi_key], dtype=np.float64)
        if self.lo.shape != (dim,) or self.hi.shape != (dim,):
            raise ValueError(f"statistics have shape {self.lo.shape}, the action space has {dim} dims")
        if not (np.all(np.isfinite(self.lo)) and np.all(np.isfinite(self.hi))):
            raise ValueError("normalisation statistics contain NaN or inf")
        mask = stats.get("mask")
        if mask is not None and not all(isinstance(m, bool | np.bool_) for m in np.ravel(np.asarray(mask, object))):
            raise ValueError(f"normalisation mask must hold true/false per dim, not {list(np.ravel(mask))}")
        self.mask = np.ones(dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if self.mask.shape != (dim,):
            raise ValueError(f"normalisation mask has shape {self.mask.shape}, the action space has {dim} dims")
        self.mode = mode
        self.span = self.hi - self.lo
        self.constant = (self.span < 1e-8) & self.mask

    def normalize(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        span = np.where(self.constant, 1.0, self.span)
        x = np.where(self.mask, 2.0 * (a - self.lo) / span - 1.0, a)
        return np.clip(np.where(self.constant, 0.0, x), -1.0, 1.0)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
        return np.where(self.constant, self.lo, np.where(self.mask, 0.5 * (x + 1.0) * self.span + self.lo, x))


class ActionTokenizer:
    def __init__(self, n_bins: int = 256, vocab_size: int | None = None):
        if n_bins < 2:
            raise ValueError("n_bins must be >= 2")
        self.n_bins = n_bins
        self.vocab_size = vocab_size if vocab_size is not None else n_bins
        if self.vocab_size < n_bins:
            raise ValueError("vocab_size must be >= n_bins")
        self.width = 2.0 / n_bins
        self.centers = -1.0 + self.width * (np.arange(n_bins) + 0.5)

    def to_bins(self, x: np.ndarray) -> np.ndarray:
        """Normalised actions in [-1, 1] -> bin indices in [0, n_bins)."""
        idx = np.floor((np.clip(x, -1.0, 1.0) + 1.0) / self.width).astype(np.int64)
        return np.clip(idx, 0, self.n_bins - 1)

    def from_bins(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        if np.any(idx < 0) or np.any(idx >= self.n_bins):
            raise ValueError(f"bin index out of range [0, {self.n_bins})")
        return self.centers[idx]

    def to_token_ids(self, x: np.ndarray) -> np.ndarray:
        return self.to_bins(x) + (self.vocab_size - self.n_bins)

    def from_token_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.from_bins(np.asarray(ids) - (self.vocab_size - self.n_bins))


def decode_chunks(bins: np.ndarray, tokenizer: ActionTokenizer, normalizer: Normalizer, chunk_len: int,
                  action_dim: int) -> np.ndarray:
    """Bin indices (B, chunk_len * action_dim), time-major -> action chunks (B, chunk_len, action_dim)."""
    norm = tokenizer.from_bins(bins).reshape(len(bins), chunk_len, action_dim)
    return normalizer.unnormalize(norm)


def encode_chunks(chunks: np.ndarray, tokenizer: ActionTokenizer, normalizer: Normalizer) -> np.ndarray:
    """Action chunks (B, chunk_len, action_dim) -> bin indices (B, chunk_len * action_dim), time-major:
    the inverse of ``decode_chunks`` up to half a bin."""
    return tokenizer.to_bins(normalizer.normalize(chunks)).reshape(len(chunks), -1)
