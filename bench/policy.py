"""bench-policy: the cold start (1 demo) against 50 demos, and the forward latency per chunk."""

from __future__ import annotations

import time

import torch

from bench.common import env_int, greedy_success, percentiles, sft_checkpoint, write
from pushcut.policy.inference import TorchPolicy
from pushcut.sim.config import EnvConfig
from pushcut.sim.twin.env import TwinEnv

TASK = "click_bell"


def main() -> None:
    steps = env_int("PUSHCUT_BENCH_SFT_STEPS", 1500)
    episodes = env_int("PUSHCUT_BENCH_EVAL_SEEDS", 200)
    torch.set_num_threads(2)
    out = {"task": TASK, "sft_steps": steps, "eval_seeds": episodes}
    for n in (1, 50):
        t0 = time.perf_counter()
        ckpt = sft_checkpoint(n, steps, TASK)
        policy = TorchPolicy.from_checkpoint(ckpt)
        out[f"demos_{n}"] = {"checkpoint": str(ckpt), **greedy_success(policy, TASK, episodes),
                             "seconds": time.perf_counter() - t0}
    env = TwinEnv(EnvConfig(task=TASK))
    obs = env.reset(0).as_dict()
    env.close()
    for _ in range(5):
        policy.infer(obs)
    lat = []
    for _ in range(100):
        t0 = time.perf_counter()
        policy.infer(obs)
        lat.append(1000 * (time.perf_counter() - t0))
    out["forward_ms_per_chunk_batch1"] = percentiles(lat)
    out["paper_anchor"] = "SimpleVLA-RL: 1 demo per task gives 17.3% on LIBERO-Long (OpenVLA-OFT 7B)"
    write("policy", out)


if __name__ == "__main__":
    main()
