"""The GPU code paths on CPU: bf16 compute on fp32 masters, activation checkpointing, micro-batches,
colocated and disaggregated placement, the weight broadcast, parallel env processes."""

import dataclasses
import os

import numpy as np
import pytest
import torch

from pushcut.policy import checkpoint
from pushcut.training.config import LearnerConfig, RolloutConfig

from .conftest import MICRO_ENV, MICRO_POLICY
from .test_grpo_runs import _batch, _train_cfg

BF16 = dataclasses.replace(MICRO_POLICY, dtype="bfloat16")


def _twin_observations(n: int = 12) -> list[dict]:
    from pushcut.sim.registry import make_env

    env = make_env(MICRO_ENV)
    obs = []
    for seed in range(n):  # the initial state, and one step into the episode
        o = env.reset(1000 + seed)
        obs.append(o.as_dict())
        obs.append(env.step(np.zeros((MICRO_POLICY.chunk_len, MICRO_POLICY.action_dim))).obs.as_dict())
    env.close()
    return obs


def _update(model, stats, tok, batch, n_traj, cfg, sgd=False):
    """``grpo.update`` with AdamW, or (``sgd``) plain SGD at lr 1: the weights then move by minus the
    clipped gradient, which compares across runs to float precision (Adam's first step is about
    lr times the gradient's sign, which float noise flips where a gradient is ~0)."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    opt = (torch.optim.SGD(model.parameters(), lr=1.0) if sgd else
           torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))
    metrics = grpo.update(model, None, opt, TorchPolicy(model, stats, tok), batch, n_traj, cfg,
                          torch.Generator().manual_seed(0))
    return metrics, opt


def test_bf16_policy_computes_in_bf16_on_fp32_masters_and_updates(sft_checkpoint):
    """policy.dtype=bfloat16 on an fp32 SFT checkpoint: the matrix products run in bf16 (the logits
    differ from fp32's), the logits, log-probs and loss come out in fp32, sampling works, and a
    GRPO update moves fp32 master weights with fp32 AdamW state."""
    from pushcut.policy import sampling
    from pushcut.policy.inference import TorchPolicy

    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint, expected=BF16)
    ref, *_ = checkpoint.load(sft_checkpoint)
    assert model.compute_dtype == torch.bfloat16 and ref.compute_dtype == torch.float32
    obs = _twin_observations(2)
    policy = TorchPolicy(model, stats, tok)
    assert policy.inputs(obs)["pixels"].dtype == torch.bfloat16  # inputs follow the compute dtype
    logits = policy.logits(obs)
    fp32 = TorchPolicy(ref, stats, tok).logits(obs)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert 0 < (logits - fp32).abs().max() < 0.5  # bf16 products: close to fp32, not equal
    bins = sampling.sample(logits, 1.6, torch.Generator().manual_seed(0))
    assert sampling.token_log_probs(logits, bins, 1.6).dtype == torch.float32

    trajs, batch = _batch(sft_checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics, opt = _update(model, stats, tok, batch, len(trajs), _train_cfg(sft_checkpoint, policy=BF16))
    assert np.isfinite(metrics["pg_loss"]) and metrics["grad_norm"] > 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {v.dtype for st in opt.state.values() for k, v in st.items() if k != "step"} == {torch.float32}
    moved = sum(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert moved > 10


def test_bf16_greedy_actions_agree_with_fp32_on_twin_observations(sft_checkpoint):
    """The same weights decoded greedily in bf16 and in fp32 pick the same bin for >= 95% of the
    action tokens on twin observations (the learner's fp32 masters under bf16 autocast, and a rollout
    worker's copy held in bf16)."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.policy.modeling import VLAPolicy

    ref, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    bf16, *_ = checkpoint.load(sft_checkpoint, expected=BF16)
    copy = VLAPolicy(BF16).to(torch.bfloat16)  # as a rollout worker holds it
    copy.load_state_dict(ref.state_dict())
    obs = _twin_observations()
    greedy = {name: TorchPolicy(m, stats, tok).logits(obs).argmax(-1) for name, m in
              (("fp32", ref), ("bf16", bf16), ("bf16 copy", copy))}
    for name in ("bf16", "bf16 copy"):
        agree = (greedy[name] == greedy["fp32"]).float().mean().item()
        assert agree >= 0.95, f"{name}: {agree:.1%} of greedy tokens agree with fp32"


def _saved_bytes_and_weights(sft_checkpoint, cfg, checkpointing: bool):
    from pushcut.training.learner import checkpoint_activations

    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    if checkpointing:
        checkpoint_activations(model)
    trajs, batch = _batch(sft_checkpoint)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        metrics, _ = _update(model, stats, tok, batch, len(trajs), cfg, sgd=True)
    return saved[0], metrics, model.state_dict()


def test_activation_checkpointing_changes_memory_not_the_gradient(sft_checkpoint):
    """learner.activation_checkpointing: the tensors autograd keeps for the backward pass shrink, the
    gradient norm and the updated weights stay those of the plain update."""
    cfg = _train_cfg(sft_checkpoint)
    plain_bytes, plain, plain_w = _saved_bytes_and_weights(sft_checkpoint, cfg, False)
    ckpt_bytes, ckpt, ckpt_w = _saved_bytes_and_weights(sft_checkpoint, cfg, True)
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-6)
    for k, v in plain_w.items():
        torch.testing.assert_close(ckpt_w[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_micro_batches_accumulate_the_same_update(sft_checkpoint):
    """learner.micro_batch=1: every chunk in its own forward/backward pass, gradients summed: the
    update and the logged loss are those of one pass over each mini-batch."""
    from pushcut.training import grpo

    results = {}
    for micro in (None, 1):
        model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
        trajs, batch = _batch(sft_checkpoint)
        cfg = _train_cfg(sft_checkpoint, learner=LearnerConfig(micro_batch=micro))
        results[micro] = (*_update(model, stats, tok, batch, len(trajs), cfg, sgd=True)[:1], model.state_dict())
    for key in ("grad_norm", "pg_loss", "ratio", "clipfrac"):
        assert results[1][0][key] == pytest.approx(results[None][0][key], rel=1e-5, abs=1e-7), key
    start = checkpoint.load(sft_checkpoint)[0].state_dict()
    for k, v in results[None][1].items():  # the steps, minus the clipped gradients, agree
        torch.testing.assert_close(results[1][1][k] - start[k], v - start[k], rtol=1e-4, atol=1e-6, msg=k)
    # the passes: every rank's share split, the FSDP ranks padded to the busiest one's count
    shares = [np.arange(5), np.arange(5, 7)]
    assert [len(p) for p in grpo.micro_batches(shares, 0, 2, sharded=False)] == [2, 2, 1]
    assert [len(p) for p in grpo.micro_batches(shares, 1, 2, sharded=True)] == [2, 0, 0]
    assert [len(p) for p in grpo.micro_batches([np.arange(0), np.arange(0)], 1, None, sharded=True)] == [0]


def test_rollouts_in_env_processes_and_pipelined_match_in_process_ones(sft_checkpoint):
    """rollout.env_processes: a worker's envs step in parallel processes; rollout.pipeline: half of
    them step while the other half's forward pass runs. The trajectories are the ones the worker
    gets stepping its envs in turn: each episode's sampling noise is its own."""
    from pushcut.training.rollout import Job, RolloutWorker

    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    jobs = [Job(0, seed, 0, 50 + seed) for seed in range(5)]  # a wave of 3 envs, then one of 2
    out = {}
    for procs, pipeline in ((False, False), (True, False), (True, True)):
        w = RolloutWorker(MICRO_ENV, MICRO_POLICY, stats, tok.to_json(), n_envs=3, env_processes=procs,
                          pipeline=pipeline)
        w.set_weights(model.state_dict())
        out[procs, pipeline] = w.rollout(jobs, 1.6, max_steps=40)
        timing = w.take_timing()
        w.close()
        assert timing["env_steps"] == sum(t.steps for t in out[procs, pipeline])
    ref = out[False, False]
    for key in ((True, False), (True, True)):
        for a, b in zip(ref, out[key], strict=True):
            assert (a.success, a.steps, len(a.bins)) == (b.success, b.steps, len(b.bins)), key
            for x, y in zip(a.bins, b.bins):
                np.testing.assert_array_equal(x, y)


def _sync_receiver(rank, world, port, state, out):
    from pushcut.policy.modeling import VLAPolicy
    from pushcut.training.weight_sync import WeightReceiver

    model = VLAPolicy(BF16).to(torch.bfloat16)
    WeightReceiver("127.0.0.1", port, rank, world, "gloo", "cpu").receive(model)
    torch.save(model.state_dict(), out)


def test_weight_broadcast_delivers_the_learners_weights_in_the_workers_dtype(sft_checkpoint, tmp_path):
    """weight_sync: the learner's fp32 weights reach two bf16 workers over a gloo group of their own,
    in buckets, each tensor equal to the learner's cast to bf16."""
    import torch.multiprocessing as mp

    from pushcut.training import weight_sync
    from pushcut.training.weight_sync import WeightSender

    weights = checkpoint.load(sft_checkpoint)[0].state_dict()
    sender = WeightSender(2, "gloo", torch.bfloat16, "cpu", host="127.0.0.1")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_sync_receiver, args=(r, 3, sender.port, None, str(tmp_path / f"{r}.pt")))
             for r in (1, 2)]
    for p in procs:
        p.start()
    try:
        sender.connect()
        assert len(weight_sync.plan(weights, torch.bfloat16)) >= 1
        sent = sender.send(weights)
    except RuntimeError as e:  # a receiver that left the group: say how it ended (a negative code: a signal)
        for p in procs:
            p.join(timeout=30)
        raise AssertionError(f"the broadcast failed; receivers' exit codes {[p.exitcode for p in procs]}") from e
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert sent == sum(v.numel() for v in weights.values()) * 2
    for r in (1, 2):
        got = torch.load(tmp_path / f"{r}.pt")
        for k, v in weights.items():
            assert torch.equal(got[k], v.to(torch.bfloat16)), k


def _placement_worker(rank, world, ckpt, port, run, placement, fsdp):
    import torch.distributed as dist

    from pushcut.training import grpo

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    grpo.train(_placement_cfg(ckpt, placement, fsdp, "ray"), run, progress=False)
    dist.destroy_process_group()


def _placement_cfg(ckpt, placement, fsdp=False, backend="local"):
    # every group kept and an entropy bonus: a gradient whatever the micro policy's successes; three
    # episodes, one env each: colocated, rank 0 runs two waves and rank 1 one, so rank 1 must keep
    # joining rank 0's (collective) forward passes
    return _train_cfg(ckpt, iterations=1, dynamic_sampling=False, entropy_coef=0.01, weight_decay=0.0,
                      n_samples=3, groups_per_iter=1, learner=LearnerConfig(fsdp=fsdp, threads=1),
                      rollout=RolloutConfig(placement=placement, backend=backend, num_workers=2, envs_per_worker=1))


def test_colocated_and_disaggregated_placements_give_the_same_update(sft_checkpoint, tmp_path):
    """One GRPO iteration with the learner on 2 gloo ranks, rolled out colocated (each rank with its
    own FSDP-sharded model, forward passes in lockstep) and disaggregated (2 Ray workers, weights
    broadcast to them), ends at the weights of the single-process run with in-process workers."""
    import torch.multiprocessing as mp

    from pushcut.training import grpo
    from pushcut.training.run_log import read_metrics

    ref = grpo.train(_placement_cfg(sft_checkpoint, "disaggregated"), tmp_path / "ref", progress=False)
    runs = {}
    for name, placement, fsdp, port in (("colocated", "colocated", True, 29631),
                                        ("disaggregated", "disaggregated", False, 29632)):
        run = tmp_path / name
        mp.spawn(_placement_worker, args=(2, str(sft_checkpoint), port, str(run), placement, fsdp), nprocs=2,
                 join=True)
        runs[name] = run
    want = checkpoint.load(ref)[0].state_dict()
    start = checkpoint.load(sft_checkpoint)[0].state_dict()
    assert sum(not torch.equal(v, start[k]) for k, v in want.items()) > 10
    ref_row = read_metrics(tmp_path / "ref" / "metrics.jsonl")[0]
    for name, run in runs.items():
        row = read_metrics(run / "metrics.jsonl")[0]
        assert (row["reward"], row["chunks"]) == (ref_row["reward"], ref_row["chunks"]), name  # the same rollouts
        got = checkpoint.load(run / "checkpoint")[0].state_dict()
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=f"{name} {k}")


def test_a_resumed_bf16_run_continues_bit_identically(sft_checkpoint, tmp_path):
    """A bf16 run stopped after one iteration and started again ends at the uninterrupted run's
    weights, bit for bit: the fp32 masters, fp32 AdamW state and RNGs are what the checkpoint keeps."""
    from pushcut.training import grpo

    def cfg(iterations):
        return _train_cfg(sft_checkpoint, policy=BF16, iterations=iterations, dynamic_sampling=False,
                          entropy_coef=0.01, rollout=RolloutConfig(backend="local", num_workers=1, envs_per_worker=4))

    ref = grpo.train(cfg(2), tmp_path / "ref", progress=False)
    grpo.train(cfg(1), tmp_path / "run", progress=False)
    assert checkpoint.read_meta(tmp_path / "run" / "checkpoint")["trainer"]["iteration"] == 1
    out = grpo.train(cfg(2), tmp_path / "run", progress=False)
    assert checkpoint.read_meta(out)["trainer"]["iteration"] == 2
    a, b = checkpoint.load(ref)[0].state_dict(), checkpoint.load(out)[0].state_dict()
    assert {v.dtype for v in b.values()} == {torch.float32}  # stored as fp32 masters
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    start = checkpoint.load(sft_checkpoint)[0].state_dict()
    assert sum(not torch.equal(v, start[k]) for k, v in a.items()) > 10


def test_a_learner_that_cannot_fit_its_gpu_is_refused_with_the_estimate(sft_checkpoint):
    """The 7B preset's fp32 masters, gradients and AdamW moments (7.2 B parameters x 16 bytes) and
    bf16 copies leave under a tenth of a 141 GB H200 for activations: refused up front, naming the estimate and
    the ways out; sharded with its states in host memory, or over 8 GPUs, it is let through."""
    from bench.gpu import policy_preset
    from pushcut.training.config import TrainConfig
    from pushcut.training.learner import check_learner_fits, parameter_count

    big = policy_preset("openvla_oft_7b")
    assert parameter_count(big) == pytest.approx(7.2e9, rel=0.01)
    h200 = 141 * 10**9
    cuda = torch.device("cuda", 0)

    def cfg(**learner):
        return dataclasses.replace(TrainConfig(init_checkpoint=str(sft_checkpoint)), policy=big,
                                   learner=LearnerConfig(**learner))

    with pytest.raises(MemoryError, match=r"openvla_oft_7b \(7\.21 B parameters\) needs 120\.8 GiB per GPU .* "
                                          r"cuda:0 has 131\.3 GiB") as err:
        check_learner_fits(cfg(), cuda, world=1, total_bytes=h200)
    assert "learner.fsdp=true learner.cpu_offload=true" in str(err.value)
    check_learner_fits(cfg(fsdp=True, cpu_offload=True), cuda, world=1, total_bytes=h200)
    check_learner_fits(cfg(fsdp=True), cuda, world=8, total_bytes=h200)
    check_learner_fits(cfg(), torch.device("cpu"), world=1)  # host memory is not estimated


def _offload_worker(rank, ckpt, port, run):
    import torch.distributed as dist

    from pushcut.training import grpo

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    torch.set_num_threads(1)
    cfg = _placement_cfg(ckpt, "disaggregated")
    cfg = dataclasses.replace(cfg, policy=BF16, learner=LearnerConfig(fsdp=True, cpu_offload=True, threads=1,
                                                                      activation_checkpointing=True, micro_batch=2))
    grpo.train(cfg, run, progress=False)
    dist.destroy_process_group()


def test_fsdp_bf16_with_host_offload_trains_on_one_rank(sft_checkpoint, tmp_path):
    """The 7B's one-GPU setting at micro size: FSDP on one rank, bf16 compute on fp32 shards
    (MixedPrecisionPolicy), shards, gradients and AdamW state in host memory, activation
    checkpointing and micro-batches: one iteration moves the weights, saved as fp32."""
    import torch.multiprocessing as mp

    mp.spawn(_offload_worker, args=(str(sft_checkpoint), 29641, str(tmp_path / "run")), nprocs=1, join=True)
    got = checkpoint.load(tmp_path / "run" / "checkpoint")[0].state_dict()
    start = checkpoint.load(sft_checkpoint)[0].state_dict()
    assert {v.dtype for v in got.values()} == {torch.float32}
    assert sum(not torch.equal(v, start[k]) for k, v in got.items()) > 10
