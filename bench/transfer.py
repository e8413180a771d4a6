"""``make bench-transfer``: does domain randomisation in training buy transfer?

Per task, the tiny policy is SFT'd twice on the same number of expert demos (the same seeds) for the
same number of steps: on the nominal twin, and on the randomised one (``env.randomization.enabled``,
per episode: light, colours, camera pose and field of view, object mass and friction, joint speed,
action latency, pixel noise, blur, JPEG, distractors; its demos are recorded randomised, in a folder
of their own). Both are measured by ``pushcut-eval
suite=transfer`` (``training.config.SUITES``: camera moved and tilted, light, colours, pixel noise,
latency, arm speed, each beyond what the randomisation samples) on the same held-out seeds. Writes
``bench/results/transfer.json``: per task, ``policies`` {nominal, randomized}, each with
``randomized``, its ``nominal`` success, ``perturbations`` {setting: success} and ``settings`` (every
setting's successes, Wilson interval and the share of its own nominal success it keeps).

    make bench-transfer ARGS="--tasks click_bell,stack_bowls_two --demos 50 --steps 1500 --episodes 50"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import CACHE, sft_checkpoint, write

VARIANTS = ("nominal", "randomized")


def train(task: str, variant: str, demos: int, steps: int, policy: str) -> Path:
    """The SFT checkpoint of ``variant`` on ``task``, cached under bench/cache/ (bench-rl's starts:
    the same names, shared)."""
    return sft_checkpoint(demos, steps, task, randomized=variant == "randomized", policy=policy)


def measure(ckpt: Path, task: str, episodes: int, out: Path) -> dict:
    """The transfer suite on ``task``'s nominal twin (held-out seeds from 100000)."""
    from pushcut.configs import compose, from_hydra
    from pushcut.training.config import EvalConfig
    from pushcut.training.eval import evaluate

    cfg = from_hydra(EvalConfig, compose("eval", [f"env={task}", f"checkpoint={ckpt}", f"episodes={episodes}",
                                                  "suite=transfer"]))
    return evaluate(cfg, out, progress=False)["settings"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench-transfer", description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="click_bell,stack_bowls_two")
    ap.add_argument("--demos", type=int, default=50)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--episodes", type=int, default=50, help="held-out seeds per setting")
    ap.add_argument("--policy", default="tiny", help="policy preset (configs/policy/)")
    ap.add_argument("--name", default="transfer")
    args = ap.parse_args(argv)
    result = {"demos": args.demos, "sft_steps": args.steps, "episodes": args.episodes, "policy": args.policy,
              "tasks": []}
    for task in args.tasks.split(","):
        policies = {}
        for variant in VARIANTS:
            ckpt = train(task, variant, args.demos, args.steps, args.policy)
            settings = measure(ckpt, task, args.episodes, CACHE / f"transfer_{task}_{variant}")
            policies[variant] = {
                "randomized": variant == "randomized", "checkpoint": str(ckpt),
                "nominal": settings["nominal"]["success_rate"],
                "perturbations": {k: s["success_rate"] for k, s in settings.items() if k != "nominal"},
                "settings": settings,
            }
        worst = {v: min(s["kept_of_nominal"] or 0.0 for s in p["settings"].values()) for v, p in policies.items()}
        result["tasks"].append({"task": task, "policies": policies, "worst_kept_of_nominal": worst})
    write(args.name, result)


if __name__ == "__main__":
    main()
