"""openpi's own client (``openpi-client`` from PyPI, in an environment of its own: it pins numpy < 2)
drives pushcut-serve as it drives an openpi server: metadata, inference in openpi's keys, its
``ActionChunkBroker``, the Api-Key header, errors in text frames, and ``GET /healthz``."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pushcut.deploy.engine import Engine
from pushcut.deploy.serve import PolicyServer

ROOT = Path(__file__).resolve().parents[2]
OPENPI_CLIENT = "openpi-client==0.1.2"
PACKAGES = [OPENPI_CLIENT, "typing_extensions"]  # it imports typing_extensions without requiring it
CLIENT = r"""
import json, sys
import numpy as np
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

port, token, obs_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = np.load(obs_file)
policy = WebsocketClientPolicy("127.0.0.1", port, api_key=token)
meta = policy.get_server_metadata()
cams = [c["name"] for c in meta["manifest"]["cameras"]]
obs = {**{f"observation/{c}": data[c] for c in cams}, "observation/state": data["state"],
       "prompt": "click the bell"}
aloha = {"head": "cam_high", "left_wrist": "cam_left_wrist", "right_wrist": "cam_right_wrist"}
layouts = [  # openpi's LIBERO-style keys, ALOHA's (channel-first images), pushcut's own
    obs,
    {"images": {aloha.get(c, c): data[c].transpose(2, 0, 1) for c in cams}, "state": data["state"],
     "prompt": "click the bell"},
    {"images": {c: data[c] for c in cams}, "proprio": data["state"], "instruction": "click the bell"},
]
replies = [policy.infer(o)["actions"].tolist() for o in layouts]
reply = policy.infer(obs)
chunk_len = meta["manifest"]["action_space"]["chunk_len"]
broker = ActionChunkBroker(policy, action_horizon=chunk_len)
steps = [broker.infer(obs)["actions"].tolist() for _ in range(chunk_len)]
try:
    policy.infer({**obs, "observation/state": data["state"][:3]})
    refused = None
except RuntimeError as exc:
    refused = str(exc)
print(json.dumps({"protocol": meta["protocol"], "actions": reply["actions"].tolist(), "layouts": replies,
                  "dtype": str(reply["actions"].dtype), "timing": sorted(reply["server_timing"]),
                  "broker": steps, "refused": refused}))
"""


@pytest.fixture(scope="session")
def openpi_python() -> str:
    """A virtual environment with openpi-client and its own pins, made once under .cache/."""
    env = ROOT / ".cache" / OPENPI_CLIENT.replace("==", "-")
    python = env / "bin" / "python"
    ready = env / "ready"
    if not ready.exists() or ready.read_text() != " ".join(PACKAGES):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        ready.write_text(" ".join(PACKAGES))
    return str(python)


def _client(python: str, port: int, token: str, obs_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-c", CLIENT, str(port), token, str(obs_file)], check=False, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})


def test_openpi_client_drives_pushcut_serve(bundle, openpi_python, tmp_path):
    engine = Engine(bundle)
    server = PolicyServer(engine, port=0, token="s3cret").start()
    rng = np.random.default_rng(3)
    size = engine.image_size
    images = {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in engine.cameras}
    state = rng.normal(0, 0.3, engine.manifest["proprio"]["dim"]).astype(np.float32)
    np.savez(tmp_path / "obs.npz", state=state, **images)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b"OK\n"
        out = _client(openpi_python, server.port, "s3cret", tmp_path / "obs.npz")
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.splitlines()[-1])
        refused = _client(openpi_python, server.port, "guess", tmp_path / "obs.npz")
    finally:
        server.shutdown()
    expected = engine.infer({"images": images, "proprio": state, "instruction": "click the bell"})
    assert got["protocol"] == 2 and got["dtype"] == str(expected.dtype)
    np.testing.assert_array_equal(np.array(got["actions"]), expected)  # openpi's keys, the engine's answer
    for layout in got["layouts"]:
        np.testing.assert_array_equal(np.array(layout), expected)
    assert got["timing"] == ["infer_ms", "queue_ms", "total_ms"]
    np.testing.assert_array_equal(np.array(got["broker"]), expected)  # one action a step, one inference a chunk
    assert "proprio: expected float32" in got["refused"] and "got float32 (3,)" in got["refused"]
    assert refused.returncode != 0 and "401" in refused.stderr  # a wrong Api-Key is refused


def test_openpi_encoding_round_trips_arrays_and_numpy_scalars():
    """pushcut's frames are openpi's msgpack_numpy frames: bytes keys, shape as a list, numpy scalars
    as __npgeneric__; pushcut's older str-keyed arrays are still read."""
    import msgpack

    from pushcut.deploy.wire import pack, unpack

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = msgpack.unpackb(pack({"a": a, "s": np.float32(2.5)}), raw=False)
    assert raw["a"][b"__ndarray__"] is True and raw["a"][b"shape"] == [2, 3] and raw["a"][b"dtype"] == "<f4"
    assert raw["s"] == {b"__npgeneric__": True, b"data": 2.5, b"dtype": "<f4"}
    back = unpack(pack({"a": a, "s": np.float32(2.5)}))
    np.testing.assert_array_equal(back["a"], a)
    assert back["s"] == 2.5 and isinstance(back["s"], np.float32)
    old = msgpack.packb({"__ndarray__": True, "dtype": "<f4", "shape": [2, 3], "data": a.tobytes()})
    np.testing.assert_array_equal(unpack(old), a)
