"""The deployable bundle: ``model.onnx`` + ``manifest.json`` + tokenizer + statistics (numpy only).

``manifest.json`` carries a format version, the action space (dims, names, chunk length, bins,
normalisation), the cameras and their image sizes, the proprio layout, the instruction handling
(prompt template and tokenizer file), the parity report of the export, and the sha256 of every
other file in the bundle. :func:`load_manifest` refuses unknown versions and any file whose hash
differs; :func:`check_compatible` refuses a bundle whose action space or cameras do not match the
robot it is about to drive.
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


def write_manifest(bundle: Path, manifest: dict) -> Path:
    """Hash every file in ``bundle`` (but the manifest) into ``manifest['files']`` and write it."""
    files = sorted(p for p in bundle.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **manifest,
                "files": {p.name: sha256(p) for p in files}}
    path = bundle / MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


def load_manifest(bundle: str | Path, verify: bool = True) -> dict:
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.exists():
        raise BundleError(f"{bundle} is not a pushcut bundle (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: format {manifest.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    if manifest.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {manifest.get('version')!r}; this pushcut reads {BUNDLE_VERSION}")
    if verify:
        for name, digest in manifest.get("files", {}).items():
            f = bundle / name
            if not f.exists():
                raise BundleError(f"{bundle}: {name} listed in the manifest is missing")
            actual = sha256(f)
            if actual != digest:
                raise BundleError(f"{bundle}: sha256 of {name} is {actual[:12]}..., the manifest says {digest[:12]}...")
    return manifest


def check_compatible(manifest: dict, action_dim: int, cameras: Sequence[str], chunk_len: int | None = None) -> None:
    """Refuse a bundle whose action space or cameras do not match the robot's."""
    space = manifest["action_space"]
    if space["dim"] != action_dim:
        raise BundleError(f"bundle outputs {space['dim']}-dim actions; this robot takes {action_dim}")
    if chunk_len is not None and space["chunk_len"] != chunk_len:
        raise BundleError(f"bundle chunk length {space['chunk_len']} != expected {chunk_len}")
    wanted = [c["name"] for c in manifest["cameras"]]
    missing = [c for c in wanted if c not in cameras]
    if missing:
        raise BundleError(f"bundle needs camera(s) {missing}; this robot has {list(cameras)}")
