"""The wire format of ``pushcut-serve``: openpi's, byte for byte, and the check every request passes
before a policy sees it (the protocol is in :mod:`pushcut.deploy.serve`).

Frames are msgpack; numpy arrays and scalars travel as openpi's ``msgpack_numpy`` writes them, maps
with **bytes** keys: ``{b"__ndarray__": True, b"data": raw bytes, b"dtype": "<f4", b"shape": [..]}``
and ``{b"__npgeneric__": True, b"data": value, b"dtype": "<f4"}``. The same maps with str keys
(pushcut before openpi's encoding) are read too.

An observation is a flat map in pushcut's keys (``images``: {camera: uint8 (H, W, 3)}, ``proprio``,
``instruction``) or in openpi's (``OBS_ALIASES``): ``prompt`` is the instruction, ``state`` or
``observation/state`` the proprio, and a camera's image is ``images/<camera>``,
``observation/<camera>`` or ``observation/images/<camera>``; ALOHA's camera names (``cam_high``,
``cam_left_wrist``, ``cam_right_wrist``) stand for the twin's head and wrist cameras, and a channel-
first (3, H, W) image, as openpi's ALOHA clients send, is read as (H, W, 3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from pushcut import spec

PROTOCOL = 2
TOKEN_ENV = "PUSHCUT_SERVE_TOKEN"
MAX_MESSAGE = 64 * 2**20
OBS_ALIASES = {"prompt": spec.INSTRUCTION, "state": spec.PROPRIO, "observation/state": spec.PROPRIO}
CAMERA_ALIASES = {"cam_high": spec.HEAD_CAMERA, "cam_left_wrist": spec.LEFT_WRIST_CAMERA,
                  "cam_right_wrist": spec.RIGHT_WRIST_CAMERA}
IMAGE_PREFIXES = ("observation/images/", "observation/", "images/")


class RequestError(ValueError):
    """A request the server refuses; the message names the field and what was expected."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in "VOc":
        raise TypeError(f"cannot send numpy dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def _field(obj: dict, name: str) -> Any:
    """``obj[b"name"]`` as openpi writes it, else ``obj["name"]``."""
    return obj[name.encode()] if name.encode() in obj else obj[name]


def _decode(obj: dict) -> Any:
    if obj.get(b"__ndarray__", obj.get("__ndarray__")) is True:
        try:
            dtype = np.dtype(_field(obj, "dtype"))
            shape = tuple(int(n) for n in _field(obj, "shape"))
            data = _field(obj, "data")
        except (KeyError, TypeError, ValueError):
            raise RequestError("array: expected a map with dtype (a numpy type string), shape (a list of "
                               "integers) and data (bytes)") from None
        if dtype.hasobject or not isinstance(data, bytes):
            raise RequestError(f"array: expected raw bytes of a numeric dtype, got dtype {dtype.str}")
        if min(shape, default=1) < 0 or len(data) != dtype.itemsize * int(np.prod(shape)):
            raise RequestError(f"array: {len(data)} bytes do not hold shape {list(shape)} of {dtype.str}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if obj.get(b"__npgeneric__", obj.get("__npgeneric__")) is True:
        try:
            return np.dtype(_field(obj, "dtype")).type(_field(obj, "data"))
        except (KeyError, TypeError, ValueError):
            raise RequestError("numpy scalar: expected a map with dtype (a numpy type string) and data") from None
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


def observation_fields(request: dict, cameras: list[str]) -> dict:
    """pushcut's ``images``/``proprio``/``instruction`` from a flat request in pushcut's or openpi's
    keys (``OBS_ALIASES``, ``CAMERA_ALIASES``, ``IMAGE_PREFIXES``); what is absent stays absent."""
    obs = {OBS_ALIASES.get(k, k): v for k, v in request.items() if isinstance(k, str)}
    images = obs.get(spec.IMAGES, {})
    if isinstance(images, dict):
        images = dict(images)
        for key, value in obs.items():
            prefix = next((p for p in IMAGE_PREFIXES if key.startswith(p)), None)
            if prefix:
                images.setdefault(key[len(prefix):], value)
        images = {cam: _channels_last(img) for name, img in images.items()
                  if (cam := CAMERA_ALIASES.get(name, name)) in cameras}
    if images or spec.IMAGES in obs:
        obs[spec.IMAGES] = images
    return obs


def _channels_last(img: Any) -> Any:
    if isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[0] == 3 and img.shape[2] != 3:
        return np.ascontiguousarray(img.transpose(1, 2, 0))
    return img


def check_request(request: Any, manifest: Mapping, instruction_problem) -> tuple[str, Any]:
    """``("obs", observation)`` or ``("check_instruction", text)`` from a decoded request;
    RequestError naming the field otherwise. ``instruction_problem(text)``: the policy's own check."""
    if not isinstance(request, dict):
        raise RequestError(f"request: expected a map (an observation, or check_instruction), got {_kind(request)}")
    if "check_instruction" in request:
        text = request["check_instruction"]
        if len(request) != 1:
            raise RequestError("request: check_instruction comes alone, not with an observation")
        if not isinstance(text, str):
            raise RequestError(f"check_instruction: expected a string, got {_kind(text)}")
        return "check_instruction", text
    if set(request) == {"obs"}:  # pushcut's protocol 1 wrapped the observation
        request = request["obs"]
        if not isinstance(request, dict):
            raise RequestError(f"obs: expected a map of images, proprio and instruction, got {_kind(request)}")
    cameras = [c["name"] for c in manifest["cameras"]]
    obs = observation_fields(request, cameras)
    images = obs.get(spec.IMAGES)
    if not isinstance(images, dict):
        keys = sorted(map(str, request))[:8]
        raise RequestError(f"images: expected a map of {cameras} to uint8 (H, W, 3) (or openpi's "
                           f"observation/<camera> keys), got {_kind(images) if images is not None else 'nothing'}"
                           f" in a request with keys {keys}")
    for cam in cameras:
        img = images.get(cam)
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
                and min(img.shape) >= 1):
            got = "nothing" if img is None else _kind(img)
            raise RequestError(f"images.{cam}: expected uint8 (H, W, 3), got {got}")
    dim = manifest["proprio"]["dim"]
    proprio = obs.get(spec.PROPRIO)
    if not (isinstance(proprio, np.ndarray) and proprio.dtype.kind == "f" and proprio.shape == (dim,)):
        raise RequestError(f"proprio: expected float32 ({dim},) (openpi: state), got {_kind(proprio)}")
    if not np.all(np.isfinite(proprio)):
        raise RequestError("proprio: expected finite values, got NaN or infinity")
    text = obs.get(spec.INSTRUCTION)
    if not isinstance(text, str):
        raise RequestError(f"instruction: expected a string (openpi: prompt), got {_kind(text)}")
    problem = instruction_problem(text)
    if problem:
        raise RequestError(f"instruction: {problem}")
    return "obs", {spec.IMAGES: {c: images[c] for c in cameras}, spec.PROPRIO: proprio.astype(np.float32),
                   spec.INSTRUCTION: text}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
