"""Bundle round trip, rejection of bad bundles, engine = torch, torch-free import."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pushcut.deploy.bundle import BundleError, check_compatible, check_contract, load_manifest
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
    with pytest.raises(BundleError, match="tokenizer.json listed in manifest.json is missing"):
        load_manifest(b2)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_bundle_that_does_not_fit_the_robot_is_rejected(bundle):
    m = load_manifest(bundle)
    check_compatible(m, 14, ["head", "left_wrist", "right_wrist"], chunk_len=10, proprio_dim=14, n_bins=256)
    with pytest.raises(BundleError, match="14-dim actions; this robot takes 7"):
        check_compatible(m, 7, ["head"])
    with pytest.raises(BundleError, match=r"needs camera\(s\) \['head'\]"):
        check_compatible(m, 14, ["cam_high", "cam_left"])
    with pytest.raises(BundleError, match="reads 14-dim proprio; this robot gives 8"):
        check_compatible(m, 14, ["head"], proprio_dim=8)
    with pytest.raises(BundleError, match="chunk length 10; this robot expects 8"):
        check_compatible(m, 14, ["head"], chunk_len=8)
    with pytest.raises(BundleError, match="decodes 256 bins; this robot expects 128"):
        check_compatible(m, 14, ["head"], n_bins=128)


def test_the_bundle_carries_the_action_contract_of_the_env_it_was_trained_on(bundle, sft_checkpoint):
    """Written from the checkpoint's own run config (the export's env= is only the fallback), read
    by the robot before it drives anything; each contradiction refused with the reason."""
    m = load_manifest(bundle)
    c = m["action_contract"]
    assert c == {"robot": "piper_dual", "task": "click_bell", "action_hz": 25, "chunk_len": 10, "chunk_s": 0.4,
                 "frame_size": [32, 32],
                 "speed_percent": 100, "joint_speed_rad_s": 3.0,
                 "gripper": {"action": [0.0, 1.0], "meaning": "0 closed, 1 open", "range_m": [0.0, 0.07]}}
    assert TorchPolicy.from_checkpoint(sft_checkpoint).manifest["action_contract"] == c  # served checkpoints too
    assert check_contract(m, 200) == c and check_contract(m, 50, speed_percent=100) == c
    with pytest.raises(BundleError, match="bundle acts at 25 Hz .*at 60 Hz does not hold a whole number"):
        check_contract(m, 60)
    with pytest.raises(BundleError, match=r"arms set to 50% speed; .* at 100% \(3.00 rad/s\), so its chunks "
                                          r"would run late: run the arms at 100%, train at the speed wanted "
                                          r"\(env.speed_percent=50\)"):
        check_contract(m, 200, speed_percent=50)
    assert check_contract(m, 200, speed_percent=10, rehearsal=True) == c  # a first motion at low speed
    with pytest.raises(BundleError, match="arms set to 50% speed.*or rehearse at a lower speed"):
        check_contract(m, 200, speed_percent=50)
    low = {**m, "action_contract": {**c, "speed_percent": 50, "joint_speed_rad_s": 1.5}}
    with pytest.raises(BundleError, match="would run faster than it was trained to expect"):
        check_contract(low, 200, speed_percent=100, rehearsal=True)  # a rehearsal is only ever slower
    libero = {**m, "action_contract": {**c, "robot": "libero_panda", "task": "libero_object", "action_hz": 20}}
    with pytest.raises(BundleError, match=r"bundle drives libero_panda \(trained on libero_object\); this robot "
                                          "is piper_dual"):
        check_contract(libero, 200)
    old = {k: v for k, v in m.items() if k != "action_contract"}
    with pytest.raises(BundleError, match="carries no action contract .* re-export it: pushcut-export checkpoint="):
        check_contract(old, 200)


def _edit_manifest(b, edit, resign=False):
    from pushcut.artefacts import signature

    m = json.loads((b / "manifest.json").read_text())
    edit(m)
    if resign:
        m["signature"] = signature(m)
    (b / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit", [
    lambda m: m["norm_stats"]["action"]["max"].__setitem__(0, m["norm_stats"]["action"]["max"][0] + 0.8),
    lambda m: m["cameras"][0].__setitem__("name", "left_wrist"),
    lambda m: m["models"].__setitem__("fp32", "model.int8.onnx"),
    lambda m: m["action_space"].__setitem__("chunk_len", 5),
    lambda m: m["files"].pop("tokenizer.json"),
], ids=["norm_stats", "camera_name", "fp32_entry", "chunk_len", "file_list"])
def test_an_edited_manifest_is_refused(bundle, tmp_path, edit):
    b = _copy(bundle, tmp_path)
    _edit_manifest(b, edit)
    with pytest.raises(BundleError, match="edited after export"):
        Engine(b)
    with pytest.raises(BundleError, match="edited after export"):
        load_manifest(b, verify=False)  # the signature is checked even where file hashes are skipped


def test_unlisted_files_and_a_resigned_inconsistent_manifest_are_refused(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    (b / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match=r"\['notes.txt'\] not listed"):
        Engine(b)
    b = _copy(bundle, tmp_path / "x")  # the external weights dropped from the list (and re-signed), then corrupted
    assert "model.onnx.data" in load_manifest(b)["files"]
    _edit_manifest(b, lambda m: m["files"].pop("model.onnx.data"), resign=True)
    (b / "model.onnx.data").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match=r"\['model.onnx.data'\] not listed"):
        Engine(b)
    # consistent signature, model and manifest disagree: refused at load, naming both, not at inference
    b = _copy(bundle, tmp_path / "y")
    _edit_manifest(b, lambda m: m["action_space"].__setitem__("n_bins", 128), resign=True)
    with pytest.raises(BundleError, match=r"model.onnx has logits of shape \[140, 256\]; the manifest says \[140, 128"):
        Engine(b)


def test_eval_and_export_check_the_env_before_the_first_step(bundle, sft_checkpoint, tmp_path):
    from pushcut.sim.config import EnvConfig
    from pushcut.training.config import EvalConfig
    from pushcut.training.eval import evaluate

    libero = EnvConfig(kind="libero", task="libero_object", cameras=("agentview",))
    with pytest.raises(BundleError, match="bundle outputs 14-dim actions; the libero env .* takes 7"):
        evaluate(EvalConfig(env=libero, bundle=str(bundle)), tmp_path / "e1", progress=False)
    with pytest.raises(ValueError, match=r"checkpoint .*: action_dim 14 does not match the libero env's 7"):
        evaluate(EvalConfig(env=libero, checkpoint=str(sft_checkpoint)), tmp_path / "e2", progress=False)
    wrist = EnvConfig(task="click_bell", cameras=("left_wrist",))
    with pytest.raises(BundleError, match=r"needs camera\(s\) \['head'\]; the twin env"):
        evaluate(EvalConfig(env=wrist, bundle=str(bundle)), tmp_path / "e3", progress=False)
    with pytest.raises(ValueError, match=r"camera\(s\) \['head'\] are not rendered"):
        export(ExportConfig(env=wrist, checkpoint=str(sft_checkpoint), out_dir=str(tmp_path / "b")))
    assert not any((tmp_path / d).exists() for d in ("e1", "e2", "e3", "b", "b.tmp"))


def test_a_transfer_suite_reports_each_perturbation_on_the_same_seeds(bundle, tmp_path):
    """pushcut-eval suite=transfer: one entry per setting (the nominal twin first), each with its
    Wilson interval and the share of the nominal success it keeps; unknown suites and LIBERO refused."""
    import json as _json

    from pushcut.sim.config import EnvConfig
    from pushcut.training.config import SUITES, EvalConfig
    from pushcut.training.eval import evaluate

    out = evaluate(EvalConfig(env=MICRO_ENV, bundle=str(bundle), episodes=2, num_envs=1, suite="transfer"),
                   tmp_path / "e", progress=False)
    settings = out["settings"]
    assert list(settings) == list(SUITES["transfer"]) and next(iter(settings)) == "nominal"
    for e in settings.values():
        assert e["episodes"] == 2 and 0 <= e["ci95"][0] <= e["success_rate"] <= e["ci95"][1] <= 1
        assert e["kept_of_nominal"] is None or e["kept_of_nominal"] == e["success_rate"] / out["success_rate"]
    assert _json.loads((tmp_path / "e" / "eval.json").read_text())["suite"] == "transfer"
    with pytest.raises(ValueError, match="suite 'nope': known suites"):
        EvalConfig(env=MICRO_ENV, bundle=str(bundle), suite="nope")
    with pytest.raises(ValueError, match="perturbs the twin, not LIBERO"):
        EvalConfig(env=EnvConfig(kind="libero", task="libero_object", cameras=("agentview",)), bundle=str(bundle),
                   suite="transfer")


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
        "import sys, pushcut.deploy.engine, pushcut.deploy.bundle, pushcut.deploy.broker;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_engine_refuses_non_finite_inputs_and_logits(bundle, tmp_path):
    e = Engine(bundle)
    env = make_env(MICRO_ENV)
    obs = env.reset(1).as_dict()
    env.close()
    bad = {**obs, "proprio": np.full_like(obs["proprio"], np.nan)}
    with pytest.raises(ValueError, match="proprio is not finite"):
        e.infer(bad)
    e.session = type("NaNSession", (), {"run": lambda self, names, feeds: [np.full((1, 140, 256), np.nan)]})()
    with pytest.raises(ValueError, match="non-finite logits"):
        e.infer(obs)


def test_the_parity_gate_compares_with_the_checkpoint_reloaded_from_disk(sft_checkpoint, tmp_path, monkeypatch):
    import torch

    from pushcut.policy import export as export_module

    real = export_module._export_onnx

    def exporter_that_alters_the_model(model, example, path, cfg):  # e.g. a tracing pass that mutates a weight
        with torch.no_grad():
            model.lm_head.weight.add_(0.05)
        return real(model, example, path, cfg)

    monkeypatch.setattr(export_module, "_export_onnx", exporter_that_alters_the_model)
    cfg = ExportConfig(env=MICRO_ENV, checkpoint=str(sft_checkpoint), out_dir=str(tmp_path / "b"),
                       parity_env_samples=2, parity_random_samples=2, int8=False, fp16=False)
    with pytest.raises(ParityError, match="export parity failed"):
        export(cfg)
    assert not (tmp_path / "b").exists()


def test_the_engine_gates_each_variant_on_the_provider_it_runs_on(bundle, tmp_path):
    """The bundle carries its parity samples (hashed like every file); the engine runs them on the
    provider it got before it serves: fp32 within the export's atol with every greedy bin equal,
    fp16 within FP16_GATE, int8 reported only; a variant outside its gate is refused, naming the
    provider and both figures; a bundle from before parity samples still runs on CPU."""
    from pushcut.policy.export import FP16_GATE

    m = load_manifest(bundle)
    assert "parity.npz" in m["files"]
    fp32 = Engine(bundle).parity
    assert fp32["provider"] == "CPUExecutionProvider"
    assert fp32["samples"] == sum(m["parity"][k]["samples"] for k in ("env", "random") if m["parity"][k])
    assert fp32["max_abs_logit_diff"] < 1e-4 and fp32["greedy_agreement"] == 1.0 and fp32["gate"]["atol"] == 1e-4
    half = Engine(bundle, variant="fp16").parity
    assert half["gate"] == FP16_GATE and 0 < half["max_abs_logit_diff"] <= FP16_GATE["atol"]
    assert Engine(bundle, variant="int8").parity["gate"] is None
    strict = _copy(bundle, tmp_path)
    _edit_manifest(strict, lambda m: m["parity"]["gate"]["fp16"].__setitem__("atol", 1e-9), resign=True)
    with pytest.raises(BundleError, match=r"fp16 model on CPUExecutionProvider fails the parity gate: max \|logit "
                                          r"diff\| .* \(allowed 1e-09\)"):
        Engine(strict, variant="fp16")
    Engine(strict)  # fp32 keeps its own gate
    from tests.deploy.test_record_versions import FIXTURES

    assert Engine(FIXTURES / "bundle_v1_29e828d").parity is None


def test_gpu_provider_options_and_a_cpu_build_asked_for_them(bundle, tmp_path, caplog):
    """TensorRT caches its engines in the caller's folder (created; never the bundle) and builds
    fp16 kernels for the fp16 variant only; CUDA runs fp32 without TF32. On this CPU-only build the
    GPU providers fall back to CPU with the reason, and asking for GPU providers alone is refused
    with it."""
    from pushcut.deploy.engine import GPU_PROVIDERS, provider_options

    trt, cuda, cpu = provider_options(GPU_PROVIDERS, "fp16", tmp_path / "run" / "tensorrt", 1)
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "run" / "tensorrt")
    assert (tmp_path / "run" / "tensorrt").is_dir() and trt["trt_fp16_enable"] and trt["device_id"] == 1
    assert cuda == {"device_id": 1, "use_tf32": 0} and cpu == {}
    assert provider_options(GPU_PROVIDERS[:1], "fp32", tmp_path, 0)[0]["trt_fp16_enable"] is False
    with caplog.at_level("WARNING", logger="pushcut.deploy.engine"):
        e = Engine(bundle, providers=GPU_PROVIDERS, cache_dir=tmp_path / "c")
    assert e.source == "CPUExecutionProvider"
    assert "asked for TensorrtExecutionProvider, onnxruntime runs on CPUExecutionProvider" in caplog.text
    assert "this is the CPU build of onnxruntime" in caplog.text
    with pytest.raises(BundleError, match=r"none of the providers \['CUDAExecutionProvider'\].*CPU build"):
        Engine(bundle, providers=["CUDAExecutionProvider"])
