"""Overlapped (async) chunk execution: the broker's splice and the twin's, and a policy server
over loopback that answers as the local engine does."""

import dataclasses

import numpy as np
import pytest

from pushcut.deploy.broker import ActionChunkBroker
from pushcut.deploy.client import PolicyClient, ServerLost
from pushcut.deploy.engine import Engine
from pushcut.deploy.load import load_policy
from pushcut.deploy.serve import PolicyServer, ServeConfig
from pushcut.deploy.wire import pack, unpack
from pushcut.interface import Policy
from pushcut.motion import spline
from pushcut.policy.inference import TorchPolicy
from pushcut.sim.config import EnvConfig
from pushcut.sim.twin.env import TwinEnv
from tests.training.conftest import MICRO_ENV

T, D, S = 25, 14, 8  # chunk length, action dims, control ticks per policy step


def _chunks(n, seed=0):
    """Chunks of smooth random motions (constant acceleration per chunk), each a fresh draw from
    where the previous one hands over (its second-to-last waypoint): the new chunk's velocity
    differs from the old one's by one step's worth of acceleration, as two chunks from nearby
    frames can."""
    rng = np.random.default_rng(seed)
    out, q, v = [], np.zeros(D), rng.normal(0, 0.03, D)
    k = np.arange(1, T + 1)[:, None]
    for _ in range(n):
        v = v + rng.normal(0, 0.002, D)
        a = rng.normal(0, 0.002, D) - v / T  # slows down somewhat: stays within a bounded range
        out.append(q + v * k + 0.5 * a * k**2)
        q, v = out[-1][-2], v + a * (T - 2)
    return out


def _run(broker, chunks, keep_at):
    """Hand out commands; splice each next chunk when ``keep_at(broker)`` says so (None: at the
    end, as sync execution does). Returns the commands and the tick of every splice."""
    cmds, splices = [], []
    broker.set_chunk(chunks[0], current=np.zeros(D))
    for chunk in chunks[1:]:
        while True:
            keep = keep_at(broker)
            if keep is not None:
                splices.append(len(cmds) + keep)
                broker.set_chunk(chunk, keep=keep)
                break
            c = broker.next()
            if c is None:
                splices.append(len(cmds))
                broker.set_chunk(chunk)
                break
            cmds.append(c)
    while (c := broker.next()) is not None:
        cmds.append(c)
    return np.array(cmds), splices


def _lead(ticks):
    return lambda b: b.remaining - S if b.remaining == ticks + S else None


def test_async_splice_is_c1_at_every_chunk_boundary():
    chunks = _chunks(8)
    cmds, splices = _run(ActionChunkBroker(S), chunks, _lead(12))
    vel = np.diff(cmds, axis=0)
    acc = np.abs(np.diff(vel, axis=0)).max(axis=1)  # per-tick velocity change, worst joint
    # within the chunks' paths, away from the splices and from the start and stop at rest
    inside = np.delete(acc, [i - 2 + k for i in splices for k in range(3)])[2 * S : -2 * S]
    at = [acc[i - 2 : i + 1].max() for i in splices]
    # no jump: the position step at a splice is no larger than the path's own steps
    assert max(np.abs(vel[i - 1]).max() for i in splices) <= np.abs(vel).max()
    # no velocity step: at a splice the velocity changes by at most twice the most it changes
    # from one tick to the next within the chunks' own paths
    assert max(at) <= 2 * inside.max(), (max(at), inside.max())
    # ... which a splice from rest (each chunk's path with zero start velocity) does not keep
    naive = ActionChunkBroker(S)
    naive.set_chunk = lambda chunk, current=None, keep=0, b=naive: ActionChunkBroker.set_chunk(b, chunk, current, 0)
    naive_cmds, naive_splices = _run(naive, chunks, _lead(12))
    naive_acc = np.abs(np.diff(naive_cmds, n=2, axis=0)).max(axis=1)
    assert max(naive_acc[i - 2 : i + 1].max() for i in naive_splices) > 3 * inside.max()


def test_async_keeps_the_commands_already_planned_and_never_pauses():
    chunks = _chunks(5, seed=1)
    broker = ActionChunkBroker(S)
    broker.set_chunk(chunks[0], current=np.zeros(D))
    for _ in range(T * S - 20 - S):
        broker.next()
    planned = [broker.planned(k) for k in range(1, 21)]  # the 20 commands up to the takeover
    broker.set_chunk(chunks[1], keep=20)
    np.testing.assert_array_equal([broker.next() for _ in range(20)], planned)
    # the new path starts from the last kept command with its velocity, through the new waypoints
    path, _ = spline(planned[-1], chunks[1], S, broker._velocity[19])
    np.testing.assert_allclose(broker._path[20:], path)
    # the path's end is at rest, so a chunk that runs out (sync, or a late one) stops the arm smoothly
    np.testing.assert_array_equal(broker._velocity[-1], np.zeros(D))
    assert np.abs(broker._velocity[20]).max() > 0.01


def test_a_late_chunk_starts_where_the_commands_are_with_their_velocity():
    chunks = _chunks(2, seed=2)
    broker = ActionChunkBroker(S)
    broker.set_chunk(chunks[0], current=np.zeros(D))
    for _ in range(T * S - 5):
        broker.next()
    last, before = broker.last.copy(), broker._last_velocity.copy()
    broker.set_chunk(chunks[1], keep=10)  # 10 asked for, 5 left: keeps them all
    assert broker.remaining == 5 + T * S
    while broker.remaining > T * S:
        broker.next()
    after = broker.next()
    assert np.abs(after - broker._path[0]).max() < np.abs(before).max() + 1e-9
    assert not np.allclose(last, after)


def test_twin_async_execution_overlaps_and_reports_the_takeover_proprio():
    cfg = dataclasses.replace(MICRO_ENV, execution="async", lead_steps=2, max_steps=200)
    env = TwinEnv(cfg)
    followed = []
    follow = env._follow
    env._follow = lambda path: (followed.append(np.array(path)), follow(path))[1]
    env.reset(0)
    home = env.target.copy()
    steps = []
    for chunk in _chunks(4, seed=3):
        out = env.step(home + 0.3 * chunk)
        steps.append(out.steps)
        # the proprio is the target the arm will have reached when the next chunk takes over
        np.testing.assert_array_equal(out.obs.proprio, env._pending[cfg.lead_steps - 1].astype(np.float32))
        assert not out.done
    # each chunk after the first runs the previous one's lead (2 steps), then all but its last
    # 3 steps (lead + the decelerating one), so an inference covers T - 1 steps
    assert steps == [T - 3, 2 * T - 4, 3 * T - 5, 4 * T - 6]
    path = np.vstack(followed)
    acc = np.abs(np.diff(path, n=2, axis=0)).max(axis=1)
    sub = cfg.substeps
    splices = [m * (T - 1) * sub for m in (1, 2, 3)]
    inside = np.delete(acc, [i - 2 + k for i in splices for k in range(3)])[2 * sub :]
    assert max(acc[i - 2 : i + 1].max() for i in splices) <= 2 * inside.max()  # C1 at the physics rate too
    with pytest.raises(ValueError, match="twin only"):
        EnvConfig(kind="libero", task="libero_object", cameras=("agentview",), execution="async")


def test_server_over_loopback_gives_the_local_engines_actions(bundle):
    engine = Engine(bundle)
    server = PolicyServer(engine, port=0).start()
    try:
        client = load_policy(f"127.0.0.1:{server.port}")
        assert isinstance(client, PolicyClient) and isinstance(engine, Policy)
        rng = np.random.default_rng(0)
        size = engine.image_size
        for _ in range(5):
            obs = {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in engine.cameras},
                   "proprio": rng.normal(0, 0.3, D).astype(np.float32), "instruction": "click the bell"}
            np.testing.assert_array_equal(client.infer(obs), engine.infer(obs))
            timing = client.timing
            assert set(timing) == {"queue_ms", "infer_ms", "transport_ms"} and timing["infer_ms"] > 0
        assert client.instruction_problem("x" * 4000) and client.instruction_problem("click the bell") is None
        with pytest.raises(ValueError, match="refused"):  # a bad request is answered, the server stays up
            client.infer({"images": {}, "proprio": np.zeros(D, np.float32), "instruction": "x"})
        assert client.infer(obs).shape == (engine.chunk_len, D)
        # a reply that does not fit the manifest is refused where it enters, before any broker
        for bad in (np.zeros((engine.chunk_len, 3)), np.full((engine.chunk_len, D), np.nan),
                    np.zeros((engine.chunk_len, D), dtype=np.int64)):
            server.policy = type("Bad", (Policy,), {"infer": lambda self, o, bad=bad: bad,
                                                    "manifest": engine.manifest,
                                                    "instruction_problem": engine.instruction_problem})()
            with pytest.raises(ValueError, match="manifest says finite floats"):
                client.infer(obs)
        server.policy = engine
        server.shutdown()
        with pytest.raises(ServerLost):
            client.infer(obs)
        assert not client.connected
    finally:
        server.shutdown()


def test_server_serves_a_torch_checkpoint_as_the_checkpoint_acts_locally(sft_checkpoint):
    served = load_policy(sft_checkpoint)
    assert isinstance(served, TorchPolicy)
    server = PolicyServer(served, port=0).start()
    try:
        client = PolicyClient(f"127.0.0.1:{server.port}")
        local = TorchPolicy.from_checkpoint(sft_checkpoint)
        size = local.cfg.vision.image_size
        assert client.manifest["action_space"]["chunk_len"] == local.cfg.chunk_len
        assert [c["name"] for c in client.manifest["cameras"]] == list(local.cfg.cameras)
        rng = np.random.default_rng(1)
        obs = {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in local.cfg.cameras},
               "proprio": rng.normal(0, 0.3, D).astype(np.float32), "instruction": "click the bell"}
        np.testing.assert_array_equal(client.infer(obs), local.infer(obs))
    finally:
        server.shutdown()
    with pytest.raises(ValueError, match="exactly one"):
        ServeConfig(bundle="b", checkpoint="c")


def test_server_beyond_loopback_needs_a_token(bundle):
    engine = Engine(bundle)
    with pytest.raises(ValueError, match="token"):
        PolicyServer(engine, host="0.0.0.0", port=0)
    server = PolicyServer(engine, host="0.0.0.0", port=0, token="s3cret").start()
    try:
        for wrong in (None, "guess"):
            with pytest.raises(ServerLost, match="401"):
                PolicyClient(f"127.0.0.1:{server.port}", token=wrong or "")
        assert PolicyClient(f"127.0.0.1:{server.port}", token="s3cret").manifest == engine.manifest
    finally:
        server.shutdown()


def test_server_refuses_each_bad_request_with_a_message_naming_the_field(bundle):
    import msgpack
    from websockets.sync.client import connect

    engine = Engine(bundle)
    server = PolicyServer(engine, port=0).start()
    size, cams = engine.image_size, engine.cameras
    good = {"images": {c: np.zeros((size, size, 3), np.uint8) for c in cams},
            "proprio": np.zeros(D, np.float32), "instruction": "click the bell"}

    def array(**kw):
        return {"__ndarray__": True, "dtype": "<f4", "shape": [D], "data": b"\0" * 4 * D, **kw}

    frames = {  # each hostile frame, and what its reply must say
        b"\xc1": "request: not a msgpack message",
        msgpack.packb({"obs": {"proprio": b"\xff\xfe"}}, use_bin_type=False): "request: not a msgpack message",
        b"\x91" * 10_000 + b"\x00": "request: not a msgpack message",  # nested past the decoder's limit
        pack([1, 2]): "request: expected a map (an observation, or check_instruction), got a list",
        pack(b"x" + b"\0" * 10): "request: expected a map (an observation, or check_instruction), got bytes",
        pack({**good, "check_instruction": "x"}): "request: check_instruction comes alone",
        pack({"check_instruction": ["a"]}): "check_instruction: expected a string, got a list",
        pack({"obs": [1]}): "obs: expected a map of images, proprio and instruction, got a list",
        pack({"obs": {**good, "images": None}}): "images: expected a map of",
        pack({"proprio": good["proprio"], "prompt": "x"}): "images: expected a map of",
        pack({"obs": {**good, "images": {}}}): f"images.{cams[0]}: expected uint8 (H, W, 3), got nothing",
        pack({"obs": {**good, "images": {c: np.zeros((size, size), np.uint8) for c in cams}}}):
            f"images.{cams[0]}: expected uint8 (H, W, 3), got uint8 ({size}, {size})",
        pack({"obs": {**good, "proprio": np.zeros(3, np.float32)}}):
            f"proprio: expected float32 ({D},) (openpi: state), got float32 (3,)",
        pack({"obs": {**good, "proprio": [0.0] * D}}): f"proprio: expected float32 ({D},) (openpi: state), got a list",
        pack({"obs": {**good, "proprio": np.full(D, np.nan, np.float32)}}): "proprio: expected finite values",
        pack({"obs": {**good, "proprio": array(data=b"\0")}}): f"array: 1 bytes do not hold shape [{D}] of <f4",
        pack({"obs": {**good, "proprio": array(dtype="|O")}}): "array: expected raw bytes of a numeric dtype",
        pack({"obs": {**good, "proprio": array(dtype="nonsense")}}): "array: expected a map with dtype",
        pack({**good, "instruction": 7}): "instruction: expected a string (openpi: prompt), got int",
        pack({**good, "instruction": "x" * 2**20}): "instruction: instruction 'xxxx",
        pack({**good, "proprio": {b"__npgeneric__": True, b"dtype": "nonsense", b"data": 1}}):
            "numpy scalar: expected a map with dtype",
        pack({"obs": {**good, "instruction": "ring\x07"}}): "holds control characters",
    }
    try:
        with connect(f"ws://127.0.0.1:{server.port}", max_size=None) as ws:
            assert unpack(ws.recv())["protocol"] == 2
            for frame, expected in frames.items():
                ws.send(frame)
                error = ws.recv()
                assert isinstance(error, str), frame[:40]  # openpi's servers answer a failure in a text frame
                assert expected in error, (frame[:40], error)
                assert "Error" not in error and "Traceback" not in error, error  # never Python's words
            ws.send("a text frame")
            assert "expected a binary msgpack frame" in ws.recv()
            ws.send(pack({"obs": good}))  # the connection and the server are still up
            assert unpack(ws.recv())["actions"].shape == (engine.chunk_len, D)
    finally:
        server.shutdown()


def test_load_policy_knows_a_bundle_a_checkpoint_and_a_server_apart(bundle, sft_checkpoint, tmp_path):
    assert isinstance(load_policy(bundle), Engine) and isinstance(load_policy(sft_checkpoint), TorchPolicy)
    for nothing in (tmp_path, "no-such-folder"):
        with pytest.raises(ValueError, match="neither a bundle .* nor host:port"):
            load_policy(nothing)
    with pytest.raises(ServerLost, match="cannot reach"):
        load_policy("127.0.0.1:9", timeout_s=0.2)
    with pytest.raises(Exception, match="manifest.json"):  # told it is a bundle: the bundle's own error
        load_policy(sft_checkpoint, kind="bundle")
