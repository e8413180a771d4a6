"""Where a policy runs: torch devices, onnxruntime providers and dtype names, checked in one place.

Part of the ground floor: torch and onnxruntime are imported only when asked about.
"""

from __future__ import annotations

import re

DTYPES = ("float32", "bfloat16")  # policy.dtype: the compute dtype by its torch name


def check_device(device: str, name: str) -> None:
    """A torch device this machine has: ``cpu``, or ``cuda`` / ``cuda:N`` with that GPU present;
    ValueError naming the field ``name`` otherwise."""
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if m is None:
        raise ValueError(f"{name}: {device!r} is not a device: expected cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(m.group(1) or 0) >= count:
            raise ValueError(f"{name}: {device!r} asked for, but this machine has {count} CUDA device(s)")


def onnxruntime():
    """The onnxruntime module, from whichever build is installed: ``pushcut[cpu]`` brings
    ``onnxruntime``, ``pushcut[gpu]`` ``onnxruntime-gpu`` (CUDA and TensorRT providers); both provide
    the one module, so exactly one of them is installed."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("onnxruntime is not installed: pip install 'pushcut[cpu]', or 'pushcut[gpu]' on a "
                          "CUDA machine (onnxruntime-gpu)") from exc
    return ort


def check_providers(providers: tuple[str, ...], name: str) -> None:
    """onnxruntime execution provider names (the engine reports which of them it actually got)."""
    ort = onnxruntime()
    known = ort.get_all_providers()
    bad = [p for p in providers if p not in known]
    if not providers or bad:
        raise ValueError(f"{name}: {bad or 'none'} not onnxruntime provider names; known: {known}")


def torch_dtype(name: str):
    """``policy.dtype``'s torch dtype (``float32`` -> ``torch.float32``)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {list(DTYPES)}")
    return getattr(torch, name)
