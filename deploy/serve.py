"""``pushcut-serve``: a policy behind a websocket, for a GPU box beside a small robot PC.

    pushcut-serve bundle=runs/export/.../bundle providers=[CUDAExecutionProvider]   # port 8000, loopback
    pushcut-serve checkpoint=runs/train/.../checkpoint device=cuda                  # torch, no export
    PUSHCUT_SERVE_TOKEN=... pushcut-serve bundle=... host=0.0.0.0                   # other machines

Protocol: openpi's (``openpi-client``'s ``WebsocketClientPolicy`` drives it as it drives an openpi
server). Websocket, binary msgpack frames, arrays as openpi's ``msgpack_numpy`` encodes them
(:mod:`pushcut.deploy.wire`):

- On connect the server sends its metadata: ``{"protocol": 2, "manifest": <the bundle's
  manifest, or a checkpoint's action space, cameras, proprio and instruction>, "provider": ...}``.
  A server bound beyond loopback requires ``Authorization: Api-Key <token>`` (openpi's) or
  ``Authorization: Bearer <token>`` and answers 401 without it. ``GET /healthz`` answers 200 ``OK``.
- An observation, a flat map in pushcut's keys (``{"images": {camera: uint8 (H, W, 3)}, "proprio":
  float32 (D,), "instruction": str}``) or openpi's (``prompt``, ``state`` or ``observation/state``,
  ``observation/<camera>``; the mapping is :data:`pushcut.deploy.wire.OBS_ALIASES`) ->
  ``{"actions": float (chunk_len, action_dim), "server_timing": {"queue_ms", "infer_ms",
  "total_ms"}}``: queue is the wait for the policy (clients are served one inference at a time),
  total is from the request's arrival to the reply.
- ``{"check_instruction": str}`` -> ``{"problem": str | None}`` (the tokenizer is the server's).
- A request the server refuses is answered, as openpi's server answers a failure, with a **text**
  frame: a short message naming the field and what was expected (``proprio: expected float32
  (14,), got (3,)``); the connection stays open. Each request is checked before the policy sees
  it: every camera of the manifest as uint8 (H, W, 3) (openpi's channel-first (3, H, W) is turned),
  proprio as finite floats of the manifest's size, an instruction the policy can read whole (the
  policy node's check, :func:`pushcut.policy.preprocess.instruction_problem`).

Websocket + msgpack rather than gRPC (LeRobot's async inference): no schema compiler, one
dependency each way, arrays travel as raw bytes, and openpi's clients speak it. The wire
format is :mod:`pushcut.deploy.wire`; the robot side is :class:`pushcut.deploy.client.PolicyClient`
(``policy_source: host:port`` on the policy node), which has the same ``Policy`` interface as a
local bundle or checkpoint.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from pushcut.configs import hydra_entry, ranges, require
from pushcut.deploy.load import load_policy
from pushcut.deploy.wire import MAX_MESSAGE, PROTOCOL, TOKEN_ENV, RequestError, check_request, is_loopback, pack, unpack
from pushcut.devices import check_device, check_providers
from pushcut.interface import Policy

log = logging.getLogger(__name__)


class PolicyServer:
    """Serves one policy to any number of clients, one inference at a time."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 added_latency_s: float = 0.0):
        if not is_loopback(host) and not token:
            raise ValueError(f"host {host} is reachable from other machines: set a token "
                             f"(token=... or {TOKEN_ENV}) or bind to 127.0.0.1")
        from websockets.sync.server import serve

        self.policy, self.token, self.added_latency_s = policy, token, added_latency_s
        self._policy_lock = threading.Lock()
        self.meta = pack({"protocol": PROTOCOL, "manifest": policy.manifest, "provider": policy.source})
        self.server = serve(self._handle, host, port, compression=None, max_size=MAX_MESSAGE,
                            process_request=self._authorize)
        self.port = self.server.socket.getsockname()[1]

    def _authorize(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        if not self.token:
            return None
        given = request.headers.get("Authorization", "").encode()
        if any(hmac.compare_digest(given, f"{scheme} {self.token}".encode()) for scheme in ("Api-Key", "Bearer")):
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
                    reply = pack(self._answer(unpack(message), t0))
                except RequestError as exc:  # a bad request is refused in a text frame, the server stays up
                    reply = str(exc)
                except Exception:  # the policy failed: said in the log, not in Python's words
                    log.exception("inference failed")
                    reply = "observation: the policy could not answer it (see the server's log)"
                connection.send(reply)
        except ConnectionClosed:
            pass

    def _answer(self, request: Any, t0: float) -> dict:
        kind, value = check_request(request, self.policy.manifest, self.policy.instruction_problem)
        if kind == "check_instruction":
            return {"problem": self.policy.instruction_problem(value)}
        with self._policy_lock:
            t1 = time.perf_counter()
            actions = self.policy.infer(value)
            if self.added_latency_s:
                time.sleep(self.added_latency_s)
            t2 = time.perf_counter()
        return {"actions": np.asarray(actions),
                "server_timing": {"queue_ms": (t1 - t0) * 1000, "infer_ms": (t2 - t1) * 1000,
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
        require(bool(self.bundle) != bool(self.checkpoint), "give exactly one of bundle= or checkpoint=")
        check_device(self.device, "device")
        check_providers(self.providers, "providers")
        require(self.variant in ("fp32", "int8", "fp16"), f"variant {self.variant!r}: fp32, int8 or fp16")
        require(self.port <= 65535, f"port {self.port} must be within 0-65535")


def _main(cfg: ServeConfig, run_dir: Path) -> None:
    source = cfg.bundle or cfg.checkpoint
    policy = load_policy(source, kind="bundle" if cfg.bundle else "checkpoint", device=cfg.device,
                         providers=cfg.providers, variant=cfg.variant, cache_dir=run_dir / "tensorrt")
    server = PolicyServer(policy, cfg.host, cfg.port, cfg.token or os.environ.get(TOKEN_ENV), cfg.added_latency_s)
    auth = "token required" if server.token else "no token (loopback only)"
    print(f"serving {source} on {policy.source} at ws://{cfg.host}:{server.port} ({auth})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


main = hydra_entry("serve", ServeConfig, _main)


if __name__ == "__main__":
    main()
