"""``pushcut-serve``: a policy behind a websocket, for a GPU box beside a small robot PC.

    pushcut-serve bundle=runs/export/.../bundle providers=[CUDAExecutionProvider]   # port 8000, loopback
    pushcut-serve checkpoint=runs/train/.../checkpoint device=cuda                  # torch, no export
    PUSHCUT_SERVE_TOKEN=... pushcut-serve bundle=... host=0.0.0.0                   # other machines

Protocol (websocket, binary msgpack frames; numpy arrays as maps ``{"__ndarray__": true, "dtype",
"shape", "data"}``, as openpi's ``msgpack_numpy``):

- On connect the server sends its metadata: ``{"protocol": 1, "manifest": <the bundle's
  manifest, or a checkpoint's action space, cameras, proprio and instruction>, "provider": ...}``.
  A server bound beyond loopback requires the header
  ``Authorization: Bearer <token>`` and answers 401 without it.
- ``{"obs": {"images": {camera: uint8 (H, W, 3)}, "proprio": float32 (D,), "instruction": str}}``
  -> ``{"actions": float (chunk_len, action_dim), "server_timing": {"queue_ms", "infer_ms",
  "total_ms"}}``: queue is the wait for the engine (clients are served one inference at a time),
  total is from the request's arrival to the reply.
- ``{"check_instruction": str}`` -> ``{"problem": str | None}`` (the tokenizer is the server's).
- A request the server refuses gets ``{"error": message}``, a short message naming the field and
  what was expected (``proprio: expected float32 (14,), got (3,)``); the connection stays open.
  Each request is checked before the engine sees it: a msgpack map with ``obs`` or
  ``check_instruction``; every camera of the manifest as uint8 (H, W, 3); proprio as finite floats
  of the manifest's size; an instruction the policy can read whole (the policy node's check,
  :func:`pushcut.policy.preprocess.instruction_problem`).

Websocket + msgpack rather than gRPC (LeRobot's async inference): no schema compiler, one
dependency each way, arrays travel as raw bytes, and it is what openpi's clients speak. The robot
side is ``PolicyClient`` (``policy_source: host:port`` on the policy node); ``LocalPolicy`` gives a
local engine the same interface.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from websockets.protocol import State

from pushcut.configs import hydra_entry, ranges, require

log = logging.getLogger(__name__)
PROTOCOL = 1
TOKEN_ENV = "PUSHCUT_SERVE_TOKEN"
MAX_MESSAGE = 64 * 2**20


class RequestError(ValueError):
    """A request the server refuses; the message names the field and what was expected."""


# --- wire format ----------------------------------------------------------------------------------
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


# --- the two sides ----------------------------------------------------------------------------------
class LocalPolicy:
    """A local engine with the client's interface: ``infer`` gives the chunk and its timing."""

    def __init__(self, engine, added_latency_s: float = 0.0):
        self.engine, self.added_latency_s = engine, added_latency_s
        self.manifest = engine.manifest
        self.source = f"local {engine.providers[0]}" + (f", +{added_latency_s} s" if added_latency_s else "")

    def instruction_problem(self, text: str) -> str | None:
        from pushcut.policy.preprocess import instruction_problem

        return instruction_problem(self.engine.tokenizer, text)

    def infer(self, obs: Mapping) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        chunk = self.engine.infer(obs)
        if self.added_latency_s:
            time.sleep(self.added_latency_s)
        ms = (time.perf_counter() - t0) * 1000
        return chunk, {"queue_ms": 0.0, "infer_ms": ms, "transport_ms": 0.0}

    def close(self) -> None:
        pass


class ServerLost(ConnectionError):
    """The policy server did not answer (gone, or no reply within the timeout)."""


class PolicyClient:
    """The robot side of ``pushcut-serve``: ``infer`` gives the chunk and its timing (server
    queue, inference, transport = round trip minus the server's time). A lost connection raises
    ``ServerLost``; the next call reconnects."""

    def __init__(self, address: str, token: str | None = None, timeout_s: float = 1.0):
        host, _, port = address.rpartition(":")
        require(bool(host) and port.isdigit(), f"policy server address {address!r} must be host:port")
        self.uri = f"ws://{host}:{port}"
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.timeout_s = timeout_s
        self._conn = None
        self._lock = threading.RLock()  # one request at a time; connect() runs inside a request too
        self.manifest = self.connect()["manifest"]
        self.source = f"server {address}"

    @property
    def connected(self) -> bool:
        """False from the moment the connection closes (a silent server: after ``timeout_s`` of
        unanswered pings). Read every control tick."""
        conn = self._conn
        return conn is not None and conn.state is State.OPEN

    def connect(self) -> dict:
        """(Re)connect; returns the server's metadata."""
        with self._lock:
            self._drop()
            return self._connect()

    def _connect(self) -> dict:
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self._conn = connect(self.uri, additional_headers=headers, compression=None, max_size=MAX_MESSAGE,
                                 open_timeout=self.timeout_s, proxy=None, ping_interval=self.timeout_s,
                                 ping_timeout=self.timeout_s)
            meta = unpack(self._conn.recv(timeout=self.timeout_s))
        except Exception as exc:  # refused, reset, 401, timeout: all mean no server
            self._drop()
            raise ServerLost(f"cannot reach the policy server at {self.uri}: {exc}") from exc
        if meta.get("protocol") != PROTOCOL:
            self._drop()
            raise ServerLost(f"{self.uri} speaks protocol {meta.get('protocol')}, this client {PROTOCOL}")
        return meta

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _request(self, message: dict) -> dict:
        with self._lock:
            if self._conn is None:
                self.connect()
            try:
                self._conn.send(pack(message))
                reply = unpack(self._conn.recv(timeout=self.timeout_s))
            except Exception as exc:  # closed, reset or silent: the server is lost
                self._drop()
                raise ServerLost(f"policy server {self.uri} lost: {exc or type(exc).__name__}") from exc
        if "error" in reply:
            raise ValueError(f"policy server refused the request: {reply['error']}")
        return reply

    def instruction_problem(self, text: str) -> str | None:
        return self._request({"check_instruction": text})["problem"]

    def infer(self, obs: Mapping) -> tuple[np.ndarray, dict[str, float]]:
        t0 = time.perf_counter()
        reply = self._request({"obs": dict(obs)})
        rtt = (time.perf_counter() - t0) * 1000
        actions = np.asarray(reply.get("actions"))
        space = self.manifest["action_space"]
        shape = (space["chunk_len"], space["dim"])
        if actions.shape != shape or actions.dtype.kind != "f" or not np.all(np.isfinite(actions)):
            raise ValueError(f"policy server {self.uri} sent actions of shape {actions.shape} ({actions.dtype}); "
                             f"its manifest says finite floats of shape {shape}: dropped")
        timing = dict(reply["server_timing"])
        timing["transport_ms"] = max(rtt - timing.pop("total_ms"), 0.0)
        return actions, timing

    def close(self) -> None:
        with self._lock:
            self._drop()


class CheckpointEngine:
    """A torch checkpoint behind the engine's serving interface (``infer``, ``manifest``,
    ``providers``, ``tokenizer``): a GPU box can serve a checkpoint without exporting it."""

    def __init__(self, path: str, device: str = "cpu"):
        from pushcut.policy.export import interface
        from pushcut.policy.inference import TorchPolicy

        self.policy = TorchPolicy.from_checkpoint(path, device)
        self.manifest = interface(self.policy.cfg)
        self.providers = [f"torch {device}"]
        self.tokenizer = self.policy.tokenizer

    def infer(self, obs: Mapping) -> np.ndarray:
        return self.policy.infer(obs)


class PolicyServer:
    """Serves one engine to any number of clients, one inference at a time."""

    def __init__(self, engine, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 added_latency_s: float = 0.0):
        if not is_loopback(host) and not token:
            raise ValueError(f"host {host} is reachable from other machines: set a token "
                             f"(token=... or {TOKEN_ENV}) or bind to 127.0.0.1")
        from websockets.sync.server import serve

        self.engine, self.token = engine, token
        self.policy = LocalPolicy(engine, added_latency_s)  # the inference, its timing, the instruction check
        self._engine_lock = threading.Lock()
        self.meta = pack({"protocol": PROTOCOL, "manifest": engine.manifest, "provider": engine.providers[0]})
        self.server = serve(self._handle, host, port, compression=None, max_size=MAX_MESSAGE,
                            process_request=self._authorize)
        self.port = self.server.socket.getsockname()[1]

    def _authorize(self, connection, request):
        if not self.token:
            return None
        given = request.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return None
        log.warning("refused a client without the token from %s", connection.remote_address)
        return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")

    def _handle(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed

        connection.send(self.meta)
        try:
            for message in connection:
                t0 = time.perf_counter()
                try:
                    if isinstance(message, str):
                        raise RequestError("request: expected a binary msgpack frame, got a text frame")
                    reply = self._answer(unpack(message), t0)
                except RequestError as exc:  # a bad request is refused, the server stays up
                    reply = {"error": str(exc)}
                except Exception:  # the engine failed: said in the log, not in Python's words
                    log.exception("inference failed")
                    reply = {"error": "obs: the policy could not answer this observation (see the server's log)"}
                connection.send(pack(reply))
        except ConnectionClosed:
            pass

    def _answer(self, request: Any, t0: float) -> dict:
        kind, value = check_request(request, self.engine.manifest, self.policy.instruction_problem)
        if kind == "check_instruction":
            return {"problem": self.policy.instruction_problem(value)}
        with self._engine_lock:
            t1 = time.perf_counter()
            actions, timing = self.policy.infer(value)
        return {"actions": np.asarray(actions),
                "server_timing": {"queue_ms": (t1 - t0) * 1000, "infer_ms": timing["infer_ms"],
                                  "total_ms": (time.perf_counter() - t0) * 1000}}

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> PolicyServer:
        """Serve on a daemon thread (tests, benchmarks); ``shutdown()`` stops it."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def shutdown(self) -> None:
        self.server.shutdown()


@ranges(port=">=0", added_latency_s=">=0")
@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    bundle: str | None = None
    checkpoint: str | None = None  # a torch checkpoint instead (greedy, on ``device``)
    device: str = "cpu"  # checkpoint: cpu | cuda | cuda:N
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    variant: str = "fp32"
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required beyond loopback; PUSHCUT_SERVE_TOKEN is read when unset
    added_latency_s: float = 0.0  # rehearse a slower policy: sleep this long after each inference

    def __post_init__(self) -> None:
        from pushcut.training.config import check_device, check_providers

        require(bool(self.bundle) != bool(self.checkpoint), "give exactly one of bundle= or checkpoint=")
        check_device(self.device, "device")
        check_providers(self.providers, "providers")
        require(self.variant in ("fp32", "int8", "fp16"), f"variant {self.variant!r}: fp32, int8 or fp16")
        require(self.port <= 65535, f"port {self.port} must be within 0-65535")


def _main(cfg: ServeConfig, run_dir: Path) -> None:
    if cfg.checkpoint:
        engine = CheckpointEngine(cfg.checkpoint, cfg.device)
    else:
        from pushcut.deploy.engine import Engine

        engine = Engine(cfg.bundle, providers=cfg.providers, variant=cfg.variant)
    server = PolicyServer(engine, cfg.host, cfg.port, cfg.token or os.environ.get(TOKEN_ENV), cfg.added_latency_s)
    auth = "token required" if server.token else "no token (loopback only)"
    source = cfg.bundle or cfg.checkpoint
    print(f"serving {source} on {engine.providers[0]} at ws://{cfg.host}:{server.port} ({auth})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


main = hydra_entry("serve", ServeConfig, _main)


if __name__ == "__main__":
    main()
