"""``PolicyClient``: the robot side of ``pushcut-serve``, behind the one ``Policy`` interface."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping

import numpy as np
from websockets.protocol import State

from pushcut.configs import require
from pushcut.deploy.wire import MAX_MESSAGE, PROTOCOL, TOKEN_ENV, pack, unpack
from pushcut.interface import Policy


class ServerLost(ConnectionError):
    """The policy server did not answer (gone, or no reply within the timeout)."""


class PolicyClient(Policy):
    """The robot side of ``pushcut-serve``: ``infer`` gives the chunk, ``timing`` its breakdown
    (server queue, inference, transport = round trip minus the server's time). A lost connection
    raises ``ServerLost``; the next call reconnects."""

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

        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
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
                frame = self._conn.recv(timeout=self.timeout_s)
                reply = frame if isinstance(frame, str) else unpack(frame)
            except Exception as exc:  # closed, reset or silent: the server is lost
                self._drop()
                raise ServerLost(f"policy server {self.uri} lost: {exc or type(exc).__name__}") from exc
        if isinstance(reply, str):  # openpi's servers answer a failure in a text frame
            raise ValueError(f"policy server refused the request: {reply}")  # noqa: TRY004 - a refusal, not a type
        return reply

    def instruction_problem(self, text: str) -> str | None:
        return self._request({"check_instruction": text})["problem"]

    def infer(self, obs: Mapping) -> np.ndarray:
        t0 = time.perf_counter()
        reply = self._request(dict(obs))
        rtt = (time.perf_counter() - t0) * 1000
        actions = np.asarray(reply.get("actions"))
        space = self.manifest["action_space"]
        shape = (space["chunk_len"], space["dim"])
        if actions.shape != shape or actions.dtype.kind != "f" or not np.all(np.isfinite(actions)):
            raise ValueError(f"policy server {self.uri} sent actions of shape {actions.shape} ({actions.dtype}); "
                             f"its manifest says finite floats of shape {shape}: dropped")
        timing = dict(reply["server_timing"])
        timing["transport_ms"] = max(rtt - timing.pop("total_ms"), 0.0)
        self.timing = timing
        return actions

    def close(self) -> None:
        with self._lock:
            self._drop()
