"""What a GRPO run needs around the algorithm: loading and resuming, ranks, the time budget, the
rollout pool, evaluation with best-keeping, logging. ``pushcut.training.grpo.train`` reads the
algorithm top to bottom and calls these.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pushcut.policy import checkpoint
from pushcut.policy.inference import TorchPolicy
from pushcut.policy.lora import add_adapters, base_hash, has_adapters, optimised_parameters, trainable_tensors
from pushcut.training.config import TrainConfig
from pushcut.training.critic import ValueHead, critic_tensors, load_critic
from pushcut.training.learner import (
    check_learner_fits,
    checkpoint_activations,
    full_weights,
    init_distributed,
    is_sharded,
    learner_device,
    load_adapters,
    load_optimizer_and_rng,
    load_weights,
    save_best,
    shard,
)
from pushcut.training.rollout import ColocatedPool, Job, WorkerPool
from pushcut.training.run_log import RunLogger, keep_metrics_before
from pushcut.training.sft import start_demos


def budget_spent_message(eval_s: float, budget_s: float) -> str:
    """Why a run whose first evaluation used up its time budget takes no update."""
    return (f"grpo: the iteration-0 evaluation took {eval_s:.0f} s, the whole time budget of {budget_s:g} s "
            "(time_budget_s counts evaluation), so no iteration runs and the checkpoint is the start. Raise "
            "time_budget_s, or evaluate fewer episodes (eval_episodes) or less often (eval_every; 0: never).")


def evaluate(pool: WorkerPool | ColocatedPool, cfg: TrainConfig, weights: dict[str, torch.Tensor] | None
             ) -> dict[str, float]:
    """Greedy success of ``weights`` (colocated: the learner's model) on the evaluation seeds, and the
    seconds it took."""
    t0 = time.perf_counter()
    pool.set_weights(weights)
    seeds = range(cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_episodes)
    trajs = pool.rollout([Job(i, s, 0, 0) for i, s in enumerate(seeds)], temperature=0.0)
    return {"eval_success": float(np.mean([t.success for t in trajs])), "eval_s": time.perf_counter() - t0}


def is_new_best(cfg: TrainConfig, state: dict, eval_success: float) -> bool:
    """Whether an evaluation beats every earlier one of the run (the first one always does);
    records it in ``state``, which checkpoints carry, so a resumed run compares with the same best."""
    best = state.get("best_eval")
    if not cfg.keep_best or (best is not None and eval_success <= best):
        return False
    state["best_eval"] = eval_success
    return True


@dataclass
class Run:
    """One GRPO run's live objects. ``rolls``: this rank drives rollouts (rank 0, or every rank
    when colocated); ``is_main``: rank 0, which logs, evaluates and writes."""

    cfg: TrainConfig
    run_dir: Path
    rank: int
    world: int
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    policy: TorchPolicy
    ref_policy: TorchPolicy | None
    opt: torch.optim.Optimizer
    gen: torch.Generator
    state: dict
    resume: bool
    demos: dict[str, torch.Tensor] | None = None  # the start's SFT demos, for bc_coef (sft.start_demos)
    critic: ValueHead | None = None  # algorithm=ppo: the value head on the policy's features
    critic_opt: torch.optim.Optimizer | None = None
    last_eval: float | None = None  # the latest greedy success, shown by the progress bar
    logger: RunLogger | None = None
    pool: WorkerPool | ColocatedPool | None = None
    bar: tqdm | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def extras(self) -> dict[str, torch.Tensor]:
        """What a resumed run needs beside the weights and AdamW: the critic (``algorithm: ppo``), the
        adapters and trainable modules (``policy.lora``)."""
        out = critic_tensors(self.critic, self.critic_opt) if self.critic is not None else {}
        return out | (trainable_tensors(self.model) if has_adapters(self.model) else {})

    @property
    def colocated(self) -> bool:
        return self.cfg.rollout.placement == "colocated"

    @property
    def rolls(self) -> bool:
        return self.is_main or self.colocated

    def out_of_time(self) -> bool:
        budget = self.cfg.time_budget_s
        return budget is not None and self.state["wall_s"] >= budget

    def share_counters(self) -> None:
        """Rank 0's counters (wall time for the budget, env steps), which every rank needs."""
        if self.world > 1:
            payload = [self.state]
            dist.broadcast_object_list(payload, src=0)
            self.state = payload[0]

    def sync_weights(self) -> dict[str, torch.Tensor] | None:
        """The full weights the rollout workers need (a collective under FSDP: every rank takes part;
        with adapters, folded into their layers); colocated, none: the rollouts use the learner's
        own model."""
        return None if self.colocated else full_weights(self.model)

    def evaluate_and_keep_best(self, weights: dict[str, torch.Tensor] | None, it: int) -> dict[str, float]:
        """5. greedy evaluation (the ranks that roll out); the policy at the best one so far also goes
        to <run>/best."""
        result = evaluate(self.pool, self.cfg, weights)
        if is_new_best(self.cfg, self.state, result["eval_success"]):
            weights = full_weights(self.model) if weights is None else weights  # colocated: gathered now
            if self.is_main:
                save_best(self.run_dir, self.model, self.policy, self.cfg, weights, it, result["eval_success"])
        self.last_eval = result["eval_success"]
        return result

    def close(self) -> None:
        if self.bar:
            self.bar.close()
        if self.logger:
            self.logger.close()
        if self.pool:
            self.pool.close()


def load_run_state(cfg: TrainConfig, run_dir: Path, model, init_meta: dict) -> tuple[dict, dict | None, bool]:
    """Resume, part 1: the trainer state, the extras and whether ``run_dir`` holds a run. A plain run
    takes its weights from its checkpoint; with ``policy.lora`` the start stays the base, gets
    adapters (policy/lora.py) and, resumed, the adapters and trainable modules it had, refused when
    the start is not the base they were trained on (its weights' hash)."""
    state = {"iteration": 0, "next_group": 0, "wall_s": 0.0, "env_steps": 0}
    ckpt, lora = run_dir / "checkpoint", cfg.policy.lora
    resume, extra = (ckpt / "meta.json").exists(), None
    if not lora.rank:
        if resume:
            meta, extra = load_weights(ckpt, model, "grpo")
            state = meta["trainer"]
        return state, extra, resume
    base = base_hash(init_meta)
    add_adapters(model, lora, seed=cfg.seed, frozen_dtype=cfg.policy.dtype)
    if resume:
        meta, extra = load_adapters(ckpt, model, "grpo", base, lambda m: m["trainer"].get("lora_base"))
        state = meta["trainer"]
    state["lora_base"] = base
    return state, extra, resume


def start(cfg: TrainConfig, run_dir: Path, progress: bool) -> Run:
    """Load the SFT start (and the frozen reference when ``kl_coef`` > 0), resume what ``run_dir``
    holds, place and shard the learner, open the rollout pool and the log."""
    rank, world = init_distributed(cfg)
    torch.set_num_threads(cfg.learner.threads)
    if cfg.init_checkpoint is None:
        raise ValueError("init_checkpoint is required: GRPO starts from an SFT checkpoint")
    device = learner_device(cfg.learner.device)
    check_learner_fits(cfg, device, world)  # before the weights are loaded
    model, norm_stats, tokenizer, init_meta, run_config = checkpoint.load(cfg.init_checkpoint, expected=cfg.policy)
    demos = start_demos(run_config, cfg.policy, norm_stats) if cfg.bc_coef > 0 else None
    ref_model = None
    if cfg.kl_coef > 0:
        ref_model, *_ = checkpoint.load(cfg.init_checkpoint, expected=cfg.policy)
        ref_model.eval().requires_grad_(False).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    if rank == 0:  # a run killed mid-save left the previous checkpoint (or best) aside: put it back
        for name in ("checkpoint", "best"):
            checkpoint.recover(run_dir / name)
    if world > 1:
        dist.barrier()
    state, extra, resume = load_run_state(cfg, run_dir, model, init_meta)
    model.to(device)
    if cfg.learner.activation_checkpointing:
        checkpoint_activations(model)
    if cfg.learner.fsdp:
        shard(model, device.type, cfg.learner.cpu_offload)
    policy = TorchPolicy(model, norm_stats, tokenizer, device=str(device))
    ref_policy = TorchPolicy(ref_model, norm_stats, tokenizer, device=str(device)) if ref_model is not None else None
    opt = torch.optim.AdamW(optimised_parameters(model), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if resume:
        load_optimizer_and_rng(model, opt, gen, extra)
    run = Run(cfg, run_dir, rank, world, model, ref_model, policy, ref_policy, opt, gen, state, resume, demos)
    if cfg.algorithm == "ppo":
        with torch.random.fork_rng(devices=[]):  # the same critic at the start of every run of this seed
            torch.manual_seed(cfg.seed)
            run.critic = ValueHead(cfg.policy.llm.hidden_size).to(device)
        run.critic_opt = torch.optim.AdamW(run.critic.parameters(), lr=cfg.critic_lr)
        if resume:
            load_critic(run.critic, run.critic_opt, extra)
    if resume and run.is_main:  # rows logged after the last checkpoint are redone: drop them
        print(f"grpo: resuming from iteration {state['iteration']} in {run_dir}")
        keep = keep_metrics_before(run_dir, state["iteration"] + 1)
        run.last_eval = next((r["eval_success"] for r in reversed(keep) if "eval_success" in r), None)
    run.logger = RunLogger(run_dir, cfg, cfg.wandb, job="grpo", resume=resume) if run.is_main else None
    # colocated: every learner rank rolls out with its own model; disaggregated: rank 0 drives workers
    if run.colocated:
        run.pool = ColocatedPool(cfg.rollout, cfg.env, policy, sharded=is_sharded(model))
    elif run.is_main:
        run.pool = WorkerPool(cfg.rollout, cfg.env, cfg.policy, norm_stats, tokenizer.to_json(), str(device))
    # a time budget, when set, is what the bar counts (the default iterations cap is then far away)
    by_time = cfg.time_budget_s is not None
    run.bar = tqdm(total=int(cfg.time_budget_s) if by_time else cfg.iterations, unit="s" if by_time else "it",
                   initial=round(state["wall_s"]) if by_time else state["iteration"], desc="grpo",
                   disable=not (progress and run.is_main))
    return run


def evaluate_start(run: Run, weights) -> None:
    """The iteration-0 evaluation (the ranks that roll out); every rank then takes rank 0's clock,
    so that all stop where it says; a budget it spent is said."""
    if run.rolls:
        initial = run.evaluate_and_keep_best(weights, 0)
        run.state["wall_s"] += initial["eval_s"]  # the time budget counts evaluation too
    run.share_counters()
    if run.is_main:
        run.logger.log(initial, 0)
        if run.out_of_time():
            say(budget_spent_message(initial["eval_s"], run.cfg.time_budget_s))


def log_iteration(run: Run, metrics: dict, info: dict, chunks: int, t_iter: float) -> None:
    """Rank 0 counts the iteration's env steps and wall time, logs it and moves the bar; every rank
    then takes rank 0's counters."""
    it = run.state["iteration"]
    timing = run.pool.take_timing() if run.rolls else None
    if run.is_main:
        run.state["env_steps"] += timing["env_steps"]
        iter_s = time.perf_counter() - t_iter
        run.state["wall_s"] += iter_s
        metrics.update(info)
        metrics.update(success=info["reward"], env_steps_per_s=timing["env_steps"] / max(info["rollout_s"], 1e-9),
                       sim_s=timing["sim_s"], inference_s=timing["inference_s"], iter_s=iter_s,
                       wall_s=run.state["wall_s"], chunks=chunks)
        run.logger.log(metrics, it)
        by_time = run.cfg.time_budget_s is not None
        run.bar.update(round(run.state["wall_s"]) - run.bar.n if by_time else 1)
        run.bar.set_postfix(it=it, reward=f"{info['reward']:.2f}", kept=info["kept_groups"],
                            eval="-" if run.last_eval is None else f"{run.last_eval:.2f}")
    run.share_counters()


def say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)
