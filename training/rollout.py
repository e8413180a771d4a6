"""Rollout workers: persistent envs plus a policy copy, as Ray actors or in-process.

A job is one episode: (group id, initial-state seed, sample index). Sampling noise comes from a
torch Generator seeded by the job, so a trajectory does not depend on which worker ran it. Each
trajectory keeps, per executed chunk, the raw observation, the sampled bins, their per-token
log-probs at the rollout temperature, and a mask of the tokens that were executed (tokens past
the end of the episode are masked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pushcut.devices import torch_dtype
from pushcut.policy import sampling
from pushcut.policy.config import PolicyConfig
from pushcut.policy.inference import TorchPolicy
from pushcut.policy.modeling import VLAPolicy
from pushcut.policy.preprocess import load_tokenizer
from pushcut.sim.config import EnvConfig


@dataclass(frozen=True)
class Job:
    group: int
    seed: int
    sample: int
    rng_seed: int


@dataclass
class Trajectory:
    group: int
    seed: int
    success: bool
    steps: int
    side: str | None = None  # the arm the task needs on the dual-arm twin (its step info's "arm")
    observations: list[dict] = field(default_factory=list)  # one per chunk (spec keys)
    bins: list[np.ndarray] = field(default_factory=list)  # (A,) int64 per chunk
    logp: list[np.ndarray] = field(default_factory=list)  # (A,) float32 per chunk
    token_mask: list[np.ndarray] = field(default_factory=list)  # (A,) bool per chunk

    @property
    def reward(self) -> float:
        return float(self.success)


def executed_token_mask(executed_steps: int, chunk_len: int, action_dim: int) -> np.ndarray:
    """Tokens of the first ``executed_steps`` actions of a chunk (time-major layout)."""
    mask = np.zeros((chunk_len, action_dim), dtype=bool)
    mask[:executed_steps] = True
    return mask.reshape(-1)


class LocalEnvs:
    """A worker's envs stepped one after another in its own process, with ``VectorEnv``'s interface
    (lists with None for the envs left out)."""

    def __init__(self, cfg: EnvConfig, n: int):
        from pushcut.sim.registry import make_env

        self.envs = [make_env(cfg) for _ in range(n)]
        self.num_envs = n

    def reset(self, seeds):
        return [None if s is None else env.reset(s) for env, s in zip(self.envs, seeds)]

    def step(self, actions):
        return [None if a is None else env.step(a) for env, a in zip(self.envs, actions)]

    def close(self) -> None:
        for env in self.envs:
            env.close()


class Lockstep:
    """Keeps learner ranks that roll out with their own FSDP-sharded model in step: every forward
    pass is a collective, so a rank whose episodes are done joins the others' forwards (on a
    spare observation) until no rank has an episode left."""

    def __init__(self, device: torch.device):
        self.device = device

    def any(self, flag: bool) -> bool:
        import torch.distributed as dist

        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


class RolloutWorker:
    """``n_envs`` persistent envs (in this process, or ``env_processes``: one process each, stepped
    in parallel) and a policy on ``device`` in the policy's compute dtype; one batched forward pass
    per step for all its active envs. ``policy`` given (colocated placement): that one, the
    learner's own, is used and nothing is copied."""

    def __init__(self, env_cfg: EnvConfig, policy_cfg: PolicyConfig, norm_stats: dict, tokenizer_json: str,
                 n_envs: int, threads: int = 1, device: str = "cpu", env_processes: bool = False,
                 policy: TorchPolicy | None = None, pipeline: bool = False):
        if policy is None:
            torch.set_num_threads(threads)
            # a copy for inference only, built where it runs (a 7B initialised on the host takes minutes),
            # its weights in the compute dtype (half the memory, and half the bytes to sync, in bf16)
            with torch.device(device):
                model = VLAPolicy(policy_cfg)
            model.to(torch_dtype(policy_cfg.dtype))
            policy = TorchPolicy(model, norm_stats, load_tokenizer(tokenizer_json), device=device)
        self.cfg = policy_cfg
        self.policy = policy
        if env_processes:
            from pushcut.sim.vector import VectorEnv

            self.envs = VectorEnv(env_cfg, n_envs)
        else:
            self.envs = LocalEnvs(env_cfg, n_envs)
        self.pipeline = pipeline and env_processes  # overlapping needs envs that step on their own
        self.timing = empty_timing()
        self._receiver = None
        self._spare_obs: dict | None = None

    def set_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.policy.model.load_state_dict(state)

    def join_weight_group(self, host: str, port: int, rank: int, world: int, backend: str) -> None:
        """Join the learner's weight broadcast (``weight_sync``) as ``rank``."""
        from pushcut.training.weight_sync import WeightReceiver

        self._receiver = WeightReceiver(host, port, rank, world, backend, self.policy.device)

    def receive_weights(self) -> None:
        self._receiver.receive(self.policy.model)

    def take_timing(self) -> dict:
        t, self.timing = self.timing, empty_timing()
        return t

    @torch.no_grad()
    def rollout(self, jobs: list[Job], temperature: float, max_steps: int | None = None,
                lockstep: Lockstep | None = None) -> list[Trajectory]:
        """Run ``jobs`` in waves of ``num_envs``; ``temperature == 0`` decodes greedily. ``max_steps``
        (None: the env's own limit) ends an episode after the chunk that reaches it, a failure unless
        it has succeeded by then. ``lockstep``: this worker's forward passes are collectives shared
        with other ranks (colocated FSDP), so it keeps taking part until every rank is done. With
        ``pipeline`` (envs in processes), the wave's two halves alternate: one half's envs step while
        the other half's forward pass runs."""
        n_envs = self.envs.num_envs
        out: list[Trajectory] = []
        start = 0
        while start < len(jobs) or (lockstep is not None and lockstep.any(False)):
            wave = jobs[start : start + n_envs]
            start += n_envs
            if lockstep is not None and wave:
                lockstep.any(True)  # the matching call of the others' wave check
            gens = [torch.Generator().manual_seed(j.rng_seed) for j in wave]
            t0 = time.perf_counter()
            obs = self.envs.reset([j.seed for j in wave] + [None] * (n_envs - len(wave)))
            self.timing["sim_s"] += time.perf_counter() - t0
            trajs = [Trajectory(group=j.group, seed=j.seed, success=False, steps=0) for j in wave]
            if self.pipeline and lockstep is None and len(wave) > 1:
                self._pipelined(trajs, obs, gens, temperature, max_steps)
                out.extend(trajs)
                continue
            active = list(range(len(wave)))
            while active if lockstep is None else lockstep.any(bool(active)):
                if not active:  # lockstep: join the others' forward pass on a spare observation
                    self.policy.logits([self._spare()])
                    continue
                sent = self._act(active, obs, gens, temperature)
                t0 = time.perf_counter()
                steps = self.envs.step(sent["actions"])
                active = self._record(trajs, sent, steps, obs, max_steps)
                self.timing["sim_s"] += time.perf_counter() - t0
            out.extend(trajs)
        return out

    def _act(self, active: list[int], obs: list, gens: list, temperature: float) -> dict:
        """One batched forward pass for the envs ``active``: their observations, sampled bins and
        log-probs, and the actions to step them with (None for the other envs)."""
        t0 = time.perf_counter()
        obs_dicts = [obs[i].as_dict() for i in active]
        self._spare_obs = obs_dicts[0]
        logits = self.policy.logits(obs_dicts)  # (B, A, n_bins), float32
        if temperature > 0:
            bins = torch.stack([sampling.sample(logits[k : k + 1], temperature, gens[i])[0]
                                for k, i in enumerate(active)])
            logp = sampling.token_log_probs(logits, bins, temperature)
        else:
            bins = sampling.greedy(logits)
            logp = sampling.token_log_probs(logits, bins, 1.0)
        bins, logp = bins.cpu(), logp.cpu()
        chunks = self.policy.decode(bins.numpy())
        actions = [None] * self.envs.num_envs
        for k, i in enumerate(active):
            actions[i] = chunks[k]
        self.timing["inference_s"] += time.perf_counter() - t0
        return {"active": active, "obs": obs_dicts, "bins": bins, "logp": logp, "actions": actions}

    def _record(self, trajs: list[Trajectory], sent: dict, steps: list, obs: list, max_steps: int | None) -> list[int]:
        """Append each stepped env's chunk to its trajectory; returns the envs whose episode goes on."""
        still = []
        for k, i in enumerate(sent["active"]):
            tr, step = trajs[i], steps[i]
            before = tr.steps
            tr.observations.append(sent["obs"][k])
            tr.bins.append(sent["bins"][k].numpy())
            tr.logp.append(sent["logp"][k].numpy().astype(np.float32))
            executed = step.steps - before
            tr.token_mask.append(executed_token_mask(executed, self.cfg.chunk_len, self.cfg.action_dim))
            tr.steps, tr.success, tr.side = step.steps, step.success, step.info.get("arm")
            self.timing["env_steps"] += executed
            obs[i] = step.obs
            if not step.done and (max_steps is None or step.steps < max_steps):
                still.append(i)
        return still

    def _pipelined(self, trajs: list[Trajectory], obs: list, gens: list, temperature: float,
                   max_steps: int | None) -> None:
        """The wave's envs in two halves: while one half's envs step (in their processes), the other
        half's forward pass runs, so simulation and inference overlap."""
        halves = [list(range(h, len(trajs), 2)) for h in (0, 1)]
        pending: list[tuple[dict, list[int]] | None] = [None, None]
        for h in (0, 1):
            sent = self._act(halves[h], obs, gens, temperature)
            pending[h] = (sent, self.envs.step_async(sent["actions"]))
        while any(pending):
            for h in (0, 1):
                if pending[h] is None:
                    continue
                sent, started = pending[h]
                t0 = time.perf_counter()
                steps = self.envs.step_wait(started)
                self.timing["sim_s"] += time.perf_counter() - t0  # the wait: what the other half's pass did not hide
                active = self._record(trajs, sent, steps, obs, max_steps)
                if active:
                    sent = self._act(active, obs, gens, temperature)
                    pending[h] = (sent, self.envs.step_async(sent["actions"]))
                else:
                    pending[h] = None

    def _spare(self) -> dict:
        if self._spare_obs is None:  # this rank had no episode yet: any observation of its envs will do
            self._spare_obs = self.envs.reset([0] + [None] * (self.envs.num_envs - 1))[0].as_dict()
        return self._spare_obs

    def close(self) -> None:
        self.envs.close()


def sync_backend(rollout_device: str, learner_device: str) -> str:
    """The weight broadcast's backend: NCCL when the workers and the learner are on GPUs and this node
    has several (NCCL cannot join two ranks on one GPU), gloo over the host otherwise."""
    both_gpu = rollout_device == "cuda" and learner_device.startswith("cuda")
    return "nccl" if both_gpu and torch.cuda.device_count() > 1 else "gloo"


def empty_timing() -> dict:
    """A worker's counters: seconds in simulation and in inference, env steps taken."""
    return {"sim_s": 0.0, "inference_s": 0.0, "env_steps": 0}


def _merge_timing(timings) -> dict:
    total = empty_timing()
    for t in timings:
        for k in total:
            total[k] += t[k]
    return total


def _round_robin(results: list[list[Trajectory]], n_jobs: int) -> list[Trajectory]:
    """Per-worker results of ``jobs[i::n]`` back in job order."""
    n = len(results)
    ordered: list[Trajectory] = [None] * n_jobs  # type: ignore[list-item]
    for i, res in enumerate(results):
        for k, tr in enumerate(res):
            ordered[i + k * n] = tr
    return ordered


class WorkerPool:
    """Disaggregated placement: ``num_workers`` rollout workers with policy copies of their own, as
    Ray actors (``backend='ray'``; ``gpus_per_worker`` GPUs each when ``device='cuda'``) or in this
    process. ``set_weights`` sends them the learner's weights: to Ray actors as a tensor broadcast
    over a process group of the learner and the workers (``weight_sync``), in-process by reference."""

    def __init__(self, rollout_cfg, env_cfg: EnvConfig, policy_cfg: PolicyConfig, norm_stats: dict,
                 tokenizer_json: str, learner_device: str = "cpu"):
        self.backend = rollout_cfg.backend
        args = (env_cfg, policy_cfg, norm_stats, tokenizer_json, rollout_cfg.envs_per_worker,
                rollout_cfg.threads_per_worker, rollout_cfg.device, rollout_cfg.env_processes, None,
                rollout_cfg.pipeline)
        self._owns_ray = False
        self.sender = None
        if self.backend == "ray":
            import ray

            from pushcut.training.weight_sync import WeightSender

            if not ray.is_initialized():
                self._owns_ray = True
                if rollout_cfg.ray_address:
                    ray.init(address=rollout_cfg.ray_address, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(2, rollout_cfg.num_workers), include_dashboard=False, log_to_driver=False)
            gpus = rollout_cfg.gpus_per_worker if rollout_cfg.device == "cuda" else 0
            actor = ray.remote(num_cpus=1, num_gpus=gpus)(RolloutWorker)
            self.workers = [actor.remote(*args) for _ in range(rollout_cfg.num_workers)]
            backend = sync_backend(rollout_cfg.device, learner_device)
            self.sender = WeightSender(len(self.workers), backend, torch_dtype(policy_cfg.dtype), learner_device)
            joined = [w.join_weight_group.remote(self.sender.host, self.sender.port, i + 1, self.sender.world, backend)
                      for i, w in enumerate(self.workers)]
            self.sender.connect()
            ray.get(joined)
        else:
            self.workers = [RolloutWorker(*args) for _ in range(rollout_cfg.num_workers)]

    def _call(self, method: str, per_worker_args: list[tuple]) -> list:
        if self.backend == "ray":
            import ray

            return ray.get([getattr(w, method).remote(*a) for w, a in zip(self.workers, per_worker_args)])
        return [getattr(w, method)(*a) for w, a in zip(self.workers, per_worker_args)]

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Send the learner's (full) weights to every worker."""
        if self.backend == "ray":
            import ray

            received = [w.receive_weights.remote() for w in self.workers]
            self.sender.send(weights)
            ray.get(received)
        else:
            self._call("set_weights", [(weights,)] * len(self.workers))

    def rollout(self, jobs: list[Job], temperature: float, max_steps: int | None = None) -> list[Trajectory]:
        """Spread ``jobs`` round-robin over the workers; results come back in job order."""
        n = len(self.workers)
        results = self._call("rollout", [(jobs[i::n], temperature, max_steps) for i in range(n)])
        return _round_robin(results, len(jobs))

    def take_timing(self) -> dict:
        return _merge_timing(self._call("take_timing", [()] * len(self.workers)))

    def close(self) -> None:
        if self.backend == "ray":
            import ray

            for w in self.workers:
                ray.kill(w)
            if self._owns_ray:  # a local cluster started here ends here (its threads slow the host)
                ray.shutdown()
        else:
            for w in self.workers:
                w.close()


class ColocatedPool:
    """Colocated placement: every learner rank rolls out its share of the jobs with the learner's own
    model (no weight copy at all, as SimpleVLA-RL/veRL do), then the ranks exchange trajectories so
    each holds the whole batch in job order. Under FSDP the forward passes are collectives and the
    ranks run them in lockstep."""

    def __init__(self, rollout_cfg, env_cfg: EnvConfig, policy: TorchPolicy, sharded: bool):
        import torch.distributed as dist

        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.worker = RolloutWorker(env_cfg, policy.cfg, policy.norm_stats, "", rollout_cfg.envs_per_worker,
                                    env_processes=rollout_cfg.env_processes, policy=policy,
                                    pipeline=rollout_cfg.pipeline)
        self.lockstep = Lockstep(torch.device(policy.device)) if sharded and self.world > 1 else None

    def set_weights(self, weights) -> None:
        """Nothing to send: the rollouts use the learner's model."""

    def rollout(self, jobs: list[Job], temperature: float, max_steps: int | None = None) -> list[Trajectory]:
        mine = self.worker.rollout(jobs[self.rank :: self.world], temperature, max_steps, self.lockstep)
        if self.world == 1:
            return mine
        import torch.distributed as dist

        results: list = [None] * self.world
        dist.all_gather_object(results, mine)
        return _round_robin(results, len(jobs))

    def take_timing(self) -> dict:
        """This rank's timing; with several ranks, summed over them (a collective)."""
        t = self.worker.take_timing()
        if self.world == 1:
            return t
        import torch.distributed as dist

        every: list = [None] * self.world
        dist.all_gather_object(every, t)
        return _merge_timing(every)

    def close(self) -> None:
        self.worker.close()
