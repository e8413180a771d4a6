"""Policy checkpoints: safetensors weights + resolved config + normalisation statistics + version.

Layout of a checkpoint directory::

    meta.json           {"format": "pushcut-checkpoint", "version": 3, "complete": bool, "progress": str,
                         "files": {name: sha256}, ...extra}
    config.json         the resolved PolicyConfig (and the run's full config under "run")
    norm_stats.json     {"action": {min,max,q01,q99,...}, "proprio": {...}}
    tokenizer.json      the prompt tokenizer
    model.safetensors   weights

Written into a temporary sibling directory, fsynced, then renamed into place (atomic on POSIX),
so a crash never leaves a half-written checkpoint under the final name; a crash between moving
the previous one aside (``<name>.old``) and renaming the new one in leaves the previous one,
which ``recover`` puts back. Loading checks format, version, the sha256 of every file against
``meta.json`` (a flipped byte, a truncated or missing file is refused naming the file), that the
weights match the config, and (if given) that the config matches the one the caller expects,
naming every mismatching field. Version 1 checkpoints (no hashes) still load, with a warning.

``complete`` says whether the run that wrote the checkpoint had finished (``progress``: how far it
got, e.g. ``step 500 of 1500``); :func:`completion` reads it from every version (versions 1-2
carry no flag: an SFT checkpoint's steps tell, anything else is unknown), so that a cache never
passes an interrupted run on as a finished one and eval and export name a mid-run checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pushcut.artefacts import fsync_dir, read_versioned, sha256, verify_listed
from pushcut.configs import to_dataclass, to_dict
from pushcut.policy.config import ARCHITECTURE_FIELDS, PolicyConfig
from pushcut.policy.modeling import VLAPolicy
from pushcut.policy.preprocess import ByteTokenizer, HFTokenizer, load_tokenizer

CKPT_FORMAT = "pushcut-checkpoint"
CKPT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1: no file hashes; 2: no "complete" flag
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    pass


def save(
    path: str | Path,
    model: VLAPolicy,
    norm_stats: dict,
    tokenizer: ByteTokenizer | HFTokenizer,
    run_config: dict | None = None,
    extra: dict | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    complete: bool = True,
    progress: str = "",
) -> Path:
    """Write a checkpoint atomically; ``extra_tensors`` (e.g. optimizer state) go beside the weights.

    ``weights`` replaces ``model.state_dict()`` where the model is sharded (FSDP's full state dict).
    ``complete``: whether the run that writes it has finished (``progress``: how far it got).
    """
    extra = {**(extra or {}), "complete": bool(complete), "progress": progress}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write(tmp, model, norm_stats, tokenizer, run_config, extra, extra_tensors, weights)
    except BaseException as exc:  # disk full, killed, ...: the previous checkpoint stays where it is
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            kept = f"the previous checkpoint is kept at {path}" if (path / "meta.json").exists() else "no checkpoint"
            raise CheckpointError(f"could not write the checkpoint {path} ({exc}); {kept}") from exc
        raise
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)
    return path


def _write(tmp: Path, model, norm_stats, tokenizer, run_config, extra, extra_tensors, weights) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in (weights or model.state_dict()).items()}
    save_file(state, tmp / "model.safetensors")
    if extra_tensors:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()}, tmp / "extra.safetensors")
    files = {
        "config.json": {"policy": to_dict(model.cfg), "run": run_config or {}},
        "norm_stats.json": norm_stats,
    }
    for name, data in files.items():
        (tmp / name).write_text(json.dumps(data, indent=2))
    (tmp / "tokenizer.json").write_text(tokenizer.to_json())
    digests = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
    meta = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **(extra or {}), "files": digests}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def recover(path: str | Path) -> bool:
    """Put back the previous checkpoint that a save killed between its two renames left at
    ``<path>.old`` with nothing at ``path``, and drop a ``<path>.tmp`` a killed save left half
    written; returns whether a checkpoint was put back."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        log.warning("%s: dropping a half-written checkpoint (a save was interrupted)", tmp)
        shutil.rmtree(tmp)
    old = path.with_name(path.name + ".old")
    if (path / "meta.json").exists() or not (old / "meta.json").exists():
        return False
    if path.exists():  # not a checkpoint (no meta.json): nothing of ours
        raise CheckpointError(f"{path} exists but is not a checkpoint; the previous one is at {old}")
    os.replace(old, path)
    fsync_dir(path.parent)
    return True


def read_meta(path: str | Path, verify: bool = True) -> dict:
    """``meta.json`` of the checkpoint at ``path``; with ``verify``, every file's sha256 checked."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        old = path.with_name(path.name + ".old")
        hint = f"; a previous checkpoint sits at {old} (a save was interrupted)" if (old / "meta.json").exists() else ""
        raise CheckpointError(f"{path} is not a pushcut checkpoint (no meta.json){hint}")
    meta = read_versioned(meta_path, CKPT_FORMAT, READABLE_VERSIONS, CheckpointError, "checkpoint")
    if meta["version"] >= 3 and not isinstance(meta.get("complete"), bool):
        raise CheckpointError(f"{meta_path}: 'complete' {meta.get('complete')!r} is not true or false")
    if verify:
        verify_files(path, meta)
    return meta


def completion(meta: dict) -> tuple[bool | None, str]:
    """Whether the run that wrote a checkpoint had finished (None: unknown), and how far it got."""
    if "complete" in meta:
        return meta["complete"], meta.get("progress", "")
    if "step" in meta and "steps" in meta:  # an SFT checkpoint of version 1-2
        return int(meta["step"]) >= int(meta["steps"]), f"step {meta['step']} of {meta['steps']}"
    return None, f"unknown (a version-{meta.get('version')} checkpoint does not say whether its run finished)"


def unfinished(meta: dict) -> str | None:
    """What to tell a user about a checkpoint whose run had not finished (None when it had)."""
    complete, progress = completion(meta)
    if complete:
        return None
    return f"taken mid-run ({progress})" if complete is False else progress


def verify_files(path: Path, meta: dict) -> None:
    """Every file ``meta.json`` lists must exist with its sha256; nothing else may sit beside them."""
    listed = meta.get("files")
    if listed is None:
        log.warning("%s: a version-%s checkpoint carries no file hashes: its files are not verified",
                    path, meta.get("version"))
        return
    verify_listed(path, listed, "meta.json", CheckpointError)


def config_mismatch(a: PolicyConfig, b: PolicyConfig) -> list[str]:
    """Architecture fields on which two policy configs differ, as 'field: a != b'."""
    da, db = to_dict(a), to_dict(b)
    return [f"{k}: {da[k]} != {db[k]}" for k in ARCHITECTURE_FIELDS if da[k] != db[k]]


def load(path: str | Path, expected: PolicyConfig | None = None, map_location: str = "cpu"):
    """Load ``(model, norm_stats, tokenizer, meta, run_config)`` from a checkpoint directory.

    With ``expected`` (the run's configured policy) the model computes in its ``dtype``, whatever
    the run that wrote the checkpoint computed in: the weights are stored in fp32 either way."""
    path = Path(path)
    meta = read_meta(path)
    cfg_data = json.loads((path / "config.json").read_text())
    cfg = to_dataclass(PolicyConfig, cfg_data["policy"], "checkpoint.policy")
    if expected is not None:
        diff = config_mismatch(cfg, expected)
        if diff:
            raise CheckpointError(f"{path} does not match the configured policy: " + "; ".join(diff))
        cfg = dataclasses.replace(cfg, dtype=expected.dtype)
    model = VLAPolicy(cfg)
    state = load_file(path / "model.safetensors", device=map_location)
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the config "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    bad = [k for k, v in model.state_dict().items() if v.shape != state[k].shape]
    if bad:
        raise CheckpointError(f"{path}: weight shapes do not match the config: {bad[:5]}")
    model.load_state_dict(state)
    norm_stats = json.loads((path / "norm_stats.json").read_text())
    tokenizer = load_tokenizer((path / "tokenizer.json").read_text())
    return model, norm_stats, tokenizer, meta, cfg_data.get("run", {})


def load_extra(path: str | Path) -> dict[str, torch.Tensor]:
    f = Path(path) / "extra.safetensors"
    return load_file(f) if f.exists() else {}
