"""bench-gpu: GRPO's parts at real size on one GPU, for the tiny and the 7B presets (random weights).

    make bench-gpu                    # one CUDA GPU; skips, saying so, where there is none
    python -m bench.gpu --device cpu --presets tiny --batches 2 --steps 10   # the code paths on a CPU

For each preset:
- rollout: env steps/s on the twin (click_bell, images at the policy's size) with inference on the
  device in ``policy.dtype``, one worker with ``batch`` envs stepping in parallel processes and one
  batched forward pass per step, for each batch size, and the largest again pipelined (half the
  envs step while the other half's pass runs); with the shares of simulation and inference;
- update: time and peak device memory of one GRPO update on a mini-batch of ``--update-chunks``
  chunks in forward/backward passes of ``--micro-batch`` (gradients summed), activation
  checkpointing on; unsharded when its states fit (``check_learner_fits``), else FSDP on one rank
  with shards, gradients and AdamW state in host memory (``cpu_offload``), as the full 7B needs on
  one GPU; and the same with LoRA adapters of rank ``--lora`` (``update_lora``), unsharded;
- weight sync: colocated moves nothing; disaggregated broadcasts the full weights in the workers'
  dtype to one worker process (gloo over the host: NCCL cannot put two ranks on one GPU);
- one iteration's shares: the recipe's batch (8 groups x 8 samples, ``--horizon`` control steps
  each) at the largest batch's rollout rate, its chunks at the measured update rate, one sync;
- engine (the presets in ``--engine-presets``): the preset exported (random weights, fp32 and fp16
  models), then chunk latency at batch 1 (p50/p99 of ``--engine-calls``) on each provider set,
  CUDA and TensorRT+CUDA on a GPU, CPU on a CPU, each variant after its parity gate, against torch
  in ``policy.dtype`` (bf16 where the preset says so) on the same device and observation.

Writes ``bench/results/gpu.json`` (``--name`` to change).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import tempfile
import time

import numpy as np
import torch

from bench.common import percentiles, write
from pushcut.configs import compose, from_hydra
from pushcut.devices import torch_dtype
from pushcut.policy.config import PolicyConfig
from pushcut.sim.config import EnvConfig
from pushcut.training.learner import GIB


def policy_preset(name: str) -> PolicyConfig:
    from pushcut.training.config import TrainConfig

    return from_hydra(TrainConfig, compose("train", [f"policy={name}", "init_checkpoint=none"])).policy


def robot_stats(env: EnvConfig) -> dict:
    from pushcut.sim.registry import robot_bounds

    return {k: {"min": lo, "max": hi} for k, (lo, hi) in robot_bounds(env).items()}


def env_for(pcfg: PolicyConfig) -> EnvConfig:
    s = pcfg.vision.image_size
    return EnvConfig(task="click_bell", image_size=(s, s))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None


def rollout_rate(pcfg: PolicyConfig, device: str, batch: int, steps: int, pipeline: bool = False) -> dict:
    """Env steps/s of one worker with ``batch`` envs in processes and its policy on ``device``
    (``pipeline``: half the envs step while the other half's forward pass runs)."""
    from pushcut.policy.preprocess import ByteTokenizer
    from pushcut.training.rollout import Job, RolloutWorker

    env = env_for(pcfg)
    worker = RolloutWorker(env, pcfg, robot_stats(env), ByteTokenizer(max_len=pcfg.max_prompt_len).to_json(),
                           n_envs=batch, threads=4, device=device, env_processes=True, pipeline=pipeline)
    try:
        jobs = [Job(0, seed, 0, seed) for seed in range(batch)]
        worker.rollout(jobs, 1.6, max_steps=pcfg.chunk_len)  # warm-up: kernels, allocator, env processes
        worker.take_timing()
        _sync(device)
        t0 = time.perf_counter()
        worker.rollout(jobs, 1.6, max_steps=steps)
        _sync(device)
        wall = time.perf_counter() - t0
        t = worker.take_timing()
    finally:
        worker.close()
    return {"batch": batch, "pipeline": pipeline, "env_steps": t["env_steps"], "wall_s": wall,
            "env_steps_per_s": t["env_steps"] / wall,
            "sim_share": t["sim_s"] / wall, "inference_share": t["inference_s"] / wall}


def _fake_batch(policy, env: EnvConfig, n: int, seed: int = 0) -> dict:
    """``n`` chunks of random observations (export's parity inputs) with random bins, log-probs at
    the uniform distribution and advantages of +-1."""

    from pushcut.policy.export import parity_observations

    pcfg = policy.cfg
    rng = np.random.default_rng(seed)
    a = pcfg.n_action_tokens
    return {"obs": parity_observations(policy, env, 0, n, seed), "bins": list(rng.integers(0, pcfg.n_bins, (n, a))),
            "logp": list(np.full((n, a), -np.log(pcfg.n_bins), dtype=np.float32)),
            "mask": list(np.ones((n, a), dtype=bool)), "adv": list(rng.choice([-1.0, 1.0], n)),
            "traj_tokens": [a] * n, "traj": list(range(n))}


def update_cost(pcfg: PolicyConfig, device: str, chunks: int, micro: int) -> dict:
    """Seconds and peak memory of one GRPO update (one optimiser step) on ``chunks`` chunks."""
    import torch.distributed as dist

    from pushcut.policy.inference import TorchPolicy
    from pushcut.policy.lora import add_adapters, optimised_parameters
    from pushcut.policy.modeling import VLAPolicy
    from pushcut.policy.preprocess import ByteTokenizer
    from pushcut.training import grpo
    from pushcut.training.config import LearnerConfig, RolloutConfig, TrainConfig
    from pushcut.training.learner import check_learner_fits, checkpoint_activations, shard

    learner = LearnerConfig(device=device, micro_batch=micro, activation_checkpointing=True)
    cfg = TrainConfig(env=env_for(pcfg), policy=pcfg, mini_batches=1, learner=learner, rollout=RolloutConfig())
    dev = torch.device(device)
    try:
        check_learner_fits(cfg, dev, world=1)
        mode = "unsharded"
    except MemoryError:
        cfg = dataclasses.replace(cfg, learner=dataclasses.replace(learner, fsdp=True, cpu_offload=True))
        check_learner_fits(cfg, dev, world=1)
        mode = "fsdp, cpu_offload (1 rank)"
    _peak_reset(device)
    with torch.device(device):
        model = VLAPolicy(pcfg)  # fp32 master weights
    if pcfg.lora.rank:  # the base frozen in policy.dtype, adapters and trainable modules in fp32
        add_adapters(model, pcfg.lora, frozen_dtype=pcfg.dtype)
    checkpoint_activations(model)
    if cfg.learner.fsdp:
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29655")
            dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
        shard(model, device, cpu_offload=True)
    policy = TorchPolicy(model, robot_stats(cfg.env), ByteTokenizer(max_len=pcfg.max_prompt_len), device=device)
    opt = torch.optim.AdamW(optimised_parameters(model), lr=1e-6,
                            fused=device == "cuda" and not cfg.learner.cpu_offload)
    batch = _fake_batch(policy, cfg.env, chunks)
    times = []
    for _ in range(2):  # the first allocates AdamW's state and warms the kernels
        _sync(device)
        t0 = time.perf_counter()
        grpo.update(model, None, opt, policy, batch, chunks, cfg, torch.Generator().manual_seed(0))
        _sync(device)
        times.append(time.perf_counter() - t0)
    trained = [p for p in model.parameters() if p.requires_grad]
    out = {"mode": mode + (f", LoRA rank {pcfg.lora.rank}" if pcfg.lora.rank else ""), "chunks": chunks,
           "micro_batch": micro, "activation_checkpointing": True, "first_s": times[0], "update_s": times[1],
           "peak_gib": _peak_gib(device), "trained_params": sum(p.numel() for p in trained),
           "master_dtype": str(trained[0].dtype).removeprefix("torch.")}
    del model, opt, policy
    _peak_reset(device)
    return out


def _receive(port: int, pcfg: PolicyConfig, device: str, n: int) -> None:
    from pushcut.policy.modeling import VLAPolicy
    from pushcut.training.weight_sync import WeightReceiver

    with torch.device(device):
        model = VLAPolicy(pcfg).to(torch_dtype(pcfg.dtype))
    receiver = WeightReceiver("127.0.0.1", port, 1, 2, "gloo", device)
    for _ in range(n):
        receiver.receive(model)


def sync_cost(pcfg: PolicyConfig, device: str, repeats: int = 2) -> dict:
    """Seconds to send the full weights to one disaggregated worker (the last of ``repeats``)."""
    import torch.multiprocessing as mp

    from pushcut.policy.modeling import VLAPolicy
    from pushcut.training.weight_sync import WeightSender

    with torch.device(device):
        weights = VLAPolicy(pcfg).state_dict()
    sender = WeightSender(1, "gloo", torch_dtype(pcfg.dtype), device, host="127.0.0.1")
    proc = mp.get_context("spawn").Process(target=_receive, args=(sender.port, pcfg, device, repeats))
    proc.start()
    sender.connect()
    times, sent = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        sent = sender.send(weights)
        times.append(time.perf_counter() - t0)
    proc.join(timeout=600)
    del weights
    _peak_reset(device)
    return {"colocated": {"bytes": 0, "sync_s": 0.0, "note": "the learner's model rolls out: nothing is copied"},
            "disaggregated": {"bytes": sent, "sync_s": times[-1], "backend": "gloo", "dtype": pcfg.dtype,
                              "gb_per_s": sent / times[-1] / 1e9}}


def iteration_shares(pcfg: PolicyConfig, rollout: dict, update: dict, sync_s: float, horizon: int) -> dict:
    """One recipe iteration (8 groups x 8 samples of ``horizon`` control steps) from the parts."""
    episodes = 64
    env_steps = episodes * horizon
    chunks = episodes * -(-horizon // pcfg.chunk_len)
    rollout_s = env_steps / rollout["env_steps_per_s"]
    update_s = update["update_s"] * chunks / update["chunks"]
    total = rollout_s + update_s + sync_s
    return {"episodes": episodes, "env_steps": env_steps, "chunks": chunks, "iteration_s": total,
            "sim": rollout_s * rollout["sim_share"] / total,
            "inference": rollout_s * rollout["inference_share"] / total,
            "update": update_s / total, "sync": sync_s / total}


def _latency_ms(fn, calls: int, device: str) -> dict:
    fn()  # warm-up: kernels, TensorRT's engine build (cached), allocator
    times = []
    for _ in range(calls):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    p = percentiles(times)
    return {"calls": calls, "p50_ms": p["p50"], "p99_ms": p["p99"]}


def engine_latency(pcfg: PolicyConfig, device: str, calls: int, workdir) -> dict:
    """Batch-1 chunk latency of the exported preset on each provider set and variant, against torch
    in ``policy.dtype`` on ``device``; every engine is parity-gated as it loads (its report kept)."""
    from pathlib import Path

    from pushcut.deploy.engine import Engine
    from pushcut.policy import checkpoint
    from pushcut.policy.export import ExportConfig, export
    from pushcut.policy.inference import TorchPolicy
    from pushcut.policy.modeling import VLAPolicy
    from pushcut.policy.preprocess import ByteTokenizer
    from pushcut.sim.registry import make_env

    workdir, env = Path(workdir), env_for(pcfg)
    model = VLAPolicy(pcfg)
    stats, tok = robot_stats(env), ByteTokenizer(max_len=pcfg.max_prompt_len)
    ckpt = checkpoint.save(workdir / "checkpoint", model, stats, tok)
    t0 = time.perf_counter()
    bundle = export(ExportConfig(checkpoint=str(ckpt), env=env, out_dir=str(workdir / "bundle"), int8=False,
                                 parity_env_samples=2, parity_random_samples=2), progress=False)
    out = {"export_s": time.perf_counter() - t0}
    sim = make_env(env)
    obs = sim.reset(0).as_dict()
    sim.close()
    torch_policy = TorchPolicy(model.to(torch_dtype(pcfg.dtype)) if device == "cuda" else model, stats, tok,
                               device=device)
    out["torch"] = {"dtype": pcfg.dtype, **_latency_ms(lambda: torch_policy.infer(obs), calls, device)}
    sets = ([["CUDAExecutionProvider"], ["TensorrtExecutionProvider", "CUDAExecutionProvider"]]
            if device == "cuda" else [["CPUExecutionProvider"]])
    out["engine"] = []
    for providers in sets:
        for variant in ("fp32", "fp16"):
            row = {"providers": providers, "variant": variant}
            try:
                t0 = time.perf_counter()
                engine = Engine(bundle, providers=providers, variant=variant, cache_dir=workdir / "tensorrt")
                row.update(source=engine.source, load_s=time.perf_counter() - t0, parity=engine.parity)
                if engine.source == providers[0]:
                    row.update(_latency_ms(lambda e=engine: e.infer(obs), calls, device))
                    row["vs_torch"] = row["p50_ms"] / out["torch"]["p50_ms"]
                del engine
            except Exception as exc:  # noqa: BLE001 - a provider that cannot run here: reported, the others go on
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            out["engine"].append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--presets", default="tiny,openvla_oft_7b")
    p.add_argument("--batches", default="8,32,64")
    p.add_argument("--steps", type=int, default=100, help="control steps per rollout episode measured")
    p.add_argument("--update-chunks", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--horizon", type=int, default=100, help="control steps per episode of the iteration's estimate")
    p.add_argument("--lora", type=int, default=32, help="also one update with LoRA adapters of this rank (0: not)")
    p.add_argument("--engine-presets", default="tiny", help="presets exported and timed on the engine ('' : none)")
    p.add_argument("--engine-calls", type=int, default=200)
    p.add_argument("--name", default="gpu")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU on this machine (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a GPU node, or try the code paths here with --device cpu --presets tiny.")
        return
    os.environ.setdefault("MUJOCO_GL", "egl")
    out: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                 "torch": torch.__version__, "presets": {}}
    for name in args.presets.split(","):
        pcfg = policy_preset(name)
        t0 = time.perf_counter()
        r = {"dtype": pcfg.dtype, "image_size": pcfg.vision.image_size,
             "rollout": [rollout_rate(pcfg, args.device, int(b), args.steps) for b in args.batches.split(",")]}
        r["update"] = update_cost(pcfg, args.device, args.update_chunks, args.micro_batch)
        if args.lora:  # the one-GPU path of the 7B: adapters on a frozen bf16 base
            lora = dataclasses.replace(pcfg, lora=dataclasses.replace(pcfg.lora, rank=args.lora))
            r["update_lora"] = update_cost(lora, args.device, args.update_chunks, args.micro_batch)
        r["weight_sync"] = sync_cost(pcfg, args.device)
        largest = max(int(b) for b in args.batches.split(","))
        r["rollout"].append(rollout_rate(pcfg, args.device, largest, args.steps, pipeline=True))
        best = max(r["rollout"], key=lambda x: x["env_steps_per_s"])
        r["iteration"] = iteration_shares(pcfg, best, r["update"], r["weight_sync"]["disaggregated"]["sync_s"],
                                          args.horizon)
        r["iteration"].update(rollout_batch=best["batch"], rollout_pipeline=best["pipeline"])
        if name in args.engine_presets.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                r["engine"] = engine_latency(pcfg, args.device, args.engine_calls, tmp)
        r["bench_s"] = time.perf_counter() - t0
        out["presets"][name] = r
        print(f"bench-gpu {name}: {r}", flush=True)
    write(args.name, out)


if __name__ == "__main__":
    main()
