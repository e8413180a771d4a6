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


class RolloutWorker:
    def __init__(self, env_cfg: EnvConfig, policy_cfg: PolicyConfig, norm_stats: dict, tokenizer_json: str,
                 n_envs: int, threads: int = 1):
        from pushcut.sim.registry import make_env

        torch.set_num_threads(threads)
        self.cfg = policy_cfg
        self.envs = [make_env(env_cfg) for _ in range(n_envs)]
        self.policy = TorchPolicy(VLAPolicy(policy_cfg), norm_stats, load_tokenizer(tokenizer_json))
        self.timing = {"sim_s": 0.0, "inference_s": 0.0, "env_steps": 0}

    def set_weights(self, state: dict[str, np.ndarray]) -> None:
        self.policy.model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})

    def take_timing(self) -> dict:
        t, self.timing = self.timing, {"sim_s": 0.0, "inference_s": 0.0, "env_steps": 0}
        return t

    @torch.no_grad()
    def rollout(self, jobs: list[Job], temperature: float, max_steps: int | None = None) -> list[Trajectory]:
        """Run ``jobs`` in waves of ``len(envs)``; ``temperature == 0`` decodes greedily. ``max_steps``
        (None: the env's own limit) ends an episode after the chunk that reaches it, a failure unless
        it has succeeded by then."""
        out: list[Trajectory] = []
        for start in range(0, len(jobs), len(self.envs)):
            wave = jobs[start : start + len(self.envs)]
            gens = [torch.Generator().manual_seed(j.rng_seed) for j in wave]
            t0 = time.perf_counter()
            obs = [env.reset(j.seed) for env, j in zip(self.envs, wave)]
            self.timing["sim_s"] += time.perf_counter() - t0
            trajs = [Trajectory(group=j.group, seed=j.seed, success=False, steps=0) for j in wave]
            active = list(range(len(wave)))
            while active:
                t0 = time.perf_counter()
                obs_dicts = [obs[i].as_dict() for i in active]
                logits = self.policy.logits(obs_dicts)  # (B, A, n_bins)
                if temperature > 0:
                    bins = torch.stack([sampling.sample(logits[k : k + 1], temperature, gens[i])[0]
                                        for k, i in enumerate(active)])
                    logp = sampling.token_log_probs(logits, bins, temperature)
                else:
                    bins = sampling.greedy(logits)
                    logp = sampling.token_log_probs(logits, bins, 1.0)
                chunks = self.policy.decode(bins.numpy())
                self.timing["inference_s"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                still = []
                for k, i in enumerate(active):
                    before = trajs[i].steps
                    step = self.envs[i].step(chunks[k])
                    tr = trajs[i]
                    tr.observations.append(obs_dicts[k])
                    tr.bins.append(bins[k].numpy())
                    tr.logp.append(logp[k].numpy().astype(np.float32))
                    executed = step.steps - before
                    tr.token_mask.append(executed_token_mask(executed, self.cfg.chunk_len, self.cfg.action_dim))
                    tr.steps, tr.success = step.steps, step.success
                    self.timing["env_steps"] += step.steps - before
                    obs[i] = step.obs
                    if not step.done and (max_steps is None or step.steps < max_steps):
                        still.append(i)
                active = still
                self.timing["sim_s"] += time.perf_counter() - t0
            out.extend(trajs)
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


class WorkerPool:
    """``num_workers`` rollout workers as Ray actors (``backend='ray'``) or in this process."""

    def __init__(self, rollout_cfg, env_cfg: EnvConfig, policy_cfg: PolicyConfig, norm_stats: dict,
                 tokenizer_json: str):
        self.backend = rollout_cfg.backend
        args = (env_cfg, policy_cfg, norm_stats, tokenizer_json, rollout_cfg.envs_per_worker,
                rollout_cfg.threads_per_worker)
        self._owns_ray = False
        if self.backend == "ray":
            import ray

            if not ray.is_initialized():
                self._owns_ray = True
                if rollout_cfg.ray_address:
                    ray.init(address=rollout_cfg.ray_address, log_to_driver=False)
                else:
                    ray.init(num_cpus=max(2, rollout_cfg.num_workers), include_dashboard=False, log_to_driver=False)
            actor = ray.remote(num_cpus=1)(RolloutWorker)
            self.workers = [actor.remote(*args) for _ in range(rollout_cfg.num_workers)]
        else:
            self.workers = [RolloutWorker(*args) for _ in range(rollout_cfg.num_workers)]

    def _call(self, method: str, per_worker_args: list[tuple]) -> list:
        if self.backend == "ray":
            import ray

            return ray.get([getattr(w, method).remote(*a) for w, a in zip(self.workers, per_worker_args)])
        return [getattr(w, method)(*a) for w, a in zip(self.workers, per_worker_args)]

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Send the learner's (full) weights to every worker."""
        state = {k: v.detach().cpu().numpy() for k, v in weights.items()}
        if self.backend == "ray":
            import ray

            ref = ray.put(state)
            ray.get([w.set_weights.remote(ref) for w in self.workers])
        else:
            self._call("set_weights", [(state,)] * len(self.workers))

    def rollout(self, jobs: list[Job], temperature: float, max_steps: int | None = None) -> list[Trajectory]:
        """Spread ``jobs`` round-robin over the workers; results come back in job order."""
        n = len(self.workers)
        shards = [jobs[i::n] for i in range(n)]
        results = self._call("rollout", [(s, temperature, max_steps) for s in shards])
        ordered: list[Trajectory] = [None] * len(jobs)  # type: ignore[list-item]
        for i, res in enumerate(results):
            for k, tr in enumerate(res):
                ordered[i + k * n] = tr
        return ordered

    def take_timing(self) -> dict:
        total = {"sim_s": 0.0, "inference_s": 0.0, "env_steps": 0}
        for t in self._call("take_timing", [()] * len(self.workers)):
            for k in total:
                total[k] += t[k]
        return total

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
