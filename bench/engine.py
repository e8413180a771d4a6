"""bench-engine: batch-1 chunk latency of torch eager against the ONNX engine, fp32 and int8.

Both run in this process on the same observation; the ratio is torch / engine (higher is better
for the engine). int8's success-rate cost is measured on held-out seeds beside fp32.
"""

from __future__ import annotations

import time

import torch

from bench.common import CACHE, env_int, greedy_success, percentiles, sft_checkpoint, write
from pushcut.deploy.engine import Engine
from pushcut.policy.export import ExportConfig, export
from pushcut.policy.inference import TorchPolicy
from pushcut.sim.config import EnvConfig
from pushcut.sim.twin.env import TwinEnv


def _latencies(fns: dict, n: int, block: int = 25, warm: int = 5) -> dict:
    """Batch-1 latency of each callable, measured in alternating blocks.

    This machine's speed drifts by tens of percent over minutes, so the contenders take turns
    (``block`` calls each, the first ``warm`` of a block discarded: torch's and onnxruntime's
    thread pools spin for a while after their last op and would slow the other one down).
    """
    ms: dict[str, list[float]] = {name: [] for name in fns}
    while min(len(v) for v in ms.values()) < n:
        for name, fn in fns.items():
            for i in range(block):
                t0 = time.perf_counter()
                fn()
                if i >= warm:
                    ms[name].append(1000 * (time.perf_counter() - t0))
    return {name: percentiles(v[:n]) for name, v in ms.items()}


def main() -> None:
    torch.set_num_threads(2)
    ckpt = sft_checkpoint(50, env_int("PUSHCUT_BENCH_SFT_STEPS", 1500))
    bundle = CACHE / "bundle_50demos"
    export(ExportConfig(env=EnvConfig(task="click_bell"), checkpoint=str(ckpt), out_dir=str(bundle)))
    env = TwinEnv(EnvConfig(task="click_bell"))
    obs = env.reset(0).as_dict()
    env.close()
    n = env_int("PUSHCUT_BENCH_LATENCY_N", 200)
    torch_policy = TorchPolicy.from_checkpoint(ckpt)
    fp32 = Engine(bundle, intra_op_threads=2)
    int8 = Engine(bundle, variant="int8", intra_op_threads=2)
    lat = _latencies({"torch": lambda: torch_policy.infer(obs), "fp32": lambda: fp32.infer(obs),
                      "int8": lambda: int8.infer(obs)}, n)
    out = {
        "torch_eager_ms": lat["torch"],
        "onnx_fp32_ms": lat["fp32"],
        "onnx_int8_ms": lat["int8"],
        "method": "observation -> action chunk (pre-processing, forward, decoding), batch 1, 2 threads each; "
        "alternating blocks of 25 calls, first 5 of each block discarded",
        "providers": fp32.providers,
    }
    out["speedup_fp32_p50"] = out["torch_eager_ms"]["p50"] / out["onnx_fp32_ms"]["p50"]
    out["speedup_int8_p50"] = out["torch_eager_ms"]["p50"] / out["onnx_int8_ms"]["p50"]
    episodes = env_int("PUSHCUT_BENCH_EVAL_SEEDS", 200)
    out["success_fp32"] = greedy_success(fp32, "click_bell", episodes)
    out["success_int8"] = greedy_success(int8, "click_bell", episodes)
    out["success_torch"] = greedy_success(torch_policy, "click_bell", episodes)
    write("engine", out)


if __name__ == "__main__":
    main()
