"""The wire format of ``pushcut-serve``: msgpack frames, numpy arrays as openpi's ``msgpack_numpy``
encodes them, and the check every request passes before a policy sees it (the protocol is in
:mod:`pushcut.deploy.serve`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

PROTOCOL = 1
TOKEN_ENV = "PUSHCUT_SERVE_TOKEN"
MAX_MESSAGE = 64 * 2**20


class RequestError(ValueError):
    """A request the server refuses; the message names the field and what was expected."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": True, "dtype": obj.dtype.str, "shape": list(obj.shape), "data": obj.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if obj.get("__ndarray__") is True:
        try:
            dtype = np.dtype(obj["dtype"])
            shape = tuple(int(n) for n in obj["shape"])
            data = obj["data"]
        except (KeyError, TypeError, ValueError):
            raise RequestError("array: expected a map with dtype (a numpy type string), shape (a list of "
                               "integers) and data (bytes)") from None
        if dtype.hasobject or not isinstance(data, bytes):
            raise RequestError(f"array: expected raw bytes of a numeric dtype, got dtype {dtype.str}")
        if min(shape, default=1) < 0 or len(data) != dtype.itemsize * int(np.prod(shape)):
            raise RequestError(f"array: {len(data)} bytes do not hold shape {list(shape)} of {dtype.str}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    return obj


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """A msgpack frame; RequestError (not a decoder's exception) when it is not one pushcut reads."""
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except RequestError:
        raise
    except Exception:  # noqa: BLE001 - ExtraData, FormatError, StackError, UnicodeDecodeError, ...
        raise RequestError("request: not a msgpack message (truncated, nested too deeply, or a string that is "
                           "not UTF-8)") from None


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)}"
    return {dict: "a map", list: "a list", str: "a string", bytes: "bytes"}.get(type(value), type(value).__name__)


def check_request(request: Any, manifest: Mapping, instruction_problem) -> tuple[str, Any]:
    """``("obs", observation)`` or ``("check_instruction", text)`` from a decoded request;
    RequestError naming the field otherwise. ``instruction_problem(text)``: the policy's own check."""
    if not isinstance(request, dict) or len({"obs", "check_instruction"} & set(request)) != 1:
        raise RequestError(f"request: expected a map with one of 'obs' or 'check_instruction', got {_kind(request)}"
                           + (f" with keys {sorted(map(str, request))[:8]}" if isinstance(request, dict) else ""))
    if "check_instruction" in request:
        text = request["check_instruction"]
        if not isinstance(text, str):
            raise RequestError(f"check_instruction: expected a string, got {_kind(text)}")
        return "check_instruction", text
    obs = request["obs"]
    if not isinstance(obs, dict):
        raise RequestError(f"obs: expected a map of images, proprio and instruction, got {_kind(obs)}")
    images = obs.get("images")
    cameras = [c["name"] for c in manifest["cameras"]]
    if not isinstance(images, dict):
        raise RequestError(f"obs.images: expected a map of {cameras} to uint8 (H, W, 3), got {_kind(images)}")
    for cam in cameras:
        img = images.get(cam)
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
                and min(img.shape) >= 1):
            got = "nothing" if img is None else _kind(img)
            raise RequestError(f"obs.images.{cam}: expected uint8 (H, W, 3), got {got}")
    dim = manifest["proprio"]["dim"]
    proprio = obs.get("proprio")
    if not (isinstance(proprio, np.ndarray) and proprio.dtype.kind == "f" and proprio.shape == (dim,)):
        raise RequestError(f"proprio: expected float32 ({dim},), got {_kind(proprio)}")
    if not np.all(np.isfinite(proprio)):
        raise RequestError("proprio: expected finite values, got NaN or infinity")
    text = obs.get("instruction")
    if not isinstance(text, str):
        raise RequestError(f"obs.instruction: expected a string, got {_kind(text)}")
    problem = instruction_problem(text)
    if problem:
        raise RequestError(f"obs.instruction: {problem}")
    return "obs", {"images": {c: images[c] for c in cameras}, "proprio": proprio.astype(np.float32),
                   "instruction": text}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
