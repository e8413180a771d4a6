"""The deployable bundle: ``model.onnx`` + ``manifest.json`` + tokenizer + statistics (numpy only).

``manifest.json`` carries a format version, the action space (dims, names, chunk length, bins,
normalisation), the cameras and their image sizes, the proprio layout, the instruction handling
(prompt template and tokenizer file), the parity report of the export, the sha256 of every other
file in the bundle, and ``signature``: the sha256 of the manifest's own content (every field above,
file hashes included, as canonical JSON), so one chain covers the statistics, the model entries
and every byte of every file. :func:`load_manifest` refuses unknown versions, an edited manifest,
files that are missing, changed or not listed; :func:`check_compatible` refuses a bundle whose
action space, proprio, cameras, chunk length or bins do not match what it is about to drive,
naming both sides; :func:`check_contract` refuses a robot setting (command rate, arm speed,
robot) that contradicts how training executed the actions. The signature detects edits and
corruption; it is not an authentication (no key): anyone able to rewrite the bundle can re-sign
it. A manifest written before manifests were signed is refused with the command that re-exports
it: nothing would check its statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pushcut.artefacts import (
    BUNDLE_FORMAT,
    BUNDLE_MANIFEST,
    BUNDLE_VERSION,
    read_versioned,
    signature,
    verify_listed,
)


class BundleError(ValueError):
    """A bundle is missing, tampered with, of an unknown version, or does not fit the robot."""


def load_manifest(bundle: str | Path, verify: bool = True) -> dict:
    """The bundle's manifest, its signature checked; with ``verify``, every file's hash too, and no
    file in the bundle left unlisted."""
    bundle = Path(bundle)
    path = bundle / BUNDLE_MANIFEST
    if not path.exists():
        raise BundleError(f"{bundle} is not a pushcut bundle (no {BUNDLE_MANIFEST})")
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
        verify_listed(bundle, listed, BUNDLE_MANIFEST, BundleError)
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


def check_contract(manifest: dict, command_hz: int, speed_percent: int | None = None,
                   robot: str = "piper_dual", rehearsal: bool = False) -> dict:
    """Refuse a robot setting that contradicts how training executed the policy's actions (the
    manifest's ``action_contract``, :func:`pushcut.policy.inference.action_contract`); returns the
    contract. ``command_hz``: the command stream to the arms, which must carry whole action
    periods; ``speed_percent``: the arms' speed setting (None: the robot takes the bundle's), which
    may be lower than the trained one only for a ``rehearsal`` (a first motion at low speed: the
    chunks run late, so what it shows is not the policy's success)."""
    contract = manifest.get("action_contract")
    if contract is None:
        source = manifest.get("source_checkpoint", {}).get("path", "<its checkpoint>")
        raise BundleError("bundle carries no action contract (exported before 2026-12-06): its action rate "
                          "and the arm speed it was trained at are unknown; re-export it: "
                          f"pushcut-export checkpoint={source}")
    trained = f"trained on {contract['task']}"
    if contract["robot"] != robot:
        raise BundleError(f"bundle drives {contract['robot']} ({trained}); this robot is {robot}")
    if command_hz % contract["action_hz"]:
        raise BundleError(f"bundle acts at {contract['action_hz']} Hz ({trained}); a command stream at "
                          f"{command_hz} Hz does not hold a whole number of commands per action: use a multiple "
                          f"of {contract['action_hz']}")
    slower = speed_percent is not None and speed_percent < contract["speed_percent"]
    if speed_percent is not None and speed_percent != contract["speed_percent"] and not (rehearsal and slower):
        raise BundleError(
            f"arms set to {speed_percent}% speed; the policy was trained with the joints at "
            f"{contract['speed_percent']}% ({contract['joint_speed_rad_s']:.2f} rad/s), so its chunks would run "
            f"{'late' if slower else 'faster than it was trained to expect'}: run the arms at "
            f"{contract['speed_percent']}%, train at the speed wanted (env.speed_percent={speed_percent})"
            + (", or rehearse at a lower speed (rehearsal:=true; not a measurement)" if slower else ""))
    return contract
