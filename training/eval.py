"""``pushcut-eval``: greedy success rate over N seeded episodes, written to ``eval.json``.

Works with anything that has ``infer_batch(observations) -> (B, chunk_len, action_dim)``: the
torch policy (a checkpoint) or the ONNX engine (a bundle). Seeds start at 100000 by default,
disjoint from the demo seeds. A checkpoint taken mid-run (or a bundle exported from one) is named
as such on stderr and under ``source`` in ``eval.json``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pushcut.configs import hydra_entry, to_dict
from pushcut.deploy import load as deploy_load
from pushcut.interface import Policy
from pushcut.sim.config import EnvConfig
from pushcut.training.config import SUITES, EvalConfig, check_bundle_fits_env, check_policy_fits_env


class Sampled:
    """A policy decoded by sampling at ``temperature`` (as in the rollouts) instead of greedily; the
    draws follow one seeded generator, so a measurement repeats."""

    def __init__(self, policy, temperature: float, seed: int = 0):
        import torch

        self.policy, self.temperature = policy, temperature
        self.gen = torch.Generator().manual_seed(seed)

    def infer_batch(self, observations):
        return self.policy.act_batch(observations, self.temperature, self.gen)[0]


def run_episodes(policy, env_cfg: EnvConfig, seeds: list[int], num_envs: int = 1, progress: bool = True) -> list[dict]:
    """Roll out ``policy`` greedily on each seed; one record per episode, in seed order, with the
    task's milestones reached (``phases``) where the task has them."""
    from pushcut.sim.registry import make_env
    from pushcut.sim.vector import VectorEnv

    num_envs = max(1, min(num_envs, len(seeds)))
    venv = VectorEnv(env_cfg, num_envs) if num_envs > 1 else None
    env = make_env(env_cfg) if venv is None else None
    results: list[dict] = []
    bar = tqdm(total=len(seeds), desc="eval", disable=not progress)
    try:
        for start in range(0, len(seeds), num_envs):
            batch = seeds[start : start + num_envs]
            padded = batch + [batch[-1]] * (num_envs - len(batch))
            obs = venv.reset(padded) if venv else [env.reset(batch[0])]
            active = [i < len(batch) for i in range(len(obs))]
            steps = [0] * len(obs)
            success = [False] * len(obs)
            phases: list[list[str] | None] = [None] * len(obs)
            t0 = time.perf_counter()
            while any(active):
                idx = [i for i, a in enumerate(active) if a]
                chunks = policy.infer_batch([obs[i].as_dict() for i in idx])
                actions = [None] * len(obs)
                for i, c in zip(idx, chunks):
                    actions[i] = c
                out = venv.step(actions) if venv else [env.step(actions[0])]
                for i in idx:
                    obs[i], steps[i], success[i] = out[i].obs, out[i].steps, out[i].success
                    phases[i] = out[i].info.get("phases")
                    active[i] = not out[i].done
            for i, seed in enumerate(batch):
                results.append({"seed": seed, "success": bool(success[i]), "steps": steps[i],
                                "seconds": (time.perf_counter() - t0) / len(batch)}
                               | ({"phases": phases[i]} if phases[i] is not None else {}))
            bar.update(len(batch))
    finally:
        bar.close()
        if venv:
            venv.close()
        if env:
            env.close()
    return results


def sides(env_cfg: EnvConfig, seeds: list[int]) -> list[str] | None:
    """The side of the table each seed's task needs on the dual-arm twin (its layout's ``arm``: the
    bell's side, the bowl's that goes onto the pile), from a reset alone; None for an env without
    sides (LIBERO's single arm)."""
    from pushcut.sim.registry import make_env

    if env_cfg.kind != "twin":
        return None
    env = make_env(env_cfg)
    try:
        out = []
        for seed in seeds:
            env.reset(seed)
            arm = (getattr(env, "layout", None) or {}).get("arm")
            if arm is None:
                return None
            out.append(arm)
        return out
    finally:
        env.close()


def summarize(results: list[dict], task: str, arms: list[str] | None = None) -> dict:
    """Success over ``results``, and with ``arms`` (``sides``: one per result) by the side of the
    table (``by_side``: success and episodes per side)."""
    rate = float(np.mean([r["success"] for r in results])) if results else 0.0
    out = {"success_rate": rate, "episodes": len(results), "per_task": {task: rate}}
    if arms is not None:
        split = {a: [r["success"] for r, arm in zip(results, arms, strict=True) if arm == a] for a in ("left", "right")}
        out["by_side"] = {a: {"success_rate": float(np.mean(ok)) if ok else None, "episodes": len(ok)}
                          for a, ok in split.items()}
    return out | {"results": results}


def load_policy(cfg: EvalConfig, run_dir: str | Path | None = None) -> Policy:
    """The checkpoint's or bundle's policy, refused before any env step unless it fits ``cfg.env``
    (TensorRT's engines cached in ``run_dir``/tensorrt)."""
    policy = deploy_load.load_policy(cfg.checkpoint or cfg.bundle, kind="checkpoint" if cfg.checkpoint else "bundle",
                                     device=cfg.device, providers=cfg.providers,
                                     cache_dir=Path(run_dir) / "tensorrt" if run_dir else None)
    if cfg.checkpoint:
        check_policy_fits_env(policy.cfg, cfg.env, source=f"checkpoint {cfg.checkpoint}")
    else:
        check_bundle_fits_env(policy.manifest, cfg.env)
    return policy


def policy_source(cfg: EvalConfig, policy) -> dict:
    """Where the evaluated policy comes from and whether its training run had finished
    (``complete``: None when the checkpoint does not say)."""
    from pushcut.policy.checkpoint import completion, read_meta, unfinished

    if cfg.checkpoint:
        path, meta = cfg.checkpoint, read_meta(cfg.checkpoint, verify=False)
    else:  # a bundle: the checkpoint it was exported from
        source = policy.manifest.get("source_checkpoint", {})
        path, meta = f"{cfg.bundle} (from {source.get('path')})", source.get("meta", {})
    complete, progress = completion(meta)
    if note := unfinished(meta):
        print(f"pushcut-eval: {path}: {note}", file=sys.stderr)
    return {"path": str(path), "complete": complete, "progress": progress}


def suite_envs(env: EnvConfig, suite: str) -> dict[str, EnvConfig]:
    """The env of each setting of ``suite`` (``SUITES``; ``EvalConfig`` checks the name)."""
    out = {}
    for name, change in SUITES[suite].items():
        perturbation = dataclasses.replace(env.perturbation, **change.get("perturbation", {}))
        out[name] = dataclasses.replace(env, perturbation=perturbation,
                                        **{k: v for k, v in change.items() if k != "perturbation"})
    return out


def evaluate_suite(policy, cfg: EvalConfig, seeds: list[int], progress: bool) -> dict:
    """Success per setting of ``cfg.suite`` on the same seeds, with Wilson 95% intervals and the
    share of the nominal success each keeps."""
    from pushcut.deploy.trials import wilson_interval

    out = {}
    for name, env in suite_envs(cfg.env, cfg.suite).items():
        results = run_episodes(policy, env, seeds, cfg.num_envs, progress)
        k = sum(r["success"] for r in results)
        out[name] = {"success_rate": k / len(results), "successes": k, "episodes": len(results),
                     "ci95": list(wilson_interval(k, len(results)))}
    nominal = out["nominal"]["success_rate"]
    for entry in out.values():
        entry["kept_of_nominal"] = entry["success_rate"] / nominal if nominal else None
    return out


def evaluate(cfg: EvalConfig, run_dir: str | Path, progress: bool = True) -> dict:
    policy = load_policy(cfg, run_dir)
    source = policy_source(cfg, policy)
    seeds = list(range(cfg.seed_start, cfg.seed_start + cfg.episodes))
    if cfg.suite:
        summary = {"suite": cfg.suite, "settings": evaluate_suite(policy, cfg, seeds, progress)}
        summary["success_rate"] = summary["settings"]["nominal"]["success_rate"]
        summary["episodes"] = cfg.episodes
    else:
        summary = summarize(run_episodes(policy, cfg.env, seeds, cfg.num_envs, progress), cfg.env.task,
                            sides(cfg.env, seeds))
    summary["source"] = source
    summary["config"] = to_dict(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary


def _main(cfg: EvalConfig, run_dir: Path) -> None:
    s = evaluate(cfg, run_dir)
    for name, e in s.get("settings", {}).items():
        kept = "" if e["kept_of_nominal"] is None else f", keeps {e['kept_of_nominal']:.0%} of nominal"
        print(f"  {name:<18} {e['success_rate']:6.1%} (95% CI {e['ci95'][0]:.0%}-{e['ci95'][1]:.0%}){kept}")
    by_side = "".join(f", {a} {e['success_rate']:.1%} of {e['episodes']}" for a, e in s.get("by_side", {}).items()
                      if e["episodes"])
    print(f"{cfg.env.task}: success {s['success_rate']:.1%} over {s['episodes']} episodes{by_side} "
          f"-> {run_dir}/eval.json")


main = hydra_entry("eval", EvalConfig, _main)


if __name__ == "__main__":
    main()
