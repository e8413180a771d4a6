"""Files pushcut writes and reads back: one of each of the pieces every artefact needs.

- :func:`sha256` of a file;
- :func:`write_json_atomic`: JSON written to a sibling temporary file, fsynced, renamed into
  place (a crash never leaves half a file under the final name); :func:`fsync_dir`;
- :func:`read_versioned`: a JSON object refused (with the caller's error type, naming the file)
  unless its ``format`` and ``version`` are ones the caller reads;
- :func:`verify_listed`: every file of a folder listed with its sha256 exists and matches, and
  nothing unlisted sits beside them (checkpoints, bundles);
- :func:`signature` / :func:`write_signed_manifest`: a manifest holding every file's sha256 and
  the sha256 of its own canonical JSON (bundles: ``BUNDLE_FORMAT``, written by
  ``pushcut.policy.export``, read by ``pushcut.deploy.bundle``).

Part of the ground floor: imports the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

BUNDLE_FORMAT, BUNDLE_VERSION, BUNDLE_MANIFEST = "pushcut-bundle", 1, "manifest.json"
PARITY_SAMPLES = "parity.npz"  # a bundle's parity inputs and the torch logits on them (the engine's gate)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data) -> Path:
    """``data`` as indented JSON at ``path``, atomically (temporary sibling, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_versioned(path: Path, fmt: str, versions: Sequence[int], error: type[ValueError], what: str) -> dict:
    """The JSON object at ``path``, refused with ``error`` (naming the file) unless it is an object
    whose ``format`` is ``fmt`` and whose ``version`` is one of ``versions``."""
    try:
        data = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        got = data.get("format") if isinstance(data, dict) else data
        raise error(f"{path}: format {got!r}, expected {fmt!r}")
    if data.get("version") not in versions:
        raise error(f"{path}: {what} version {data.get('version')!r}; this pushcut reads {list(versions)}")
    return data


def verify_listed(folder: Path, listed: Mapping[str, str], index: str, error: type[ValueError]) -> None:
    """Every file ``listed`` ({name: sha256}, from the folder's ``index`` file) exists in ``folder``
    with its hash, and no file but ``index`` is left unlisted; ``error`` names what is wrong."""
    for name, digest in listed.items():
        f = folder / name
        if not f.is_file():
            raise error(f"{folder}: {name} listed in {index} is missing")
        actual = sha256(f)
        if actual != digest:
            raise error(f"{folder}: {name} does not match its sha256 in {index} "
                        f"(sha256 of {name} is {actual[:12]}..., listed {digest[:12]}...: corrupted or edited)")
    unlisted = sorted(f.name for f in folder.iterdir() if f.name != index and f.name not in listed)
    if unlisted:
        raise error(f"{folder}: {unlisted} not listed in {index} (it holds only what it hashed)")


def signature(manifest: Mapping) -> str:
    """sha256 of the manifest's content without its ``signature`` field, as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_signed_manifest(folder: Path, manifest: dict, fmt: str, version: int, index: str) -> Path:
    """Hash every file in ``folder`` (but ``index``) into ``manifest['files']``, sign, write ``index``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != index)
    manifest = {"format": fmt, "version": version, **manifest, "files": {p.name: sha256(p) for p in files}}
    manifest["signature"] = signature(manifest)
    path = folder / index
    path.write_text(json.dumps(manifest, indent=2))
    return path
