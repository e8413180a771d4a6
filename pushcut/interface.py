"""The one policy interface: what eval, the policy server and the ROS policy node drive.

Four classes implement it: ``TorchPolicy`` (a training checkpoint, torch), ``Engine`` (an exported
bundle, onnxruntime), ``PolicyClient`` (a policy behind ``pushcut-serve``) and, through the server,
any of the first two on another machine. ``pushcut.deploy.load.load_policy(source, ...)`` picks one
from what ``source`` is: a bundle, a checkpoint or ``host:port``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class Policy:
    """A policy: an observation in, an action chunk out.

    ``obs`` is ``{"images": {camera: uint8 (H, W, 3)}, "proprio": float32 (D,), "instruction": str}``;
    ``infer`` returns the un-normalised chunk ``(chunk_len, action_dim)``, greedily decoded.

    ``manifest`` is the policy's metadata, what a robot needs to know before it drives anything:
    the action space (dims, names, chunk length, bins), the cameras and their image size, the
    proprio layout and the instruction handling (a bundle's manifest; the same fields for a
    checkpoint or a server). ``source`` says where it runs, for logs. ``timing`` is the last
    inference's breakdown in milliseconds (``queue_ms``, ``infer_ms``, ``transport_ms``) where the
    policy knows more of it than the caller's clock (a server); ``None`` otherwise.
    """

    manifest: Mapping
    source: str = ""
    timing: dict[str, float] | None = None

    def infer(self, obs: Mapping) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the episode (the policies here hold none between chunks)."""

    def instruction_problem(self, text: str) -> str | None:
        """Why ``text`` cannot be read whole by this policy's tokenizer (``None``: it can)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the policy holds open (a server connection)."""
