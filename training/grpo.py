"""``pushcut-train``: GRPO with a binary task-success reward, the SimpleVLA-RL recipe.

Per iteration (reads top to bottom, quantities named as in the paper and all logged):
  1. rollout   groups of ``n_samples`` episodes per initial state at temperature T (Ray workers);
               optionally a lower ``late_temperature`` for the run's last ``late_fraction``; a new
               initial state per group, or (``curriculum.layouts``) states drawn from a pool where
               the policy's recent success is neither 0 nor 1 (``training/curriculum.py``)
  2. filter    dynamic sampling: drop groups whose successes are 0/n or n/n, draw more groups
               until ``groups_per_iter`` are kept (at most ``max_draw_rounds`` draws)
  3. adv       A = (R - mean_group) / (std_group + 1e-6), unbiased std, broadcast to every
               executed action token of the trajectory (tokens past the episode end masked);
               optionally (``mirror_augment``) each kept trajectory's left-right mirror image joins
               the batch with the same advantage
  4. update    ``ppo_epochs`` passes (the recipe: one), each in ``mini_batches`` optimiser steps, of
               the token-level PPO clip loss against the rollout's log-probs, with
               ratio clamped to [1 - clip_ratio_low, 1 + clip_ratio_high]; token-mean inside a
               trajectory, then mean over trajectories; optional KL to the frozen SFT reference
               (``kl_penalty``: k3 estimator in the loss, or k1 subtracted from the reward before
               step 3, as the reference offers) and entropy bonus; AdamW, grad-norm clip
  5. eval      greedy success on validation seeds every ``eval_every`` iterations; the policy at
               the best evaluation so far is also kept in ``<run>/best`` (``keep_best``)
  6. save      policy + optimiser + RNG + counters, atomically, every ``save_every`` iterations

The learner runs under torch.distributed when launched by torchrun (gloo on CPU, nccl on GPU):
every rank gets the same batch, computes its shard, and gradients are summed across ranks, so
any world size gives the update of one process on the whole batch. With ``learner.fsdp`` the
weights, gradients and optimizer state are sharded too (FSDP2 ``fully_shard`` per transformer
layer), which the 7B preset needs; rank 0 gathers the full weights for the rollout workers and
the checkpoint. That plumbing and the resumable state live in ``training/learner.py``; the run around
the algorithm (loading, resuming, ranks, time budget, evaluation and best-keeping, logging) in
``training/grpo_run.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pushcut import spec
from pushcut.configs import hydra_entry
from pushcut.policy import checkpoint, sampling
from pushcut.policy.action_tokenizer import encode_chunks
from pushcut.policy.inference import TorchPolicy
from pushcut.sim.twin.mirror import mirror_dual_arm, mirror_image
from pushcut.training import curriculum, grpo_run
from pushcut.training.config import TrainConfig
from pushcut.training.critic import ValueHead, chunk_advantages, chunk_values, value_loss
from pushcut.training.grpo_run import Run, say
from pushcut.training.learner import (
    is_sharded,
    save_state,
)
from pushcut.training.rollout import ColocatedPool, Job, Trajectory, WorkerPool
from pushcut.training.run_log import plot_curves, read_metrics
from pushcut.training.sft import token_loss

EPS = 1e-6


# --- 2. dynamic sampling and 3. advantages -----------------------------------------------------
def group_rewards(trajs: list[Trajectory], penalties: list[float] | None = None,
                  success_reward: float = 1.0) -> dict[int, np.ndarray]:
    """Each group's rewards in trajectory order (``success_reward`` for a success, else 0), less each
    trajectory's ``penalties`` (if given)."""
    groups: dict[int, list[float]] = {}
    for i, t in enumerate(trajs):
        groups.setdefault(t.group, []).append(success_reward * t.reward
                                              - (penalties[i] if penalties is not None else 0.0))
    return {g: np.array(r) for g, r in groups.items()}


def mixed_groups(trajs: list[Trajectory], bounds: tuple[float, float] | None = None) -> set[int]:
    """Groups with at least one success and one failure (the ones dynamic sampling keeps); with
    ``bounds``, those whose success rate also lies within them, inclusive (the reference's filter)."""
    groups = group_rewards(trajs)
    keep = {g for g, r in groups.items() if 0 < r.sum() < len(r)}
    if bounds is not None:
        keep = {g for g in keep if bounds[0] <= groups[g].mean() <= bounds[1]}
    return keep


def grpo_advantages(rewards: np.ndarray) -> np.ndarray:
    """(R - mean) / (unbiased std + 1e-6) within one group."""
    r = np.asarray(rewards, dtype=np.float64)
    std = r.std(ddof=1) if len(r) > 1 else 0.0
    return (r - r.mean()) / (std + EPS)


# --- 4. the loss -------------------------------------------------------------------------------
def ppo_clip_loss(
    logp: torch.Tensor,  # (N, A) new per-token log-probs
    old_logp: torch.Tensor,  # (N, A)
    adv: torch.Tensor,  # (N,) per chunk (its trajectory's advantage)
    mask: torch.Tensor,  # (N, A) executed tokens
    traj_tokens: torch.Tensor,  # (N,) executed tokens of the chunk's whole trajectory
    n_traj: int,  # trajectories in the full batch (all ranks, all mini-batches)
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level PPO clip; token-mean per trajectory, then mean over trajectories.

    Returned as this shard's share of the full-batch loss (a sum over its chunks divided by
    ``n_traj``), so shards' losses and gradients add up to the full batch's.
    """
    mask = mask.float()
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    a = adv[:, None]
    pg1 = -a * ratio
    pg2 = -a * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(pg1, pg2)  # (N, A)
    weight = mask / traj_tokens[:, None].clamp(min=1)  # token-mean inside each trajectory
    loss = (per_token * weight).sum() / n_traj
    n_tok = mask.sum().clamp(min=1)
    stats = {
        "ratio": (ratio * mask).sum() / n_tok,
        "clipfrac": (((ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)).float() * mask).sum() / n_tok,
        # the reference's (verl's): tokens where the clip is what the loss takes
        "clipfrac_active": ((pg2 > pg1).float() * mask).sum() / n_tok,
        "approx_kl": (((ratio - 1.0) - log_ratio) * mask).sum() / n_tok,
    }
    return loss, stats


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref) on the sampled tokens."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def k1_penalties(logp: list[np.ndarray], ref_logp: list[np.ndarray], mask: list[np.ndarray]) -> float:
    """One trajectory's k1 estimate of KL(pi_old || ref), summed over its executed tokens: sum of
    (log pi_old - log ref) per token. ``kl_penalty=reward_k1`` subtracts ``kl_coef`` times it from the
    trajectory's reward before the group normalisation (the reference's KL-in-reward, in which a
    sequence's score is the sum of its token-level rewards)."""
    return float(sum(((lp - rp) * m).sum() for lp, rp, m in zip(logp, ref_logp, mask)))


def k1_token_mean(kl_sums: list[float], trajs: list[Trajectory]) -> float:
    """The batch's k1 estimate per executed token (the reference's logged KL) from each trajectory's
    sum over its tokens (``k1_penalties``)."""
    return float(np.sum(kl_sums) / max(sum(executed_tokens(t) for t in trajs), 1))


@torch.no_grad()
def policy_log_probs(policy: TorchPolicy, observations: list[dict], bins: np.ndarray, temperature: float,
                     chunk_rows: int = 64) -> np.ndarray:
    """``policy``'s per-token log-probs (N, A) of ``bins`` (N, A) on ``observations`` at ``temperature``,
    ``chunk_rows`` observations per forward pass."""
    out = np.empty(bins.shape, dtype=np.float32)
    for start in range(0, len(observations), chunk_rows):
        logits = policy.logits(observations[start : start + chunk_rows])
        part = torch.from_numpy(bins[start : start + chunk_rows]).to(logits.device)
        out[start : start + chunk_rows] = sampling.token_log_probs(logits, part, temperature).cpu().numpy()
    return out


def reference_log_probs(ref: TorchPolicy, trajs: list[Trajectory], temperature: float) -> list[list[np.ndarray]]:
    """The frozen reference's per-token log-probs of each trajectory's sampled bins, at ``temperature``."""
    lp = policy_log_probs(ref, [o for t in trajs for o in t.observations], np.stack([b for t in trajs for b in t.bins]),
                          temperature)
    ends = np.cumsum([len(t.bins) for t in trajs])
    return [list(part) for part in np.split(lp, ends[:-1])]


# --- the batch ----------------------------------------------------------------------------------
def executed_tokens(t: Trajectory) -> int:
    """The action tokens a trajectory executed (its chunks' masks)."""
    return int(sum(m.sum() for m in t.token_mask))


def flatten(trajs: list[Trajectory], adv: dict[tuple[int, int], float]) -> dict:
    """Chunk-level arrays of the kept trajectories (``adv`` keyed by (group, index in group))."""
    rows = {"obs": [], "bins": [], "logp": [], "mask": [], "adv": [], "traj_tokens": [], "traj": []}
    seen: dict[int, int] = {}
    for ti, t in enumerate(trajs):
        k = seen.get(t.group, 0)
        seen[t.group] = k + 1
        a = adv[(t.group, k)]
        total = executed_tokens(t)
        for o, b, lp, m in zip(t.observations, t.bins, t.logp, t.token_mask):
            rows["obs"].append(o)
            rows["bins"].append(b)
            rows["logp"].append(lp)
            rows["mask"].append(m)
            rows["adv"].append(a)
            rows["traj_tokens"].append(total)
            rows["traj"].append(ti)
    return rows


def carries_gradient(adv, cfg: TrainConfig, skip_zero_advantage: bool = True) -> np.ndarray:
    """Which chunks the update passes forward and backward: with no KL and no entropy term, a chunk
    whose advantage is 0 has zero gradient (see ``update``)."""
    if skip_zero_advantage and cfg.kl_coef == 0 and cfg.entropy_coef == 0:
        return np.asarray(adv) != 0
    return np.ones(len(adv), dtype=bool)


# --- 3b. mirror images (``mirror_augment``) -----------------------------------------------------
def mirror_observation(obs: dict, cameras) -> dict:
    """An observation dict -> the one from the mirrored scene: the policy's (head) camera images
    with their columns reversed, the dual-arm proprio mirrored; other cameras are left out."""
    return {**obs, spec.IMAGES: {c: mirror_image(obs[spec.IMAGES][c]) for c in cameras},
            spec.PROPRIO: mirror_dual_arm(obs[spec.PROPRIO])}


def acting_arm_dims(chunks: np.ndarray, traj: np.ndarray) -> np.ndarray:
    """Per chunk, the action dims (its joints and gripper) of the arm that moved more over the
    chunk's whole trajectory: the span of its six commanded joints, summed. ``chunks``: (N, T, 14)
    decoded actions; ``traj``: (N,) trajectory index."""
    n = spec.DOF_PER_ARM
    out = np.zeros((len(chunks), spec.DUAL_ARM_DIM), dtype=bool)
    for t in np.unique(traj):
        rows = traj == t
        a = chunks[rows].reshape(-1, spec.DUAL_ARM_DIM)
        span = a.max(0) - a.min(0)
        arm = int(span[n : n + 6].sum() > span[:6].sum())  # 0: left, 1: right
        out[rows, arm * n : (arm + 1) * n] = True
    return out


@torch.no_grad()
def add_mirror_images(batch: dict, policy: TorchPolicy, temperature: float, carries: np.ndarray,
                      chunk_rows: int = 64) -> dict:
    """``batch`` (``flatten``) with every chunk's mirror image appended.

    The workcell is left-right symmetric (``pushcut.sim.twin.mirror``), so a trajectory's mirror
    image is a trajectory of the same task from the mirrored initial state, by the other arm, with
    the same outcome: it gets the same advantage and belongs to a new trajectory (index ``traj + n``).
    Only the tokens of the arm that mirrors the trajectory's acting arm (the one that moved more)
    carry it: the arm that held still is not told to hold still in the mirrored scene, which a
    policy that does not yet tell the sides apart would take as the opposite of what the original
    teaches it. Its bins were not sampled from the policy, so their old log-probs are the policy's
    own before this update, at the rollout ``temperature``: the PPO ratio starts at 1 and the clip
    bounds how far one update moves toward them. An arm that the start never moves gets a gradient
    from the other arm's successes instead of waiting for a sample to succeed by chance. Old
    log-probs are taken only for the chunks that ``carries`` (the others never enter the update;
    theirs are NaN)."""
    n = len(batch["bins"])
    if not n:
        return batch
    cfg = policy.cfg
    traj = np.asarray(batch["traj"])
    mobs = [mirror_observation(o, cfg.cameras) for o in batch["obs"]]
    # arms swapped, yaw and roll joints negated: the robot's limits are symmetric in those joints, so
    # with the robot's bounds each bin maps exactly onto its mirror bin
    mchunks = mirror_dual_arm(policy.decode(np.stack(batch["bins"])))  # (N, chunk_len, action_dim)
    mbins = encode_chunks(mchunks, policy.action_tokenizer, policy.action_norm)
    acting = acting_arm_dims(mchunks, traj)  # the mirror of the acting arm acts in the mirrored trajectory
    mmask = np.stack(batch["mask"]).reshape(n, cfg.chunk_len, cfg.action_dim) & acting[:, None, :]
    mmask = mmask.reshape(n, -1)
    per_traj = {t: int(mmask[traj == t].sum()) for t in np.unique(traj)}
    mlogp = np.full(mbins.shape, np.nan, dtype=np.float32)
    rows = np.flatnonzero(carries)
    if len(rows):
        mlogp[rows] = policy_log_probs(policy, [mobs[i] for i in rows], mbins[rows], temperature, chunk_rows)
    n_traj = int(traj.max()) + 1
    return {
        "obs": batch["obs"] + mobs,
        "bins": batch["bins"] + list(mbins),
        "logp": batch["logp"] + list(mlogp),
        "mask": batch["mask"] + list(mmask),
        "adv": batch["adv"] + batch["adv"],
        "traj_tokens": batch["traj_tokens"] + [per_traj[t] for t in traj],
        "traj": batch["traj"] + [int(t) + n_traj for t in traj],
    }


def micro_batches(shares: list[np.ndarray], rank: int, size: int | None, sharded: bool) -> list[np.ndarray]:
    """This rank's rows of a mini-batch (``shares[rank]``) in forward/backward passes of at most
    ``size`` chunks (None: one pass), their gradients accumulated. Sharded (FSDP), every rank takes
    part in as many passes as the busiest one, and in at least one: empty pieces pad the rest."""
    mine = shares[rank]
    size = size or max(1, *(len(s) for s in shares))
    pieces = [mine[i : i + size] for i in range(0, len(mine), size)]
    if sharded:
        busiest = max(1, *(-(-len(s) // size) for s in shares))
        pieces += [mine[:0]] * (busiest - len(pieces))
    return pieces


def mini_batch_rows(traj: np.ndarray, mini_batches: int, split: str, gen: torch.Generator) -> list[np.ndarray]:
    """One pass's mini-batches as row indices into the chunk batch (``traj``: each chunk's
    trajectory): the chunks shuffled and cut into ``mini_batches`` (``split=chunks``), or the
    trajectories shuffled and cut, each mini-batch holding its trajectories' chunks whole
    (``split=trajectories``, the reference's)."""
    if split == "chunks":
        return np.array_split(torch.randperm(len(traj), generator=gen).numpy(), mini_batches)
    ids = np.unique(traj)
    order = ids[torch.randperm(len(ids), generator=gen).numpy()]
    return [np.flatnonzero(np.isin(traj, part)) for part in np.array_split(order, mini_batches)]


def step_divisor(mb_traj: np.ndarray, n_traj: int, cfg: TrainConfig) -> float:
    """What an optimiser step's loss is divided by: the whole batch's trajectories
    (``loss_normalization=batch``: the steps add up to one full-batch mean), or the step's own share
    (``step``): the trajectories it holds when mini-batches hold whole trajectories, as the
    reference, else an even share of them."""
    if cfg.loss_normalization == "batch":
        return n_traj
    return len(np.unique(mb_traj)) if cfg.minibatch_split == "trajectories" else n_traj / cfg.mini_batches


def demo_loss(model, policy: TorchPolicy, demos: dict[str, torch.Tensor], n: int, gen: torch.Generator) -> torch.Tensor:
    """Token cross-entropy of ``n`` demo chunks drawn at random (``sft.start_demos``)."""
    idx = torch.randint(0, len(demos["bins"]), (min(n, len(demos["bins"])),), generator=gen)
    dtype = model.compute_dtype
    inputs = {k: v[idx].to(policy.device, dtype if v.is_floating_point() else None)
              for k, v in demos.items() if k != "bins"}
    return token_loss(model(**inputs), demos["bins"][idx].to(policy.device))


def kl_passed(step_stats: dict[str, float], step_tokens: float, target_kl: float, world: int) -> bool:
    """Whether the mini-batch's approx_kl (token-weighted over every rank's rows) passes ``target_kl``;
    every rank gets the same answer."""
    kl = torch.tensor([step_stats.get("approx_kl", 0.0), step_tokens], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(kl)
    return bool(kl[0] / kl[1].clamp(min=1.0) > target_kl)


def optimizer_step(model, opt, grad_clip: float, sharded: bool, world: int) -> float:
    """Sum the ranks' gradients (FSDP has reduced them already), clip, step; returns the norm."""
    if not sharded:
        for p in (p for p in model.parameters() if p.requires_grad):
            if p.grad is None:  # no rows here: step (and join the all-reduce) with zero gradients
                p.grad = torch.zeros_like(p)
            if world > 1:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    opt.step()
    return float(grad_norm)


def piece_loss(model, ref_model, policy: TorchPolicy, batch: dict, rows: np.ndarray, divisor: float,
               temp: float, cfg: TrainConfig) -> tuple:
    """One forward pass's share of a step's loss: the PPO clip term (``ppo_clip_loss``), less the
    entropy bonus, plus the k3 KL to the reference (``kl_penalty=loss_k3``); returns it with the
    clip term, the stats, the token mask, the entropies and the policy's features."""
    dev = policy.device
    inputs = policy.inputs([batch["obs"][i] for i in rows])
    logits, features = model(**inputs, features=True)  # (n, A, n_bins), (n, hidden)
    bins = torch.from_numpy(np.stack([batch["bins"][i] for i in rows])).to(dev)
    logp = sampling.token_log_probs(logits, bins, temp)  # (n, A)
    old = torch.from_numpy(np.stack([batch["logp"][i] for i in rows])).to(dev)
    mask = torch.from_numpy(np.stack([batch["mask"][i] for i in rows])).to(dev)
    adv = torch.tensor([batch["adv"][i] for i in rows], dtype=torch.float32, device=dev)
    traj_tokens = torch.tensor([batch["traj_tokens"][i] for i in rows], dtype=torch.float32, device=dev)
    pg_loss, stats = ppo_clip_loss(logp, old, adv, mask, traj_tokens, divisor, cfg.clip_ratio_low, cfg.clip_ratio_high)
    weight = mask.float() / traj_tokens[:, None].clamp(min=1) / divisor
    ent = sampling.entropy(logits, temp)
    loss = pg_loss - cfg.entropy_coef * (ent * weight).sum()
    if ref_model is not None and cfg.kl_coef > 0 and cfg.kl_penalty == "loss_k3":
        with torch.no_grad():
            ref_logp = sampling.token_log_probs(ref_model(**inputs), bins, temp)
        kl = kl_k3(logp, ref_logp)
        loss = loss + cfg.kl_coef * (kl * weight).sum()
        stats["kl_ref"] = (kl * mask).sum() / mask.sum().clamp(min=1)
    return loss, pg_loss, stats, mask, ent, features


def update(model, ref_model, opt, policy: TorchPolicy, batch: dict, n_traj: int, cfg: TrainConfig,
           gen: torch.Generator, skip_zero_advantage: bool = True, temperature: float | None = None,
           demos: dict[str, torch.Tensor] | None = None,
           critic: tuple[ValueHead, torch.optim.Optimizer] | None = None) -> dict[str, float]:
    """``cfg.ppo_epochs`` passes over ``batch``, each in ``cfg.mini_batches`` optimiser steps on a
    fresh shuffle; returns mean metrics. Log-probs and entropy are taken at ``temperature``, the one
    the batch was rolled out at (default ``cfg.temperature``). With ``cfg.bc_coef`` > 0 each step
    also learns ``demos`` (``demo_loss``); with ``cfg.target_kl``, the update ends before the step
    of the first mini-batch whose approx_kl passes it (``opt_steps`` counts the steps taken).

    With no KL and no entropy term, a chunk whose advantage is 0 (a uniform group, which only
    dynamic sampling off lets in) has zero gradient, so ``skip_zero_advantage`` leaves it out of
    the forward and backward pass: the mini-batches, ``n_traj`` and the optimiser steps stay those
    of the whole batch, so the update is the same, only cheaper. The logged ratio, clipfrac,
    approx_kl and entropy then cover the chunks that carry gradient.

    ``critic`` (``algorithm: ppo``; the value head and its optimiser) learns the batch's
    ``returns`` on the same mini-batches, one step per policy step.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    sharded = is_sharded(model)
    temp = cfg.temperature if temperature is None else temperature
    carries = carries_gradient(batch["adv"], cfg, skip_zero_advantage)
    traj = np.asarray(batch["traj"])
    passes = [mini_batch_rows(traj, cfg.mini_batches, cfg.minibatch_split, gen) for _ in range(cfg.ppo_epochs)]
    metrics: dict[str, list[float]] = {}
    steps = 0
    model.train()
    for mb in (mb for minibatches in passes for mb in minibatches):
        if len(mb) == 0:  # fewer chunks than mini-batches (the same on every rank)
            continue
        divisor = step_divisor(traj[mb], n_traj, cfg)
        shares = [s[carries[s]] for s in (mb[r::world] for r in range(world))]  # each rank's rows
        opt.zero_grad(set_to_none=True)
        if critic is not None:
            critic[1].zero_grad(set_to_none=True)
        step_stats: dict[str, float] = {}  # this mini-batch's: pg_loss summed over its passes, the rest token-weighted
        step_tokens = 0.0
        for piece in micro_batches(shares, rank, cfg.learner.micro_batch, sharded):
            rows = piece if len(piece) else mb[:1]  # an empty piece joins FSDP's collectives with weight 0
            loss, pg_loss, stats, mask, ent, features = piece_loss(model, ref_model, policy, batch, rows, divisor,
                                                                   temp, cfg)
            if critic is not None and len(piece):  # the critic's share of the mini-batch's mean (ranks add up)
                returns = torch.tensor([batch["returns"][i] for i in rows], dtype=torch.float32, device=policy.device)
                v_loss = value_loss(critic[0], features, returns) / len(mb)
                v_loss.backward()
                stats["value_loss"] = v_loss.detach() * len(mb) / len(rows)
            # shard losses add up to the batch's; FSDP averages gradients over ranks, so scale back
            (loss * (world if sharded else 1) * (1 if len(piece) else 0)).backward()
            if len(piece):
                stats.update(entropy=(ent * mask).sum() / mask.sum().clamp(min=1))
                n_tok = float(mask.sum())
                step_tokens += n_tok
                step_stats["pg_loss"] = step_stats.get("pg_loss", 0.0) + float(pg_loss.detach())
                for k, v in stats.items():
                    step_stats[k] = step_stats.get(k, 0.0) + float(v.detach()) * n_tok
        for k, v in step_stats.items():
            metrics.setdefault(k, []).append(v if k == "pg_loss" else v / max(step_tokens, 1.0))
        if cfg.target_kl is not None and kl_passed(step_stats, step_tokens, cfg.target_kl, world):
            break
        if cfg.bc_coef > 0:  # each rank's own draw: their mean is the term (FSDP averages, else a sum)
            bc = demo_loss(model, policy, demos, cfg.bc_batch, gen)
            (cfg.bc_coef * bc / (1 if sharded else world)).backward()
            metrics.setdefault("bc_loss", []).append(float(bc.detach()))
        metrics.setdefault("grad_norm", []).append(optimizer_step(model, opt, cfg.grad_clip, sharded, world))
        if critic is not None:
            optimizer_step(critic[0], critic[1], cfg.grad_clip, False, world)
        steps += 1
    model.eval()
    return {k: float(np.mean(v)) for k, v in metrics.items()} | {"opt_steps": float(steps)}


# --- the loop -----------------------------------------------------------------------------------
def collect(pool: WorkerPool | ColocatedPool, cfg: TrainConfig, state: dict,
            temperature: float | None = None) -> tuple[list[Trajectory], dict]:
    """Draw groups at ``temperature`` (default ``cfg.temperature``) until ``groups_per_iter`` are kept
    (dynamic sampling) or draws run out."""
    kept: list[Trajectory] = []
    drawn: list[Trajectory] = []
    n_kept, rounds = 0, 0
    while n_kept < cfg.groups_per_iter and rounds < cfg.max_draw_rounds:
        need = cfg.groups_per_iter - n_kept
        jobs = []
        for g, (seed, size) in enumerate(initial_states(cfg, state, need)):
            gid = state["next_group"] + g
            jobs += [Job(gid, seed, s, cfg.seed * 1_000_003 + gid * 64 + s) for s in range(size)]
        state["next_group"] += need
        trajs = pool.rollout(jobs, cfg.temperature if temperature is None else temperature, cfg.rollout_max_steps)
        if cfg.curriculum.layouts:
            outcomes: dict[int, list[int]] = {}
            for t in trajs:
                outcomes.setdefault(t.seed - cfg.train_seed_start, []).append(int(t.success))
            curriculum.record(state.setdefault("layouts", {}), outcomes, cfg.curriculum.window)
        drawn += trajs
        keep = mixed_groups(trajs, cfg.group_success_bounds) if cfg.dynamic_sampling else {t.group for t in trajs}
        kept += [t for t in trajs if t.group in keep]
        n_kept += len(keep)
        rounds += 1
        if not cfg.dynamic_sampling:
            break
    info = {
        "reward": float(np.mean([t.reward for t in drawn])),
        "drawn_groups": len(group_rewards(drawn)),
        "kept_groups": n_kept,
        "draw_rounds": rounds,
        "episode_steps": float(np.mean([t.steps for t in drawn])),
        "group_size": len(drawn) / max(len(group_rewards(drawn)), 1),
    }
    info.update(by_side(drawn, kept))
    if cfg.curriculum.layouts:
        info.update(curriculum.summary(state["layouts"], cfg.curriculum.layouts))
    return kept, info


def by_side(drawn: list[Trajectory], kept: list[Trajectory]) -> dict:
    """On the dual-arm twin, rollout success and kept groups by the arm each layout needs
    (``reward_left``, ``kept_groups_left``, ...): which side the update learns from. Empty for an env
    without sides."""
    out = {}
    for side in sorted({t.side for t in drawn if t.side is not None}):
        out[f"reward_{side}"] = float(np.mean([t.reward for t in drawn if t.side == side]))
        out[f"kept_groups_{side}"] = len({t.group for t in kept if t.side == side})
    return out


def initial_states(cfg: TrainConfig, state: dict, need: int) -> list[tuple[int, int]]:
    """The next ``need`` groups' initial-state seeds and sizes: a new seed per group with
    ``n_samples`` rollouts, or with a curriculum, layouts drawn from its pool by their success."""
    c = cfg.curriculum
    if not c.layouts:
        return [(cfg.train_seed_start + state["next_group"] + g, cfg.n_samples) for g in range(need)]
    picks = curriculum.draw(state.setdefault("layouts", {}), need, c.layouts, cfg.n_samples, c.max_samples,
                            cfg.seed, state["next_group"])
    return [(cfg.train_seed_start + layout, size) for layout, size in picks]


def no_signal_message(info: dict, iteration: int) -> str:
    """Why an iteration whose groups were all successes or all failures updates nothing."""
    outcome = {0.0: "every rollout failed", 1.0: "every rollout succeeded"}.get(
        info["reward"], "every group was all successes or all failures")
    return (f"grpo iteration {iteration}: {outcome} in {info['drawn_groups']} groups, so no advantage is "
            "non-zero and the policy does not change. If this persists, GRPO has no signal: a start that "
            "never succeeds cannot improve, and a learning rate too high for the start can collapse it "
            "(watch approx_kl).")


def lr_at(cfg: TrainConfig, iteration: int) -> float:
    """The learning rate of update ``iteration`` (1-based): ``cfg.lr`` after a linear warmup over
    ``cfg.lr_warmup_iters`` iterations. Adam's first steps move every weight by about lr, whatever
    the gradient's size, so a sharp SFT start can be thrown far by its first update at full lr."""
    return cfg.lr * min(1.0, iteration / cfg.lr_warmup_iters) if cfg.lr_warmup_iters else cfg.lr


def rollout_temperature(cfg: TrainConfig, iteration: int, wall_s: float) -> float:
    """The temperature of update ``iteration`` (1-based), which starts after ``wall_s`` seconds of the
    run: ``cfg.late_temperature`` once the run is past ``1 - cfg.late_fraction`` of its time budget
    (when set) or of its iterations, whichever comes first; ``cfg.temperature`` before that, and
    throughout when no late temperature is set. At the recipe's T = 1.6 the reward improves a broad
    sampled sweep that greedy decoding does not follow; a late phase nearer greedy improves that."""
    if cfg.late_temperature is None:
        return cfg.temperature
    progress = (iteration - 1) / cfg.iterations
    if cfg.time_budget_s is not None:
        progress = max(progress, wall_s / cfg.time_budget_s)
    return cfg.late_temperature if progress >= 1 - cfg.late_fraction else cfg.temperature


def eval_due(cfg: TrainConfig, iteration: int) -> bool:
    """Greedy evaluation runs before the first iteration and after every ``eval_every``-th."""
    return bool(cfg.eval_every and cfg.eval_episodes) and iteration % cfg.eval_every == 0


def rollouts(run: Run, weights, temperature: float) -> tuple[list[Trajectory], dict]:
    """1-2. Groups rolled out at ``temperature`` with dynamic sampling (rank 0's workers, or every
    rank colocated), the same kept trajectories on every learner rank."""
    payload = [None]
    if run.rolls:
        t0 = time.perf_counter()
        run.pool.set_weights(weights)
        sync_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept, info = collect(run.pool, run.cfg, run.state, temperature)
        info.update(rollout_s=time.perf_counter() - t0, sync_s=sync_s)
        payload = [(kept, info, run.state["next_group"])]
    if run.world > 1 and not run.colocated:  # colocated ranks gathered the same trajectories already
        dist.broadcast_object_list(payload, src=0)
    kept, info, run.state["next_group"] = payload[0]
    return kept, info


def advantages(run: Run, kept: list[Trajectory], info: dict, temperature: float) -> tuple[dict, int]:
    """3. Group-normalised advantages, broadcast over each trajectory's tokens (with
    ``kl_penalty=reward_k1``, from rewards less ``kl_coef`` times each trajectory's k1 estimate
    against the reference); 3b. with ``mirror_augment``, each kept trajectory's mirror image with
    the same advantage. Returns the chunk batch and its number of trajectories."""
    cfg = run.cfg
    penalties = None
    if run.ref_policy is not None and cfg.kl_penalty == "reward_k1" and kept:
        ref_lp = reference_log_probs(run.ref_policy, kept, temperature)
        kl = [k1_penalties(t.logp, r, t.token_mask) for t, r in zip(kept, ref_lp)]
        penalties = [cfg.kl_coef * k for k in kl]
        info["kl_reward"] = float(np.mean(kl))  # per trajectory, summed over its tokens (what comes off)
        info["kl_reward_token"] = k1_token_mean(kl, kept)  # per token, as the reference logs it
    adv = {(g, k): float(a) for g, r in group_rewards(kept, penalties, cfg.success_reward).items()
           for k, a in enumerate(grpo_advantages(r))}
    batch = flatten(kept, adv)
    n_traj = len(kept)
    if cfg.algorithm == "ppo" and kept:  # the critic's GAE advantages per chunk instead of the group's
        values = chunk_values(run.critic, run.model, run.policy, batch["obs"])
        last = {i: cfg.success_reward * t.reward - (penalties[i] if penalties else 0.0) for i, t in enumerate(kept)}
        batch["adv"], batch["returns"], info["explained_variance"] = chunk_advantages(
            np.asarray(batch["traj"]), last, values, cfg.gamma, cfg.gae_lambda)
        batch["adv"], batch["returns"] = list(batch["adv"]), list(batch["returns"])
        info["value_mean"] = float(values.mean())
        return batch, n_traj
    if cfg.mirror_augment and kept:
        batch = add_mirror_images(batch, run.policy, temperature, carries_gradient(batch["adv"], cfg))
        n_traj *= 2
    if run.is_main and not any(adv.values()):  # say why nothing changes instead of spinning silently
        say(no_signal_message(info, run.state["iteration"] + 1))
    return batch, n_traj


def learn(run: Run, batch: dict, n_traj: int, temperature: float) -> dict[str, float]:
    """4. The update at this iteration's learning rate."""
    opt = run.opt
    for group in opt.param_groups:
        group["lr"] = lr_at(run.cfg, run.state["iteration"] + 1)
    t0 = time.perf_counter()
    critic = (run.critic, run.critic_opt) if run.critic is not None else None
    metrics = (update(run.model, run.ref_model, opt, run.policy, batch, n_traj, run.cfg, run.gen,
                      temperature=temperature, demos=run.demos, critic=critic) if n_traj else {})
    return {**metrics, "update_s": time.perf_counter() - t0, "lr": opt.param_groups[0]["lr"],
            "temperature": temperature}


def train(cfg: TrainConfig, run_dir: str | Path, progress: bool = True) -> Path:
    """Run (or resume) GRPO in ``run_dir``; returns the checkpoint path."""
    run = grpo_run.start(cfg, Path(run_dir), progress)
    try:
        weights = run.sync_weights()
        if run.state["iteration"] == 0 and eval_due(cfg, 0):
            grpo_run.evaluate_start(run, weights)
        while run.state["iteration"] < cfg.iterations and not run.out_of_time():
            t_iter = time.perf_counter()
            temperature = rollout_temperature(cfg, run.state["iteration"] + 1, run.state["wall_s"])
            kept, info = rollouts(run, weights, temperature)  # 1-2
            batch, n_traj = advantages(run, kept, info, temperature)  # 3
            metrics = learn(run, batch, n_traj, temperature)  # 4
            weights = run.sync_weights()
            run.state["iteration"] += 1
            it = run.state["iteration"]
            if run.rolls and eval_due(cfg, it):  # 5
                metrics.update(run.evaluate_and_keep_best(weights, it))
            grpo_run.log_iteration(run, metrics, info, len(batch["bins"]), t_iter)
            if it % cfg.save_every == 0 or it == cfg.iterations:  # 6
                save_state(run.run_dir, run.model, run.opt, run.policy, cfg, run.state, run.gen, weights,
                           run.extras())
            if run.world > 1:
                dist.barrier()
        save_state(run.run_dir, run.model, run.opt, run.policy, cfg, run.state, run.gen, weights, run.extras())
        if run.is_main:
            start = next((r["eval_success"] for r in read_metrics(run.logger.path) if r.get("step") == 0
                          and "eval_success" in r), None)
            plot_curves(run.logger.path, ["eval_success", "reward", "reward_left", "reward_right", "kept_groups",
                                          "clipfrac", "approx_kl", "entropy"],
                        run.run_dir / "learning_curve.png", "GRPO",
                        marks={"eval_success": ("SFT start", start)} if start is not None else None)
    finally:
        run.close()
    return run.run_dir / "checkpoint"


# --- gradient noise: how far one update's gradient is from the expected one --------------------
def flat_grad(model) -> torch.Tensor:
    """The optimised parameters' gradients as one float64 vector (zeros where none), then cleared."""
    g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().double().flatten()
                   for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    return g


def policy_gradient(model, policy: TorchPolicy, batch: dict, n_traj: int, cfg: TrainConfig,
                    temperature: float, chunk_rows: int = 64) -> torch.Tensor:
    """The gradient of the clip term on ``batch`` (``flatten``) at the weights that rolled it out:
    the ratio is 1, so it is the policy gradient with the batch's advantages, the direction the
    update's first step starts from (no KL, entropy or BC term; no step)."""
    model.zero_grad(set_to_none=True)
    model.train()
    rows = np.flatnonzero(carries_gradient(batch["adv"], cfg))
    for piece in np.array_split(rows, max(1, -(-len(rows) // chunk_rows))):
        if len(piece):
            piece_loss(model, None, policy, batch, piece, n_traj, temperature, cfg)[1].backward()
    model.eval()
    return flat_grad(model)


def noise_scale(grads: list[torch.Tensor], batch: float) -> dict:
    """The simple gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch
    Training") from k >= 2 independent gradient estimates, each a mean over ``batch`` samples.

    E[g_i . g_j] = |G|^2 for i != j, so the mean pairwise dot product estimates the expected
    gradient's squared norm without bias (``signal_sq``; it can come out <= 0 when the signal lies
    under the noise of k batches); E|g_i|^2 = |G|^2 + tr(Sigma) / batch gives the per-sample noise
    ``noise_trace``. ``noise_scale`` = tr(Sigma) / |G|^2 is the batch at which a gradient's noise
    equals its signal: under it, each step's direction is mostly noise and a larger batch improves
    it almost in proportion (None when ``signal_sq`` <= 0). ``signal_to_noise`` is |G|^2 over one
    batch's noise, tr(Sigma) / batch. ``cosines``: each pair's."""
    if len(grads) < 2:
        raise ValueError(f"noise_scale needs at least 2 independent gradients, got {len(grads)}")
    g = torch.stack([x.double() for x in grads])
    dots = g @ g.T
    i, j = torch.triu_indices(len(grads), len(grads), 1)
    signal = float(dots[i, j].mean())
    mean_sq = float(dots.diagonal().mean())
    trace = batch * (mean_sq - signal)
    norms = dots.diagonal().sqrt()
    return {"batches": len(grads), "batch": batch, "signal_sq": signal, "mean_sq": mean_sq, "noise_trace": trace,
            "signal_to_noise": signal * batch / trace if trace > 0 else None,
            "noise_scale": trace / signal if signal > 0 else None,
            "cosines": (dots[i, j] / (norms[i] * norms[j])).tolist()}


def gradient_noise(cfg: TrainConfig, run_dir: str | Path, batches: int) -> dict:
    """The start's (``cfg.init_checkpoint``) policy gradient on ``batches`` independent batches, each
    drawn and kept as one iteration of ``cfg`` would (``groups_per_iter`` kept groups, new initial
    states every time), with no update between them: ``noise_scale`` over them, per batch its reward,
    kept groups and gradient norm, and with ``cfg.bc_coef`` > 0 the BC term's gradient as one
    optimiser step adds it (``bc_coef`` x the cross-entropy of ``bc_batch`` demo chunks): its norm
    and its cosine with the batches' mean policy gradient. Says whether an update's direction is
    signal or noise before a run spends its budget finding out."""
    run = grpo_run.start(cfg, Path(run_dir), progress=False)
    try:
        weights = run.sync_weights()
        grads, rows = [], []
        for _ in range(batches):
            kept, info = rollouts(run, weights, cfg.temperature)
            batch, n_traj = advantages(run, kept, info, cfg.temperature)
            if not n_traj:
                raise RuntimeError(f"gradient_noise: batch {len(grads) + 1} kept no group with both successes and "
                                   f"failures in {info['drawn_groups']} groups (reward {info['reward']:.2f}): "
                                   "there is no policy gradient to measure")
            grads.append(policy_gradient(run.model, run.policy, batch, n_traj, cfg, cfg.temperature))
            rows.append({"reward": info["reward"], "kept_groups": info["kept_groups"],
                         "drawn_groups": info["drawn_groups"], "trajectories": n_traj,
                         "grad_norm": float(grads[-1].norm())})
        out = {**noise_scale(grads, float(np.mean([r["trajectories"] for r in rows]))), "per_batch": rows}
        if cfg.bc_coef > 0:
            run.model.train()
            (cfg.bc_coef * demo_loss(run.model, run.policy, run.demos, cfg.bc_batch, run.gen)).backward()
            run.model.eval()
            bc, mean = flat_grad(run.model), torch.stack(grads).mean(0)
            out["bc"] = {"grad_norm": float(bc.norm()), "cosine_with_policy_gradient":
                         float(bc @ mean / (bc.norm() * mean.norm()).clamp(min=1e-30))}
        return out
    finally:
        run.close()


def _main(cfg: TrainConfig, run_dir: Path) -> None:
    print(f"checkpoint: {train(cfg, run_dir)}")
    best = Path(run_dir) / "best"
    if (best / "meta.json").exists():
        meta = checkpoint.read_meta(best, verify=False)
        print(f"best: {best} (iteration {meta['iteration']}, greedy success {meta['eval_success']:.1%} "
              f"on {cfg.eval_episodes} validation seeds from {cfg.eval_seed_start})")


main = hydra_entry("train", TrainConfig, _main)


if __name__ == "__main__":
    main()
