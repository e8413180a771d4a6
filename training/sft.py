"""``pushcut-sft``: supervised fine-tuning of the VLA on expert demos.

Cross-entropy on the action tokens of each demo chunk (the known pitfall: an SFT that trains a
regression head leaves the token head untrained and RL then starts from 0%). Normalisation
statistics are computed from exactly the demos used, and saved in the checkpoint.

Resumable like GRPO: every ``save_every`` steps ``<run_dir>/checkpoint`` holds the weights, AdamW's
state, both RNGs and the step; run the same command in the same run directory
(``hydra.run.dir=<run_dir>``) and it says "resuming from step N", drops the metrics rows logged
after that checkpoint, continues the same wandb run, and ends with the same weights as a run that
was never interrupted. The final checkpoint keeps the weights only.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pushcut import spec
from pushcut.configs import hydra_entry, to_dataclass, to_dict
from pushcut.policy import checkpoint
from pushcut.policy.action_tokenizer import ActionTokenizer, Normalizer, encode_chunks
from pushcut.policy.config import PolicyConfig
from pushcut.policy.lora import add_adapters, base_hash, merged_weights, optimised_parameters, trainable_tensors
from pushcut.policy.modeling import VLAPolicy
from pushcut.policy.preprocess import ByteTokenizer, build_inputs, proprio_normalizer
from pushcut.sim import demos
from pushcut.sim.config import read_env, upgrade_env_record
from pushcut.sim.registry import action_mask, robot_bounds
from pushcut.sim.twin.mirror import mirror_episode
from pushcut.training.config import SFTConfig
from pushcut.training.learner import load_adapters, load_optimizer_and_rng, load_weights, resume_tensors
from pushcut.training.run_log import RunLogger, keep_metrics_before, plot_curves


def env_differences(recorded: dict, wanted) -> dict[str, tuple]:
    """The env fields on which demos recorded with the env config ``recorded`` (as their meta stores
    it) differ from ``wanted``: name -> (recorded, wanted). ``max_steps`` does not count, nor
    recorded cameras beyond the wanted ones (training reads the policy's), nor the randomisation's
    ranges where both have it off."""
    have, want = to_dict(read_env(recorded, "the demos' meta.json env")), to_dict(wanted)
    if not (have["randomization"]["enabled"] or want["randomization"]["enabled"]):
        have["randomization"] = want["randomization"]
    out = {k: (have.get(k), v) for k, v in want.items() if k != "max_steps" and have.get(k) != v}
    if "cameras" in out and set(want["cameras"]) <= set(have["cameras"]):
        del out["cameras"]
    return out


def ensure_demos(cfg: SFTConfig, env_cfg) -> Path:
    """The task's demo folder, recorded with the scripted expert if it lacks enough episodes;
    refused where its demos were recorded on another env (randomised or not, another image size,
    camera, speed, ...): they would teach what that env showed, not this one."""
    folder = Path(cfg.demos_dir) / demos.folder_name(env_cfg)
    meta = folder / "meta.json"
    if meta.exists():
        try:
            recorded = demos.load(folder).meta
        except ValueError:
            recorded = None
        if recorded is not None:
            if diff := env_differences(recorded["env"], env_cfg):
                detail = "; ".join(f"{k}: {a} there, {b} here" for k, (a, b) in diff.items())
                raise ValueError(f"{folder} holds demos recorded on another env ({detail}): give this SFT its "
                                 "own demos_dir (they are recorded there), or record these again")
            if len(recorded["episodes"]) >= cfg.demos_per_task:
                return folder
    every = max(1, cfg.policy.chunk_len // 5)  # four more observations per chunk, shifted
    return demos.record(
        demos.DemosConfig(env=env_cfg, num_episodes=cfg.demos_per_task, chunk_len=cfg.policy.chunk_len,
                          obs_offsets=tuple(range(every, cfg.policy.chunk_len, every))[:4], out_dir=cfg.demos_dir)
    )


def chunk_targets(actions: np.ndarray, start: int, chunk_len: int) -> np.ndarray:
    """Actions ``start .. start+chunk_len`` of an episode, padded by repeating the last one."""
    chunk = actions[start : start + chunk_len]
    if len(chunk) < chunk_len:
        chunk = np.vstack([chunk, np.repeat(actions[-1:], chunk_len - len(chunk), axis=0)])
    return chunk


def demo_sets(cfg: SFTConfig) -> list[demos.DemoSet]:
    """The demos SFT trains on, one set per task (recorded first where missing); with
    ``mirror_demos``, each set also holds its episodes' mirror images, after the originals."""
    src, sets = cfg.lerobot, []
    if src.root is None or src.share is not None:
        sets = [demos.load(ensure_demos(cfg, env), max_episodes=cfg.demos_per_task)
                for env in demos.task_envs(cfg.env, cfg.tasks)]
    if src.root is not None:
        sets += demos.from_lerobot(src.root, cfg.env, dict(zip(cfg.policy.cameras, src.cameras, strict=True)),
                                   src.state, src.action, max_episodes=cfg.demos_per_task)
    if cfg.mirror_demos:  # the workcell is left-right symmetric: each demo's mirror image is a demo too
        sets = [replace(s, episodes=s.episodes + [mirror_episode(e, cfg.policy.cameras) for e in s.episodes])
                for s in sets]
    return sets


def norm_statistics(sets: list[demos.DemoSet], bounds: dict | None = None, mask: list[bool] | None = None) -> dict:
    """Normalisation statistics of the demos; ``bounds`` (``sim.registry.robot_bounds``) replace
    their min/max and q01/q99 where given; ``mask`` (``sim.registry.action_mask``): the action dims
    normalised, the others left as they are.

    With a handful of demos the demos' own bounds are the trap: one click_bell demo moves one arm,
    so the other arm's bounds coincide (it can never move) and the moving arm is confined to that
    one trajectory's box, which no amount of RL can leave. The robot's limits do not have that
    problem, at the cost of coarser bins than a large dataset's own bounds.
    """
    acts = np.concatenate([e["actions"] for s in sets for e in s.episodes])
    props = np.concatenate([e["obs_proprio"] for s in sets for e in s.episodes])
    stats = {"action": demos.array_stats(acts), "proprio": demos.array_stats(props)}
    for key, (lo, hi) in (bounds or {}).items():
        stats[key] |= {"min": list(lo), "max": list(hi), "q01": list(lo), "q99": list(hi)}
    if mask is not None:
        stats["action"]["mask"] = list(mask)
    return stats


def prompt_tokenizer(policy_cfg: PolicyConfig) -> ByteTokenizer:
    """The tokenizer SFT encodes prompts with (and saves in the checkpoint)."""
    return ByteTokenizer(max_len=policy_cfg.max_prompt_len)


def build_dataset(policy_cfg: PolicyConfig, sets: list[demos.DemoSet], norm_stats: dict):
    """Model inputs and target bins for every stored observation, normalised with ``norm_stats``."""
    action_norm = Normalizer(norm_stats["action"], policy_cfg.normalization, policy_cfg.action_dim)
    tok = ActionTokenizer(policy_cfg.n_bins, policy_cfg.llm.vocab_size)
    text = prompt_tokenizer(policy_cfg)
    observations, targets = [], []
    for s in sets:
        for e in s.episodes:
            for k, step in enumerate(e["obs_steps"]):
                observations.append({
                    spec.IMAGES: {c: e[f"images_{c}"][k] for c in policy_cfg.cameras},
                    spec.PROPRIO: e["obs_proprio"][k],
                    spec.INSTRUCTION: s.meta["instruction"],
                })
                targets.append(chunk_targets(e["actions"], int(step), policy_cfg.chunk_len))
    inputs = build_inputs(observations, policy_cfg.cameras, policy_cfg.vision.image_size, text,
                          proprio_normalizer(norm_stats, policy_cfg.proprio_dim), policy_cfg.center_crop)
    data = {k: torch.from_numpy(v) for k, v in inputs.items()}
    data["bins"] = torch.from_numpy(encode_chunks(np.stack(targets), tok, action_norm))
    return data, text


def start_demos(run_config: dict, policy_cfg: PolicyConfig, norm_stats: dict) -> dict[str, torch.Tensor]:
    """The demos a checkpoint was SFT'd on (read from its run config, ``run_config``), as model
    inputs and target bins normalised with ``norm_stats``: GRPO's behaviour-cloning term."""
    try:
        record = {**run_config, "env": upgrade_env_record(run_config.get("env", {}))}
        cfg = to_dataclass(SFTConfig, record, "the start's run config")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bc_coef needs a start written by pushcut-sft (its demos are the BC data): {exc}") from exc
    data, _ = build_dataset(policy_cfg, demo_sets(cfg), norm_stats)
    return data


def token_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of action-token logits (..., n_bins) against target bins (...).

    ``smoothing`` > 0 replaces each one-hot target by a discretised Gaussian of that std (in bins)
    around it. Neighbouring bins are neighbouring actions, so the policy learns a bump rather than
    a spike: on one demo, one-hot targets drive every constant dimension to a near-delta
    distribution whose argmax RL's sampling then cannot move.
    """
    logp = F.log_softmax(logits, dim=-1)
    if smoothing <= 0:
        return F.nll_loss(logp.flatten(0, -2), target.flatten())
    grid = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    soft = torch.softmax(-0.5 * ((grid - target[..., None].to(logits.dtype)) / smoothing) ** 2, dim=-1)
    return -(soft * logp).sum(-1).mean()


def load_base(cfg: SFTConfig, norm_stats: dict) -> VLAPolicy:
    """The pretrained policy ``cfg.init_checkpoint`` to fine-tune, refused unless its architecture is
    the configured one and its action bins and proprio bounds mean what they mean in these demos
    (with ``norm_bounds: robot`` both span the robot's limits, whatever the task), and its prompt
    tokenizer is the one SFT encodes prompts with."""
    model, base_stats, base_tok, _, _ = checkpoint.load(cfg.init_checkpoint, expected=cfg.policy)
    if base_tok.to_json() != prompt_tokenizer(cfg.policy).to_json():
        raise checkpoint.CheckpointError(f"{cfg.init_checkpoint}: its prompt tokenizer is not SFT's byte tokenizer "
                                         f"(max_len {cfg.policy.max_prompt_len}), so its prompt ids would mean "
                                         "other words")
    def normalizers(stats: dict) -> dict[str, Normalizer]:  # as training and inference build them
        return {"action": Normalizer(stats["action"], cfg.policy.normalization, cfg.policy.action_dim),
                "proprio": proprio_normalizer(stats, cfg.policy.proprio_dim)}

    ours, theirs = normalizers(norm_stats), normalizers(base_stats)
    for key, norm in ours.items():
        if not (np.allclose(norm.lo, theirs[key].lo) and np.allclose(norm.hi, theirs[key].hi)):
            raise checkpoint.CheckpointError(
                f"{cfg.init_checkpoint}: its {key} bounds differ from these demos' ({norm.mode}), so its bins "
                f"would mean other {key}s; train both with norm_bounds=robot")
    return model


def sample_weights(sets: list[demos.DemoSet], share: float | None) -> torch.Tensor | None:
    """Each sample's draw probability when a LeRobot dataset (``share`` of each batch) is mixed with
    pushcut's demos (the rest), in ``build_dataset``'s order; None: every sample alike."""
    if share is None:
        return None
    counts = [(("source" in s.meta), sum(len(e["obs_steps"]) for e in s.episodes)) for s in sets]
    total = {src: sum(n for s, n in counts if s == src) for src in (True, False)}
    if not all(total.values()):
        raise ValueError(f"lerobot.share {share} mixes the dataset with demos_dir's demos; one of them is empty")
    return torch.cat([torch.full((n, ), (share if src else 1 - share) / total[src], dtype=torch.float64)
                      for src, n in counts])


def draw_batch(n: int, size: int, weights: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """A batch's sample indices: uniform over the ``n`` samples, or by ``weights`` (a mix)."""
    if weights is None:
        return torch.randint(0, n, (min(size, n),), generator=gen)
    return torch.multinomial(weights, size, replacement=True, generator=gen)


def lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def sft_model(cfg: SFTConfig, norm_stats: dict) -> tuple[VLAPolicy, str | None]:
    """The model SFT trains: new, or the base ``init_checkpoint``; with ``policy.lora``, the base with
    adapters, and the hash of the base's weights, which the checkpoint records."""
    if cfg.init_checkpoint is None:
        return VLAPolicy(cfg.policy), None
    model = load_base(cfg, norm_stats)
    if not cfg.policy.lora.rank:
        return model, None
    add_adapters(model, cfg.policy.lora, seed=cfg.seed, frozen_dtype=cfg.policy.dtype)
    return model, base_hash(checkpoint.read_meta(cfg.init_checkpoint, verify=False))


def resume_state(ckpt: Path, cfg: SFTConfig, model: VLAPolicy, opt, gen: torch.Generator,
                 lora_base: str | None = None) -> int:
    """Load an interrupted SFT run's weights (with adapters: its adapters and trainable modules, on
    the same base, refused on another), optimizer state and RNGs; returns its completed steps."""
    if lora_base is None:
        meta, extra = load_weights(ckpt, model, "sft")
    else:
        meta, extra = load_adapters(ckpt, model, "sft", lora_base, lambda m: m.get("lora_base"))
    done = int(meta.get("step", meta.get("steps", 0)))  # a checkpoint without "step" is a finished one
    if done < cfg.steps:
        load_optimizer_and_rng(model, opt, gen, extra)
    return done


def train(cfg: SFTConfig, run_dir: str | Path, progress: bool = True) -> Path:
    """Train (or resume) and write ``<run_dir>/checkpoint``; returns its path."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint"
    checkpoint.recover(ckpt)  # a run killed mid-save left the previous checkpoint aside: put it back
    torch.manual_seed(cfg.seed)
    sets = demo_sets(cfg)
    bounds = robot_bounds(cfg.env) if cfg.norm_bounds == "robot" else None
    norm_stats = norm_statistics(sets, bounds, action_mask(cfg.env))
    model, lora_base = sft_model(cfg, norm_stats)
    data, text_tok = build_dataset(cfg.policy, sets, norm_stats)
    n = len(data["bins"])
    opt = torch.optim.AdamW(optimised_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    tasks = [s.meta["task"] for s in sets]
    resume = (ckpt / "meta.json").exists()
    start = resume_state(ckpt, cfg, model, opt, gen, lora_base) if resume else 0
    if resume:
        print(f"sft: resuming from step {start} in {run_dir}")
        keep_metrics_before(run_dir, start)
    logger = RunLogger(run_dir, cfg, cfg.wandb, job="sft", resume=resume)

    def save(step: int, final: bool) -> Path:  # with adapters: merged weights, the adapters beside them
        adapters = trainable_tensors(model) if lora_base else {}
        extra_tensors = None if final else resume_tensors(model, opt, gen) | adapters
        return checkpoint.save(ckpt, model, norm_stats, text_tok, run_config=to_dict(cfg), extra_tensors=extra_tensors,
                               extra={"job": "sft", "tasks": tasks, "demos_per_task": cfg.demos_per_task,
                                      "samples": n, "steps": cfg.steps, "step": step, "lora_base": lora_base},
                               weights=merged_weights(model) if lora_base else None,
                               complete=final, progress=f"step {step} of {cfg.steps}")

    bar = tqdm(range(start, cfg.steps), desc=f"sft {'+'.join(tasks)} ({n} samples)", disable=not progress)
    model.train()
    weights = sample_weights(sets, cfg.lerobot.share)
    for step in bar:
        idx = draw_batch(n, cfg.batch_size, weights, gen)
        logits = model(data["pixels"][idx], data["proprio"][idx], data["input_ids"][idx], data["text_mask"][idx])
        target = data["bins"][idx]  # (B, A)
        loss = token_loss(logits, target, cfg.bin_smoothing)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                acc = (logits.argmax(-1) == target).float().mean()
                bin_err = (logits.argmax(-1) - target).abs().float().mean()
            logger.log({"loss": loss.item(), "token_acc": acc.item(), "bin_err": bin_err.item(),
                        "grad_norm": grad_norm.item(), "lr": lr_at(step, cfg)}, step)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.2f}")
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save(step + 1, final=False)
    model.eval()
    if start < cfg.steps:
        save(cfg.steps, final=True)
    plot_curves(logger.path, ["loss", "token_acc", "bin_err"], run_dir / "sft_curve.png", "SFT")
    if cfg.eval_episodes:
        from pushcut.policy.inference import TorchPolicy
        from pushcut.training.eval import Sampled, run_episodes, summarize

        policy = TorchPolicy(model, norm_stats, text_tok)
        seeds = list(range(100_000, 100_000 + cfg.eval_episodes))
        s = summarize(run_episodes(policy, cfg.env, seeds, cfg.num_envs, progress), cfg.env.task)
        row = {"eval_success": s["success_rate"]}
        if cfg.eval_temperature is not None:  # what GRPO's groups will see: success sampled at its temperature
            sampled = run_episodes(Sampled(policy, cfg.eval_temperature), cfg.env, seeds, cfg.num_envs, progress)
            row["eval_success_sampled"] = summarize(sampled, cfg.env.task)["success_rate"]
        logger.log(row, cfg.steps)
        sampled_note = (f", sampled at T {cfg.eval_temperature:g} {row['eval_success_sampled']:.1%}"
                        if "eval_success_sampled" in row else "")
        print(f"pushcut-sft: success on {cfg.eval_episodes} held-out seeds: greedy {row['eval_success']:.1%}"
              + sampled_note)
    logger.close()
    return ckpt


main = hydra_entry("sft", SFTConfig, lambda cfg, run_dir: print(f"checkpoint: {train(cfg, run_dir)}"))


if __name__ == "__main__":
    main()
