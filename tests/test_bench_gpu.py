"""bench-gpu's code paths on a CPU, and its skip where no GPU is present."""

import json

import pytest
import torch

import bench.common
from bench import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: bench-gpu would measure it")
def test_bench_gpu_skips_where_there_is_no_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    gpu.main([])
    assert "no CUDA GPU on this machine" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_bench_gpu_measures_every_part_on_cpu(tmp_path, monkeypatch):
    """The tiny preset on the CPU, small: rollout rates per batch, an update, both placements'
    weight sync and the iteration's shares, which add up to one."""
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    gpu.main(["--device", "cpu", "--presets", "tiny", "--batches", "1,2", "--steps", "25", "--update-chunks", "4",
              "--micro-batch", "2", "--engine-calls", "5", "--name", "gpu"])
    r = json.loads((tmp_path / "gpu.json").read_text())["presets"]["tiny"]
    assert [(x["batch"], x["pipeline"]) for x in r["rollout"]] == [(1, False), (2, False), (2, True)]
    assert all(x["env_steps"] >= x["batch"] * 25 and x["env_steps_per_s"] > 0 for x in r["rollout"])
    assert r["update"]["mode"] == "unsharded" and r["update"]["update_s"] > 0
    assert r["update"]["master_dtype"] == "float32"
    lora = r["update_lora"]  # adapters on the frozen base: far fewer parameters train, in fp32
    assert lora["mode"] == "unsharded, LoRA rank 32" and lora["master_dtype"] == "float32"
    assert 0 < lora["trained_params"] < r["update"]["trained_params"] and lora["update_s"] > 0
    assert r["weight_sync"]["colocated"]["bytes"] == 0
    assert r["weight_sync"]["disaggregated"]["bytes"] > 0
    eng = r["engine"]  # the export gated, each variant gated again on its provider, timed against torch
    assert eng["torch"]["dtype"] == "float32" and eng["torch"]["p50_ms"] > 0
    assert [(e["providers"], e["variant"]) for e in eng["engine"]] == [(["CPUExecutionProvider"], "fp32"),
                                                                       (["CPUExecutionProvider"], "fp16")]
    for e in eng["engine"]:
        assert "error" not in e and e["source"] == "CPUExecutionProvider" and e["parity"]["samples"] == 4
        assert e["p99_ms"] >= e["p50_ms"] > 0 and e["vs_torch"] > 0
    it = r["iteration"]
    assert sum(it[k] for k in ("sim", "inference", "update", "sync")) <= 1.0 + 1e-9
    assert it["update"] > 0 and it["inference"] > 0 and it["sim"] > 0
