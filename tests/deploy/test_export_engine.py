"""Bundle round trip, rejection of bad bundles, engine = torch, torch-free import."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pushcut.deploy.bundle import BundleError, check_compatible, load_manifest
from pushcut.deploy.engine import Engine
from pushcut.policy.export import ExportConfig, ParityError, export
from pushcut.policy.inference import TorchPolicy
from pushcut.sim.registry import make_env
from tests.training.conftest import MICRO_ENV


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_bundle_round_trip(bundle):
    m = load_manifest(bundle)
    assert m["action_space"]["dim"] == 14 and m["action_space"]["chunk_len"] == 10
    assert m["cameras"] == [{"name": "head", "image_size": 32}]
    assert {"model.onnx", "model.int8.onnx", "tokenizer.json"} <= set(m["files"])  # + external weights
    assert m["parity"]["env"]["greedy_agreement"] == 1.0 and m["parity"]["env"]["max_abs_logit_diff"] < 1e-4
    assert "int8" in m["parity"] and 0 < m["parity"]["int8"]["greedy_agreement"] <= 1
    e = Engine(bundle)
    assert e.providers == ["CPUExecutionProvider"]
    env = make_env(MICRO_ENV)
    chunk = e.infer(env.reset(0).as_dict())
    assert chunk.shape == (10, 14) and np.all(np.isfinite(chunk))
    env.close()


def test_engine_equals_torch_greedy_on_twin_observations(bundle, sft_checkpoint):
    torch_policy = TorchPolicy.from_checkpoint(sft_checkpoint)
    engine = Engine(bundle)
    env = make_env(MICRO_ENV)
    obs = []
    for seed in range(4):
        o = env.reset(seed)
        obs.append(o.as_dict())
        obs.append(env.step(torch_policy.infer(o.as_dict())).obs.as_dict())
    env.close()
    np.testing.assert_array_equal(engine.infer_batch(obs), torch_policy.infer_batch(obs))


def test_twin_success_through_engine_equals_torch(bundle, sft_checkpoint):
    from pushcut.training.eval import run_episodes

    seeds = list(range(100_000, 100_006))
    a = run_episodes(TorchPolicy.from_checkpoint(sft_checkpoint), MICRO_ENV, seeds, 1, progress=False)
    b = run_episodes(Engine(bundle), MICRO_ENV, seeds, 1, progress=False)
    assert [r["success"] for r in a] == [r["success"] for r in b]
    assert [r["steps"] for r in a] == [r["steps"] for r in b]


def test_tampered_bundle_is_rejected(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 of model.onnx"):
        Engine(b)


def test_unknown_version_and_missing_files_are_rejected(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["version"] = 7
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="bundle version 7"):
        Engine(b)
    b2 = _copy(bundle, tmp_path / "x")
    (b2 / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json listed in the manifest is missing"):
        load_manifest(b2)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_bundle_that_does_not_fit_the_robot_is_rejected(bundle):
    m = load_manifest(bundle)
    check_compatible(m, 14, ["head", "left_wrist", "right_wrist"], chunk_len=10)
    with pytest.raises(BundleError, match="14-dim actions; this robot takes 7"):
        check_compatible(m, 7, ["head"])
    with pytest.raises(BundleError, match=r"needs camera\(s\) \['head'\]"):
        check_compatible(m, 14, ["cam_high", "cam_left"])


def test_int8_and_fp16_variants(bundle):
    e = Engine(bundle, variant="int8", graph_optimization="basic", intra_op_threads=1)
    env = make_env(MICRO_ENV)
    assert e.infer(env.reset(1).as_dict()).shape == (10, 14)
    env.close()
    half = Engine(bundle, variant="fp16")
    m = load_manifest(bundle)
    assert m["models"]["fp16"] == "model.fp16.onnx"
    import onnx

    onnx.checker.check_model(str(bundle / "model.fp16.onnx"), full_check=True)  # topologically sorted, valid
    if "error" not in m["parity"]["fp16"]:
        assert m["parity"]["fp16"]["greedy_agreement"] > 0.5
        env = make_env(MICRO_ENV)
        assert half.infer(env.reset(1).as_dict()).shape == (10, 14)
        env.close()
    with pytest.raises(BundleError, match="no 'bf16' model"):
        Engine(bundle, variant="bf16")


def test_sampling_decodes_within_bounds(bundle):
    e = Engine(bundle, temperature=1.6, seed=3)
    env = make_env(MICRO_ENV)
    o = env.reset(2).as_dict()
    env.close()
    a, b = e.infer(o), e.infer(o)
    assert not np.array_equal(a, b)  # sampled
    lo, hi = e.action_norm.lo, e.action_norm.hi
    assert np.all(a >= lo - 1e-9) and np.all(a <= hi + 1e-9)


def test_parity_failure_says_by_how_much(sft_checkpoint, tmp_path):
    cfg = ExportConfig(env=MICRO_ENV, checkpoint=str(sft_checkpoint), out_dir=str(tmp_path / "b"),
                       parity_atol=1e-12, parity_env_samples=2, parity_random_samples=0, int8=False)
    with pytest.raises(ParityError, match=r"max \|logit diff\| .* \(allowed 1e-12\)"):
        export(cfg)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.tmp").exists()


def test_a_corrupted_checkpoint_is_never_exported(sft_checkpoint, tmp_path):
    from pushcut.policy.checkpoint import CheckpointError

    ckpt = tmp_path / "checkpoint"
    shutil.copytree(sft_checkpoint, ckpt)
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-3] ^= 0x40  # one weight's exponent byte: the weight becomes huge, the file still parses
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match its sha256"):
        export(ExportConfig(env=MICRO_ENV, checkpoint=str(ckpt), out_dir=str(tmp_path / "b")))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        TorchPolicy.from_checkpoint(ckpt)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.tmp").exists()


def test_engine_imports_without_torch():
    code = (
        "import sys, pushcut.deploy.engine, pushcut.deploy.bundle, pushcut.deploy.policy;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
