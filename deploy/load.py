"""``load_policy``: a bundle, a checkpoint or a policy server, behind the one ``Policy`` interface.

Used by ``pushcut-eval``, ``pushcut-serve`` and the ROS policy node, so that "which policy, on
which device or provider" is answered in one place.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from pushcut.artefacts import BUNDLE_MANIFEST
from pushcut.interface import Policy

CHECKPOINT_META = "meta.json"
ADDRESS = re.compile(r"^[\w.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")


KINDS = ("bundle", "checkpoint", "server")


def load_policy(
    source: str | Path,
    *,
    kind: str | None = None,
    device: str = "cpu",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    variant: str = "fp32",
    timeout_s: float = 1.0,
    wait_s: float = 0.0,
    cache_dir: str | Path | None = None,
) -> Policy:
    """The policy ``source`` names:

    - an exported bundle (a folder with ``manifest.json``): onnxruntime on ``providers``, ``variant``
      (TensorRT's engine cache in ``cache_dir``, the caller's run folder; see ``Engine``);
    - a training checkpoint (a folder with ``meta.json``): torch on ``device``;
    - ``host:port`` of a ``pushcut-serve`` server: a client (``timeout_s`` per reply), retried for
      ``wait_s`` while the server is still starting.

    ``kind`` (one of ``KINDS``) says which it must be, where the caller knows (``bundle=`` or
    ``checkpoint=``): its loader then names what is wrong with it. Each is verified as it loads
    (hashes, versions, shapes).
    """
    kind = kind or _kind(source)
    if kind == "bundle":
        from pushcut.deploy.engine import Engine

        return Engine(source, providers=providers, variant=variant, cache_dir=cache_dir)
    if kind == "checkpoint":
        from pushcut.policy.inference import TorchPolicy

        return TorchPolicy.from_checkpoint(source, device)
    if kind == "server":
        return _connect(str(source), timeout_s, wait_s)
    raise ValueError(f"policy kind {kind!r}: one of {list(KINDS)}")


def _kind(source: str | Path) -> str:
    path = Path(source)
    if (path / BUNDLE_MANIFEST).is_file():
        return "bundle"
    if (path / CHECKPOINT_META).is_file():
        return "checkpoint"
    if not path.exists() and ADDRESS.match(str(source)):
        return "server"
    raise ValueError(f"policy source {str(source)!r} is neither a bundle (a folder with {BUNDLE_MANIFEST}), "
                     f"a checkpoint (a folder with {CHECKPOINT_META}) nor host:port of a policy server")


def _connect(address: str, timeout_s: float, wait_s: float) -> Policy:
    from pushcut.deploy.client import PolicyClient, ServerLost

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return PolicyClient(address, timeout_s=timeout_s)
        except ServerLost:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
