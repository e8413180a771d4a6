"""Helpers shared by the benchmarks: timing and writing ``bench/results/<name>.json``."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def write(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **data}
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    print(f"wrote {path}")
    return path


def rate(fn, n: int) -> float:
    """Calls of ``fn`` per second over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


CACHE = Path(__file__).resolve().parent / "cache"


def env_int(name: str, default: int) -> int:
    """A benchmark size, overridable from the environment (e.g. PUSHCUT_BENCH_EVAL_SEEDS=50)."""
    return int(os.environ.get(name, default))


def percentiles(values, qs=(50, 99)) -> dict:
    import numpy as np

    v = np.asarray(values, dtype=float)
    return {f"p{q}": float(np.percentile(v, q)) for q in qs} | {"mean": float(v.mean()), "n": int(v.size)}


BASE_TASKS = ("stack_bowls_two", "stack_bowls_three")  # a base's tasks: the twin's tasks other than click_bell


RANDOMIZED = ["env.randomization.enabled=true"]


def sft_checkpoint(demos_per_task: int, steps: int, task: str = "click_bell", bin_smoothing: float = 0.0,
                   base: Path | None = None, mirror: bool = False, randomized: bool = False,
                   policy: str = "tiny", cameras: tuple[str, ...] | None = None) -> Path:
    """A policy (the ``policy`` preset) SFT'd on ``demos_per_task`` expert demos, cached under
    bench/cache/: from scratch, or fine-tuned from the pretrained ``base`` (``pretrained_base``);
    with ``mirror``, on the demos and their mirror images (``mirror_demos``); with ``randomized``,
    on the randomised twin (its demos recorded there, in bench/cache/demos_randomized); with ``cameras``,
    reading those cameras instead of the preset's (its demos recorded with them, e.g. in
    bench/cache/demos_head+left_wrist+right_wrist)."""
    smooth = f"_smooth{bin_smoothing:g}" if bin_smoothing else ""
    from_base = f"_from_{base.parent.name}" if base else ""
    views = f"_{'+'.join(cameras)}" if cameras else ""
    name = (f"sft_{task}_{demos_per_task}demos{'_mirror' if mirror else ''}_{steps}steps{smooth}{from_base}"
            + ("_randomized" if randomized else "") + ("" if policy == "tiny" else f"_{policy}") + views)
    return sft_run(name, [f"env={task}", f"policy={policy}", f"demos_per_task={demos_per_task}", f"steps={steps}",
                          f"mirror_demos={mirror}", f"bin_smoothing={bin_smoothing}",
                          f"init_checkpoint={base or 'null'}", *(RANDOMIZED if randomized else []),
                          *camera_overrides(cameras, policy=True)],
                   CACHE / (("demos_randomized" if randomized else "demos") + views))


def camera_overrides(cameras: tuple[str, ...] | None, policy: bool = False) -> list[str]:
    """The overrides that render ``cameras`` (``env.cameras``) and, with ``policy``, make the policy
    read them (``policy.cameras``); none where ``cameras`` is None (the configs' own)."""
    if not cameras:
        return []
    views = f"[{','.join(cameras)}]"
    return [f"env.cameras={views}", *([f"policy.cameras={views}"] if policy else [])]


def pretrained_base(demos_per_task: int = 50, steps: int = 3000) -> Path:
    """The tiny policy SFT'd on the twin's other tasks (``BASE_TASKS``), cached under bench/cache/:
    the stand-in for the pretrained VLA (OpenVLA) that OpenVLA-OFT fine-tunes. In stack_bowls, as
    in click_bell, the arm on the object's side reaches for it."""
    return sft_run(f"sft_base_stack_bowls_{demos_per_task}demos_{steps}steps",
                   [f"tasks=[{','.join(BASE_TASKS)}]", f"demos_per_task={demos_per_task}", f"steps={steps}"],
                   CACHE / "demos")


def sft_run(name: str, overrides: list[str], demos_dir: Path) -> Path:
    """``pushcut-sft`` with ``overrides`` into bench/cache/<name>, its demos in ``demos_dir`` (recorded
    there where missing); a finished cached run is returned as it is, an interrupted one resumed."""
    from pushcut.configs import compose, from_hydra
    from pushcut.policy import checkpoint
    from pushcut.training import sft
    from pushcut.training.config import SFTConfig

    run, cfg = CACHE / name, from_hydra(SFTConfig, compose("sft", [f"demos_dir={demos_dir}", *overrides]))
    checkpoint.recover(run / "checkpoint")
    if (run / "checkpoint" / "meta.json").exists():
        trained = json.loads((run / "checkpoint" / "config.json").read_text())["run"]["env"]
        if diff := sft.env_differences(trained, cfg.env):
            detail = "; ".join(f"{k}: {a} there, {b} here" for k, (a, b) in diff.items())
            raise ValueError(f"bench: the cached SFT start {run} was trained on another env ({detail}): "
                             f"remove it (and its demos in {demos_dir}) to train it again")
        note = checkpoint.unfinished(checkpoint.read_meta(run / "checkpoint", verify=False))
        if note is None:
            return run / "checkpoint"
        print(f"bench: the cached SFT start {run} was {note}: resuming it", file=sys.stderr)
    return sft.train(cfg, run)


def cached_bundle(ckpt: Path, name: str, env) -> Path:
    """``ckpt`` exported to bench/cache/<name>, re-exported unless the cached bundle came from this
    very checkpoint (its weights' hash): a bundle from an earlier, interrupted run is never reused."""
    from pushcut.deploy.bundle import BundleError, load_manifest
    from pushcut.policy import checkpoint
    from pushcut.policy.export import ExportConfig, export

    bundle = CACHE / name
    weights = checkpoint.read_meta(ckpt, verify=False)["files"]["model.safetensors"]
    try:
        source = load_manifest(bundle, verify=False)["source_checkpoint"]["meta"]["files"]["model.safetensors"]
    except (BundleError, KeyError):
        source = None
    if source != weights:
        export(ExportConfig(env=env, checkpoint=str(ckpt), out_dir=str(bundle)))
    return bundle


def held_out_seeds(episodes: int) -> list[int]:
    """The first ``episodes`` held-out seeds: 100000 on, disjoint from the demos' seeds (0 on)."""
    return list(range(100_000, 100_000 + episodes))


def held_out_episodes(policy, task: str, episodes: int, num_envs: int = 2,
                      cameras: tuple[str, ...] | None = None) -> list[dict]:
    """One record per held-out seed (``held_out_seeds``) of ``policy.infer_batch`` rolled out on
    ``task`` (the nominal twin, rendering ``cameras`` where given, else the task config's)."""
    from pushcut.configs import compose, from_hydra
    from pushcut.sim.config import EnvConfig
    from pushcut.training.eval import run_episodes

    env = from_hydra(EnvConfig, compose("sft", [f"env={task}", *camera_overrides(cameras)]).env)
    return run_episodes(policy, env, held_out_seeds(episodes), num_envs, progress=False)


def success_summary(results: list[dict]) -> dict:
    ok = [r["success"] for r in results]
    return {"success_rate": sum(ok) / len(ok), "episodes": len(ok), "seeds": [results[0]["seed"], results[-1]["seed"]]}


def greedy_success(policy, task: str, episodes: int, num_envs: int = 2) -> dict:
    return success_summary(held_out_episodes(policy, task, episodes, num_envs))
