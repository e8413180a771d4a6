"""The deployable bundle: ``model.onnx`` + ``manifest.json`` + tokenizer + statistics (numpy only).

``manifest.json`` carries a format version, the action space (dims, names, chunk length, bins,
normalisation), the cameras and their image sizes, the proprio layout, the instruction handling
(prompt template and tokenizer file), the parity report of the export, the sha256 of every other
file in the bundle, and ``signature``: the sha256 of the manifest's own content (every field above,
file hashes included, as canonical JSON), so one chain covers the statistics, the model entries
and every byte of every file. :func:`load_manifest` refuses unknown versions, an edited manifest,
files that are missing, changed or not listed; :func:`check_compatible` refuses a bundle whose
action space, proprio, cameras, chunk length or bins do not match what it is about to drive,
naming both sides. The signature detects edits and corruption; it is not an authentication (no
key): anyone able to rewrite the bundle can re-sign it. A manifest written before manifests were
signed is refused with the command that re-exports it: nothing would check its statistics.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

BUNDLE_FORMAT = "pushcut-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(ValueError):
    """A bundle is missing, tampered with, of an unknown version, or does not fit the robot."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_versioned(path: Path, fmt: str, versions: Sequence[int], error: type[ValueError], what: str) -> dict:
    """The JSON object at ``path``, refused with ``error`` (naming the file) unless it is an object
    whose ``format`` is ``fmt`` and whose ``version`` is one of ``versions``."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else data
        raise error(f"{path}: format {got!r}, expected {fmt!r}")
    if data.get("version") not in versions:
        raise error(f"{path}: {what} version {data.get('version')!r}; this pushcut reads {list(versions)}")
    return data


def signature(manifest: dict) -> str:
    """sha256 of the manifest's content without its ``signature`` field, as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(bundle: Path, manifest: dict) -> Path:
    """Hash every file in ``bundle`` (but the manifest) into ``manifest['files']``, sign, write."""
    files = sorted(p for p in bundle.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **manifest,
                "files": {p.name: sha256(p) for p in files}}
    manifest["signature"] = signature(manifest)
    path = bundle / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


def load_manifest(bundle: str | Path, verify: bool = True) -> dict:
    """The bundle's manifest, its signature checked; with ``verify``, every file's hash too, and no
    file in the bundle left unlisted."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.exists():
        raise BundleError(f"{bundle} is not a pushcut bundle (no {MANIFEST})")
    manifest = read_versioned(path, BUNDLE_FORMAT, (BUNDLE_VERSION,), BundleError, "bundle")
    if "signature" not in manifest:  # NOTE: readable, but its content cannot be checked: it does not run
        source = manifest.get("source_checkpoint", {}).get("path", "<its checkpoint>")
        raise BundleError(f"{path} was written before bundles were signed (pushcut before 2026-12-04): its "
                          f"manifest (statistics, cameras, files) cannot be checked, so it is not run; re-export "
                          f"it: pushcut-export checkpoint={source}")
    if manifest.get("signature") != signature(manifest):
        raise BundleError(f"{path} was edited after export: its content does not match its signature "
                          "(re-export the checkpoint instead of editing the manifest)")
    listed = manifest["files"]
    missing_entries = [f"{kind} -> {name}" for kind, name in manifest["models"].items() if name not in listed]
    if missing_entries:
        raise BundleError(f"{path}: model file(s) {missing_entries} are not among the hashed files")
    if verify:
        for name, digest in listed.items():
            f = bundle / name
            if not f.exists():
                raise BundleError(f"{bundle}: {name} listed in the manifest is missing")
            actual = sha256(f)
            if actual != digest:
                raise BundleError(f"{bundle}: sha256 of {name} is {actual[:12]}..., the manifest says {digest[:12]}...")
        unlisted = sorted(p.name for p in bundle.iterdir() if p.name != MANIFEST and p.name not in listed)
        if unlisted:
            raise BundleError(f"{bundle}: {unlisted} not listed in the manifest (a bundle holds only what it hashed)")
    return manifest


def check_compatible(manifest: dict, action_dim: int, cameras: Sequence[str], chunk_len: int | None = None,
                     proprio_dim: int | None = None, n_bins: int | None = None, target: str = "this robot") -> None:
    """Refuse a bundle that does not fit ``target``: its action dims, proprio dims (when the policy
    reads proprio), cameras (by name, which is their role: head, left_wrist, right_wrist) and, when
    given, chunk length and bins; the message names both sides."""
    space = manifest["action_space"]
    if space["dim"] != action_dim:
        raise BundleError(f"bundle outputs {space['dim']}-dim actions; {target} takes {action_dim}")
    prop = manifest["proprio"]
    if proprio_dim is not None and prop["used"] and prop["dim"] != proprio_dim:
        raise BundleError(f"bundle reads {prop['dim']}-dim proprio; {target} gives {proprio_dim}")
    if chunk_len is not None and space["chunk_len"] != chunk_len:
        raise BundleError(f"bundle chunk length {space['chunk_len']}; {target} expects {chunk_len}")
    if n_bins is not None and space["n_bins"] != n_bins:
        raise BundleError(f"bundle decodes {space['n_bins']} bins; {target} expects {n_bins}")
    wanted = [c["name"] for c in manifest["cameras"]]
    missing = [c for c in wanted if c not in cameras]
    if missing:
        raise BundleError(f"bundle needs camera(s) {missing}; {target} has {list(cameras)}")
