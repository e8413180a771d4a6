"""bench-rl: GRPO from an SFT tiny policy on a hardware task, with the paper's two ablations.

    make bench-rl ARGS="experiment=rl_seed0 budget_s=600 variants=[grpo]"
    make bench-rl ARGS="experiment=rl_stack_bowls_two"

setup.task chooses the task (click_bell by default, writing rl.json; any other writes
rl_<task>.json). Each task's final policy is exported (``bundle_rl_<task>`` under bench/cache/,
the path in the result file), so the trial node has an RL'd bundle for each task.

Configured by Hydra: ``configs/bench_rl.yaml`` (budgets, variants, sizes) and an experiment from
``configs/experiment/`` (``setup.*``, below); any field can be overridden.

Three runs: the recipe (dynamic sampling, T=1.6; by default with the late phase below) with a
wall-time budget of 45 min (budget_s), then dynamic sampling off and rollout temperature 1.0, each with
ablation_budget_s (default: the same budget); the curves carry wall time, so
the recipe can be read at the ablations' budget when that is shorter. variants
(a list) runs some of them and keeps the others' results from the same start; ``variants=[]``
measures the start alone and writes rl_<departures>_start.json. Each
starts from the same SFT checkpoint; greedy success is measured on the same held-out seeds
(200 by default) before and after, and on 50 validation seeds (90000 on, apart from the held-out
ones) every few iterations for the curve. Each run reports two policies on the held-out seeds: its
last checkpoint (``final``) and the one at its best validation evaluation (``best``, the run's
``<run>/best``), chosen without looking at the held-out seeds.
Rollout throughput and the share of time in simulation, policy inference and the learner update
come from the runs' own logs. Each policy is also measured sampled at its rollout temperature on
the same seeds, and both are split by the side of the table the task needs (``by_arm``: the bell's
side, the side of the bowl moved onto the pile) and, for stacking, by the furthest phase each
episode reached (``by_phase``: grasped, lifted, placed; ``diagnosis``): the gap between
sampled and greedy success is what the reward improves and greedy evaluation does not see. A
deterministic decoder by each token's expected bin (``expected_T1``) or median bin (``median_T1``)
splits that gap into argmax against the bulk of the mass, and noise. The diagnosis also asks
whether the policy looks at the bell at all (``image_sensitivity``) and how much of each arm's
action mass sits on one bin (``peak_probability``: near 1, sampling explores nothing). On stacking,
whose failures run to the task's 900 steps, the diagnosis keeps greedy and sampled at the rollout
temperature (``DIAGNOSIS_DECODERS``).
remeasure=true measures the diagnosis again for the runs already in rl.json.
gradient_noise=K (0: off) trains nothing: it draws K independent batches from the start as the
setup's first update would, and writes the policy gradient's noise scale over them
(``grpo.gradient_noise``; <result>_gradient_noise.json): the batch, in trajectories, at which an
update's direction is as much signal as noise, and the BC term's share when setup.bc_coef is set.
A bench killed mid-run loses nothing: the same command again resumes each unfinished run from its
last checkpoint (``run_dir``), with what is left of its budget.

The defaults are the configuration that meets the issue's target on the 2-core machine (see
docs/2026-12-03-grpo-horizon.md): the 1-demo SFT fine-tuned from a pretrained base, lr 3e-4, the last 70% of the
budget at T = 0.8, training rollouts cut at 100 control steps, validation every 6 iterations, seed 1.
(``experiment=rl_recipe``). Each field below departs from them, and rl.json becomes
rl_<departures>.json, every departure named (result files quoted in the docs/ records before
2026-12-03-grpo-horizon.md were named by departures from the earlier defaults, ``experiment=rl_scratch``: from
scratch, lr 1e-3, no late phase, no horizon, validation every 3 iterations, seed 0).
setup.demos=N (default 1, the issue's start) starts from the N-demo SFT instead
(``_<N>demos``): with 3 demos (two bells on the right, one on the left) the start has seen both
arms move, which tests whether the unexplored arm is what limits the 1-demo runs; with 10, the
start looks at the bell (distinct greedy first chunks), which tests whether blindness does.
setup.base=false SFTs from scratch (``_scratch``) instead of fine-tuning from the pretrained
base (the tiny policy SFT'd on 50 demos each of stack_bowls_two and stack_bowls_three,
``pretrained_base``), as OpenVLA-OFT fine-tunes a pretrained OpenVLA.
setup.mirror=true starts from the SFT on the demo and its mirror image (``mirror_demos``: the
other arm on the mirrored scene; ``_mirror``): the one demo then shows both arms.
setup.smoothing=S starts from the same SFT trained on Gaussian soft targets of std S bins
(``bin_smoothing``; ``_smooth<S>``) instead of one-hot ones: one-hot SFT on one demo makes every
action token a near-delta, which greedy decoding keeps after RL has moved the mass.
setup.lr (default 3e-4; ``_lr<LR>``): the 7B recipe's 5e-6 barely moves the tiny preset
on 2 cores; from scratch it takes 1e-3, and the sharper start from the base a lower one.
setup.warmup=N raises lr linearly over the first N iterations (``lr_warmup_iters``;
``_warmup<N>``): Adam's first step moves every weight by about lr, which can throw a start that
samples well far from it.
setup.seed=N (default 1; ``_seed<N>``) sets the runs' ``seed`` (rollout sampling noise,
mini-batch order; the initial states stay the same). A run is deterministic: the same seed gives
the same curve, iteration for iteration, and only the number of iterations that fit in the budget
moves with the machine's speed, so a repeat that tests the spread between runs needs another seed.
setup.late_temperature=T (default 0.8; null for none) rolls out the last setup.late_fraction
(default 0.7) of each run's budget at temperature T (``late_temperature``; ``_late<T>x<fraction>``,
``_nolate``): at the recipe's 1.6 the reward improves a broad sampled sweep that greedy decoding does
not follow, and a late phase nearer greedy makes the reward improve what greedy evaluation measures.
setup.mirror_augment=true adds each kept trajectory's mirror image to the learner's batch
(``mirror_augment``; ``_mirroraug``): the arm that the one demo never moves then learns from the other
arm's successes instead of waiting for a sample to click a bell on its side.
setup.horizon=N (default 100; null for the task's 400) ends training rollouts after the chunk
that reaches N control steps (``rollout_max_steps``; ``_horizon<N>``, ``_nohorizon``); evaluation keeps
the task's 400. The start's successes come within the first 80 steps, and a failure run to 400 costs
four times what one cut at 100 does, so the same wall time holds about three times the updates.
setup.temperature=T (default 1.6, the recipe's; ``_T<T>``) rolls out at T: the recipe's value is
for a pretrained 7B, and a start trained from scratch on the twin samples worse at 1.6 than at 1.0.
setup.bc_coef=C (default 0; ``_bc<C>``) adds C x the cross-entropy of the start's own SFT demos to
every optimiser step (``bc_coef``): the demos hold the policy near what it was taught while the
rare successes pull.
setup.target_kl=K (default null; ``_kl<K>``) ends an update before the first step whose
mini-batch's approx_kl passes K (``target_kl``, PPO's trust region).
setup.groups=G (default 8; ``_groups<G>``) kept groups of rollouts behind each update
(``groups_per_iter``, n_samples each): the reference's update rests on 64 groups (512
trajectories), the default's on 8 (64).
setup.layouts=L, setup.max_samples=M (default 0, off; ``_cur<L>x<M>``) draw training's initial states
from a pool of L by their recent success, groups growing to M rollouts where success is rare
(``curriculum``).
setup.algorithm=ppo (default grpo; ``_ppo<critic_lr>``) trains with a value head over chunks and GAE
instead of the group baseline, dynamic sampling off (``algorithm``, ``critic_lr``).
setup.eval_every=N (default 6; ``_eval<N>``) evaluates on the validation seeds every N
iterations: each evaluation runs 50 greedy episodes to the task's limit, a larger share of the
budget when iterations are short.

setup.randomized (default true; ``_nominal`` when false) SFTs the start on demos recorded on the
randomised twin and trains on it (``env.randomization``: what a policy for the robot trains on);
the 200 held-out seeds are measured on the nominal twin, validation on the randomised one.
setup.cameras=[head,left_wrist,right_wrist] (default null: the preset's head camera; ``_<cameras>``)
SFTs the start reading those cameras (its demos recorded with them) and renders them in training
and on the held-out seeds: the wrist cameras see the gripper and the object from the arm, where
the 64x64 head view shows a bowl a few pixels wide.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bench.common import (
    BASE_TASKS,
    CACHE,
    RANDOMIZED,
    RESULTS,
    camera_overrides,
    held_out_episodes,
    held_out_seeds,
    pretrained_base,
    sft_checkpoint,
    success_summary,
    write,
)
from pushcut.configs import CONFIG_DIR, compose, from_hydra, ranges
from pushcut.policy import checkpoint
from pushcut.policy.export import ExportConfig, export
from pushcut.policy.inference import TorchPolicy
from pushcut.sim.registry import make_env
from pushcut.training import grpo
from pushcut.training.config import TrainConfig
from pushcut.training.eval import Sampled
from pushcut.training.run_log import plot_curves, read_metrics

VARIANTS = {
    "grpo": [],
    "no_dynamic_sampling": ["dynamic_sampling=false"],
    "temperature_1.0": ["temperature=1.0"],
}
DIAGNOSIS_DECODERS = {"click_bell": ("greedy", "sampled", "sampled_T1", "expected_T1", "median_T1")}
SHORT_DIAGNOSIS = ("greedy", "sampled")  # the other tasks
SENSITIVITY_SEEDS = 20  # the first held-out seeds, whose first greedy chunks image_sensitivity compares


def _shares(rows: list[dict]) -> dict:
    sim = sum(r.get("sim_s", 0) for r in rows)
    inf = sum(r.get("inference_s", 0) for r in rows)
    upd = sum(r.get("update_s", 0) for r in rows)
    total = sim + inf + upd
    steps_s = [r["env_steps_per_s"] for r in rows if "env_steps_per_s" in r]
    return {
        "env_steps_per_s_mean": sum(steps_s) / max(len(steps_s), 1),
        "time_share": ({"sim": sim / total, "policy_inference": inf / total, "learner_update": upd / total}
                       if total else {}),
        "worker_seconds": {"sim": sim, "policy_inference": inf, "learner_update": upd},
    }


class _Deterministic:
    """The policy decoded deterministically from each token's distribution at T = 1 instead of by its
    argmax: by the expected bin centre (``mean``) or the median bin (``median``). A chunk's 25
    independently sampled steps pass through the twin's speed limit and smoothing, which average
    them: where the mean succeeds and greedy fails, what the reward improved is the mean of the bins,
    which argmax does not follow. The median follows the bulk of the mass where it is spread over
    neighbouring bins and a single bin (an SFT spike) still holds the argmax. Where only sampling
    succeeds, the noise itself (a random sweep) clicks the bell."""

    def __init__(self, policy: TorchPolicy, statistic: str):
        if statistic not in ("mean", "median"):
            raise ValueError(f"statistic must be 'mean' or 'median', not {statistic!r}")
        self.policy, self.statistic = policy, statistic

    @torch.no_grad()
    def infer_batch(self, observations):
        p, cfg = self.policy, self.policy.cfg
        probs = torch.softmax(p.logits(observations).float(), dim=-1).numpy()  # (B, A, n_bins)
        centers = p.action_tokenizer.centers
        if self.statistic == "mean":
            norm = probs @ centers  # (B, A)
        else:  # median: the first bin whose CDF reaches one half
            norm = centers[np.minimum((probs.cumsum(-1) < 0.5).sum(-1), len(centers) - 1)]
        return p.action_norm.unnormalize(norm.reshape(len(observations), cfg.chunk_len, cfg.action_dim))


def _initial_states(cfg, episodes: int) -> tuple[list[dict], list[str]]:
    """Each held-out seed's first observation and the arm its bell needs (its side of the table):
    the same for every policy measured, so reset once per bench."""
    env = make_env(cfg.env)
    try:
        obs, arms = [], []
        for seed in held_out_seeds(episodes):
            obs.append(env.reset(seed).as_dict())
            arms.append(env.layout["arm"])
        return obs, arms
    finally:
        env.close()


def image_sensitivity(policy: TorchPolicy, initial_obs: list[dict]) -> dict:
    """Does the policy look? Its greedy first chunk from each seed's initial state: the robot
    starts in the same pose every time and only the bell (seen by the camera) moves, so a policy
    that ignores the image gives one chunk for all seeds."""
    chunks, bins, _ = policy.act_batch(initial_obs, 0.0)
    return {"seeds": len(initial_obs), "distinct_greedy_chunks": len({b.tobytes() for b in bins}),
            "action_std_across_seeds": float(chunks.std(axis=0).mean())}


@torch.no_grad()
def peak_probability(policy: TorchPolicy, initial_obs: list[dict], temperatures: tuple[float, ...]) -> dict:
    """How much exploration each arm has left: the probability of each action token's likeliest
    bin, averaged over the first chunk's tokens of that arm on each seed's initial state, at each
    temperature. Near 1, sampling repeats the argmax and an arm that the demos never moved stays
    where it is (dims 0-6 are the left arm and its gripper, 7-13 the right, as the twin's action)."""
    cfg = policy.cfg
    logits = policy.logits(initial_obs).float().view(len(initial_obs), cfg.chunk_len, cfg.action_dim, -1)
    half = cfg.action_dim // 2
    out = {}
    for t in temperatures:
        peak = torch.softmax(logits / t, dim=-1).amax(-1)  # (B, chunk_len, action_dim)
        out[f"T{t:g}"] = {"left": float(peak[..., :half].mean()), "right": float(peak[..., half:].mean())}
    return out


def by_phase(results: list[dict]) -> dict:
    """The share of episodes that reached each of the task's milestones (``Task.phases``)."""
    from pushcut.sim.tasks.stack_bowls import PHASES

    return {p: sum(p in r["phases"] for r in results) / len(results) for p in PHASES}


def _measure(policy: TorchPolicy, cfg, initial: tuple[list[dict], list[str]]) -> dict:
    """Greedy success on the held-out seeds, split by the side of the table the task needs, beside the success of
    the same policy sampled at the rollout temperature and at T = 1: where they part, the RL reward
    (sampled) has improved what greedy evaluation does not see; ``expected_T1`` and ``median_T1``
    (``_Deterministic``) tell how much of that gap is argmax against the mean or the bulk of the mass.
    ``initial``: ``_initial_states``."""
    obs, arms = initial
    task = cfg.env.task
    out = {}
    decoders = {"greedy": policy, "sampled": Sampled(policy, cfg.temperature), "sampled_T1": Sampled(policy, 1.0),
                "expected_T1": _Deterministic(policy, "mean"), "median_T1": _Deterministic(policy, "median")}
    for key in DIAGNOSIS_DECODERS.get(task, SHORT_DIAGNOSIS):
        name = f"sampled_T{cfg.temperature:g}" if key == "sampled" else key
        results = held_out_episodes(decoders[key], task, len(obs), cameras=cfg.env.cameras)
        sides = {arm: [r for r, a in zip(results, arms) if a == arm] for arm in ("left", "right")}
        by_arm = {arm: sum(r["success"] for r in rs) / max(1, len(rs)) for arm, rs in sides.items()}
        out[name] = success_summary(results) | {"by_arm": by_arm}
        if "phases" in results[0]:  # all episodes, then each side's
            out[name]["by_phase"] = {"all": by_phase(results)} | {a: by_phase(rs) for a, rs in sides.items() if rs}
    out["image_sensitivity"] = image_sensitivity(policy, obs[:SENSITIVITY_SEEDS])
    out["peak_probability"] = peak_probability(policy, obs[:SENSITIVITY_SEEDS], (1.0, cfg.temperature))
    return out


@functools.cache
def task_setup(task: str) -> Setup:
    """A task's own defaults: the setup of ``configs/experiment/rl_<task>.yaml`` (click_bell's:
    ``rl_recipe``); a task without one departs from nothing but the task."""
    name = "rl_recipe" if task == "click_bell" else f"rl_{task}"
    if not (CONFIG_DIR / "experiment" / f"{name}.yaml").exists():
        return Setup(task=task)
    return from_hydra(BenchRLConfig, compose("bench_rl", [f"experiment={name}"])).setup


@ranges(demos=">=1", smoothing=">=0", lr=">0", warmup=">=0", seed=">=0", late_temperature=">0",
        late_fraction="(0,1]", horizon=">=1", eval_every=">=1", temperature=">0", bc_coef=">=0", target_kl=">0",
        layouts=">=0", max_samples="[2,64]", critic_lr=">0", groups=">=1")
@dataclass(frozen=True)
class Setup:
    """What the runs start from and how they train (``setup`` of ``configs/bench_rl.yaml``, set by
    an ``experiment``). The defaults (``rl_recipe``) write rl.json; every departure from them is
    named in the file's name."""

    task: str = "click_bell"
    demos: int = 1
    base: bool = True
    smoothing: float = 0.0
    mirror: bool = False
    lr: float = 3e-4
    warmup: int = 0
    seed: int = 1
    late_temperature: float | None = 0.8
    late_fraction: float = 0.7
    mirror_augment: bool = False
    horizon: int | None = 100
    eval_every: int = 6
    temperature: float = 1.6  # the rollout temperature (the recipe's)
    bc_coef: float = 0.0  # the start's demos in every step's loss (bc_coef of the train config)
    target_kl: float | None = None  # PPO's early stop of an update (target_kl of the train config)
    groups: int = 8  # kept groups per iteration (groups_per_iter of the train config)
    layouts: int = 0  # curriculum over this many initial states (curriculum.layouts; 0: a new state per group)
    max_samples: int = 8  # the curriculum's largest group (curriculum.max_samples)
    algorithm: Literal["grpo", "ppo"] = "grpo"  # ppo: a value head over chunks, dynamic sampling off
    critic_lr: float = 1e-3  # ppo: the value head's learning rate
    randomized: bool = False  # the start's SFT and the RL on the randomised twin (held-out seeds stay nominal)
    cameras: tuple[str, ...] | None = None  # what the start reads (policy.cameras, env.cameras); None: the preset's

    def __post_init__(self):
        if self.cameras is not None and not self.cameras:
            raise ValueError("setup.cameras=[]: name the cameras the start reads, "
                             "e.g. [head,left_wrist,right_wrist], or null for the preset's")

    @property
    def result_name(self) -> str:
        """rl.json for the defaults, rl_<task>.json for another task's (``task_setup``); every other
        departure from them named in the file."""
        d = task_setup(self.task)
        late = (self.late_temperature, self.late_fraction if self.late_temperature else None)
        return ("rl" + (f"_{self.task}" if self.task != "click_bell" else "")
                + (f"_{self.demos}demos" if self.demos != d.demos else "") + ("_mirror" if self.mirror else "")
                + ("_scratch" if d.base and not self.base else "")
                + (f"_smooth{self.smoothing:g}" if self.smoothing else "")
                + (f"_lr{self.lr:g}" if self.lr != d.lr else "") + (f"_warmup{self.warmup}" if self.warmup else "")
                + (f"_seed{self.seed}" if self.seed != d.seed else "")
                + ("" if late == (d.late_temperature, d.late_fraction)
                   else f"_late{self.late_temperature:g}x{self.late_fraction:g}" if self.late_temperature
                   else "_nolate")
                + ("_mirroraug" if self.mirror_augment else "")
                + ("" if self.horizon == d.horizon else f"_horizon{self.horizon}" if self.horizon else "_nohorizon")
                + (f"_eval{self.eval_every}" if self.eval_every != d.eval_every else "")
                + (f"_T{self.temperature:g}" if self.temperature != d.temperature else "")
                + (f"_bc{self.bc_coef:g}" if self.bc_coef != d.bc_coef else "")
                + ("" if self.target_kl == d.target_kl else f"_kl{self.target_kl:g}" if self.target_kl else "_nokl")
                + (f"_groups{self.groups}" if self.groups != d.groups else "")
                + (f"_cur{self.layouts}x{self.max_samples}" if self.layouts else "")
                + (f"_ppo{self.critic_lr:g}" if self.algorithm == "ppo" else "")
                + ("" if self.randomized == d.randomized else "_randomized" if self.randomized else "_nominal")
                + ("" if self.cameras == d.cameras else "_" + "+".join(self.cameras or ("presetcameras",))))

    @property
    def command(self) -> str:
        """The ``make bench-rl`` that runs this setup."""
        def value(v):
            return ("null" if v is None else str(v).lower() if isinstance(v, bool)
                    else f"[{', '.join(v)}]" if isinstance(v, tuple) else v)

        fields = ", ".join(f"{k}: {value(v)}" for k, v in vars(self).items())
        return f"make bench-rl ARGS='setup={{{fields}}}'"

    @property
    def overrides(self) -> list[str]:
        """The train config's overrides that every variant of these runs shares."""
        late = ([f"late_temperature={self.late_temperature}", f"late_fraction={self.late_fraction}"]
                if self.late_temperature else [])
        return [f"lr={self.lr}", f"lr_warmup_iters={self.warmup}", f"seed={self.seed}", *late,
                *(["mirror_augment=true"] if self.mirror_augment else []),
                *([f"rollout_max_steps={self.horizon}"] if self.horizon else []), f"eval_every={self.eval_every}",
                f"temperature={self.temperature}", f"bc_coef={self.bc_coef}",
                f"target_kl={'null' if self.target_kl is None else self.target_kl}", f"groups_per_iter={self.groups}",
                f"curriculum.layouts={self.layouts}", f"curriculum.max_samples={self.max_samples}",
                f"algorithm={self.algorithm}", f"critic_lr={self.critic_lr}",
                *(["dynamic_sampling=false"] if self.algorithm == "ppo" else []),
                *(RANDOMIZED if self.randomized else []), *camera_overrides(self.cameras)]

    def start_checkpoint(self, sft_steps: int, base_sft_steps: int) -> Path:
        """The N-demo click_bell SFT the runs start from: from scratch (1500 steps), or fine-tuned from
        the base (100 steps: enough to learn the bell's prompt and motion, few enough to keep the
        base's image features; ``base_sft_steps``); on soft targets with ``smoothing``; on the demos
        and their mirror images with ``mirror``; on the randomised twin with ``randomized`` (the
        pretrained base stays the nominal one)."""
        if self.base:
            return sft_checkpoint(self.demos, base_sft_steps, self.task, self.smoothing, pretrained_base(), self.mirror,
                                  self.randomized, cameras=self.cameras)
        return sft_checkpoint(self.demos, sft_steps, self.task, self.smoothing, mirror=self.mirror,
                              randomized=self.randomized, cameras=self.cameras)


def _headline(measured: dict) -> dict:
    """Greedy success overall and by the side of the table the task needs (fractions)."""
    greedy = measured["greedy"]
    return {"greedy_success": greedy["success_rate"], "greedy_success_by_side": greedy["by_arm"]}


def git_commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _best(run: Path, cfg, initial, last: dict, last_iteration: int, before: dict) -> dict:
    """The run's best checkpoint by its validation evaluations, measured on the held-out seeds
    as the last one is (``last``: its ``_measure``)."""
    meta = checkpoint.read_meta(run / "best", verify=False)
    same = meta["iteration"] == last_iteration  # evaluated at the last iteration: the same weights
    measured = last if same else _measure(TorchPolicy.from_checkpoint(run / "best"), cfg, initial)
    return {"iteration": meta["iteration"], "validation_success_50": meta["eval_success"],
            "final": measured["greedy"], "diagnosis": measured,
            "gain_points": 100 * (measured["greedy"]["success_rate"] - before["success_rate"])}


@ranges(budget_s=">0", ablation_budget_s=">0", eval_seeds=">=1", sft_steps=">=1", base_sft_steps=">=1")
@dataclass(frozen=True)
class BenchRLConfig:
    """``configs/bench_rl.yaml``: the experiment (``setup``) and the bench's budget and sizes."""

    setup: Setup = Setup()
    budget_s: int = 2700
    ablation_budget_s: int | None = None
    variants: tuple[str, ...] = tuple(VARIANTS)
    eval_seeds: int = 200
    remeasure: bool = False
    gradient_noise: int = 0
    sft_steps: int = 1500
    base_sft_steps: int = 100

    def __post_init__(self):
        if self.setup.base and self.setup.task in BASE_TASKS:
            raise ValueError(f"setup.base: the pretrained base is SFT'd on {list(BASE_TASKS)}; "
                             f"RL on {self.setup.task} starts from scratch (setup.base=false)")
        if self.gradient_noise == 1 or self.gradient_noise < 0:
            raise ValueError(f"gradient_noise={self.gradient_noise}: the number of independent batches to compare, "
                             "at least 2 (0: off)")
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"variants {list(self.variants)}: choose among {list(VARIANTS)} or none (the start)")


def remeasure(episodes: int, setup: Setup) -> None:
    """Measure the diagnosis again for the start and every finished run in rl.json (their final
    checkpoints), without training: for a diagnosis added after the runs."""
    result = setup.result_name
    path = RESULTS / f"{result}.json"
    if not path.exists():
        raise SystemExit(f"nothing to measure again: {path} does not exist; run {setup.command} first")
    out = json.loads(path.read_text())
    from_start = [f"env={out.get('task', 'click_bell')}", "init_checkpoint=" + out["start"]["checkpoint"],
                  *camera_overrides(setup.cameras)]
    recipe = from_hydra(TrainConfig, compose("train", from_start))
    initial = _initial_states(recipe, episodes)
    start = out["start"]["diagnosis"]
    start |= _measure(TorchPolicy.from_checkpoint(out["start"]["checkpoint"]), recipe, initial)
    for name in (n for n in VARIANTS if n in out):
        cfg = from_hydra(TrainConfig, compose("train", from_start + out[name]["overrides"]))
        measured = _measure(TorchPolicy.from_checkpoint(Path(out[name]["run_dir"]) / "checkpoint"), cfg, initial)
        same_seeds = measured["greedy"]["seeds"] == out[name]["final"]["seeds"]
        if same_seeds and measured["greedy"]["success_rate"] != out[name]["final"]["success_rate"]:  # deterministic
            raise SystemExit(f"{name}: greedy success {measured['greedy']['success_rate']} differs from the "
                             f"recorded {out[name]['final']['success_rate']}; the code changed since the run")
        out[name]["diagnosis"] = measured
        if "best" in out[name]:
            out[name]["best"] = _best(Path(out[name]["run_dir"]), cfg, initial, measured, out[name]["iterations"],
                                      out["start"]["diagnosis"]["greedy"])
    for key in ("benchmark", "when", "machine"):  # write() sets them anew
        out.pop(key, None)
    write(result, out)


def measure_gradient_noise(bench: BenchRLConfig) -> None:
    """The start's policy-gradient noise (``grpo.gradient_noise``) over ``bench.gradient_noise``
    independent batches, drawn as the setup's runs draw them; writes <result>_gradient_noise.json."""
    setup = bench.setup
    ckpt = setup.start_checkpoint(bench.sft_steps, bench.base_sft_steps)
    cfg = from_hydra(TrainConfig, compose("train", [f"env={setup.task}", f"init_checkpoint={ckpt}", "iterations=1",
                                                    *setup.overrides, "eval_episodes=0"]))
    with tempfile.TemporaryDirectory() as tmp:
        measured = grpo.gradient_noise(cfg, tmp, bench.gradient_noise)
    write(setup.result_name + "_gradient_noise",
          {"task": setup.task, "setting": setup.result_name, "command": f"{setup.command} gradient_noise="
           f"{bench.gradient_noise}", "commit": git_commit(), "start": {"checkpoint": str(ckpt)}, **measured})


def run_dir(cache: Path, result: str, variant: str) -> Path:
    """Where a variant's GRPO run goes: the newest run of the same setting and variant, if a killed
    bench left it unfinished (its checkpoint on disk, not complete), which ``grpo.train`` resumes with
    what is left of its budget; else a new folder."""
    prefix = f"{result}_{variant}_"
    runs = sorted((p for p in cache.glob(prefix + "*") if p.name[len(prefix):].isdigit()),
                  key=lambda p: int(p.name[len(prefix):]), reverse=True)
    saved = [run for run in runs if (run / "checkpoint" / "meta.json").exists()]
    if saved and checkpoint.completion(checkpoint.read_meta(saved[0] / "checkpoint", verify=False))[0] is False:
        print(f"bench-rl: resuming the unfinished run {saved[0]}", file=sys.stderr)
        return saved[0]
    return cache / f"{prefix}{int(time.time())}"


def main(bench: BenchRLConfig) -> None:
    setup, budget, episodes = bench.setup, bench.budget_s, bench.eval_seeds
    ablation_budget = bench.ablation_budget_s or budget
    ckpt = setup.start_checkpoint(bench.sft_steps, bench.base_sft_steps)
    recipe = from_hydra(TrainConfig, compose("train", [f"env={setup.task}", f"init_checkpoint={ckpt}",
                                                       f"temperature={setup.temperature}",
                                                       *camera_overrides(setup.cameras)]))
    initial = _initial_states(recipe, episodes)
    start = _measure(TorchPolicy.from_checkpoint(ckpt), recipe, initial)
    before = start["greedy"]
    only = list(bench.variants)
    result = setup.result_name
    out = {"task": setup.task, "setting": result, "command": setup.command, "commit": git_commit(),
           "held_out_seeds": episodes,
           "start": {"checkpoint": str(ckpt), **before, **_headline(start), "diagnosis": start}}
    if not only:  # the start alone: what a setup gives RL to work from, before any run
        write(result + "_start", out)
        return
    previous = RESULTS / f"{result}.json"
    if set(only) != set(VARIANTS) and previous.exists():  # keep the other variants of the same start
        old = json.loads(previous.read_text())
        if old.get("start", {}).get("checkpoint") == str(ckpt):
            out |= {k: old[k] for k in VARIANTS if k in old and k not in only}
    for name, overrides in ((n, VARIANTS[n]) for n in only):
        run = run_dir(CACHE, result, name)
        run_budget = budget if name == "grpo" else ablation_budget
        cfg = from_hydra(TrainConfig, compose("train", [
            f"env={setup.task}", f"init_checkpoint={ckpt}", "iterations=100000", *setup.overrides,
            f"time_budget_s={run_budget}",
            "eval_episodes=50", *overrides]))
        t0 = time.perf_counter()
        final = grpo.train(cfg, run)
        wall = time.perf_counter() - t0
        measured = _measure(TorchPolicy.from_checkpoint(final), cfg, initial)
        after = measured["greedy"]
        rows = read_metrics(run / "metrics.jsonl")
        iterations = max(r["step"] for r in rows)
        out[name] = {
            "budget_s": run_budget,
            "lr": setup.lr,
            "lr_warmup_iters": setup.warmup,
            "seed": setup.seed,
            "late_temperature": setup.late_temperature,
            "late_fraction": setup.late_fraction if setup.late_temperature else None,
            "rollout_max_steps": setup.horizon,
            "eval_every": setup.eval_every,
            "overrides": overrides,
            "wall_s": wall,
            "iterations": iterations,
            "final": after,
            "diagnosis": measured,
            "gain_points": 100 * (after["success_rate"] - before["success_rate"]),
            "best": _best(run, cfg, initial, measured, iterations, before),
            "curve_seeds": [cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_episodes - 1],
            "curve": [{"iteration": r["step"], "wall_s": r.get("wall_s", 0.0), "eval_success_50": r["eval_success"]}
                      for r in rows if "eval_success" in r],
            "train_reward": [r["reward"] for r in rows if "reward" in r],
            "train_reward_by_side": {s: [r.get(f"reward_{s}") for r in rows if "reward" in r]
                                     for s in ("left", "right") if any(f"reward_{s}" in r for r in rows)},
            **_shares([r for r in rows if "reward" in r]),
            "run_dir": str(run),
        }
        plot_curves(run / "metrics.jsonl", ["eval_success", "reward", "kept_groups"],
                    CACHE / f"{result}_{name}.png", name,
                    marks={"eval_success": ("SFT start, held-out", before["success_rate"])})
        if name == "grpo":  # the task's RL'd policy for the trial node
            out["last"] = _headline(measured)
            bundle = CACHE / f"bundle_{result}"
            export(ExportConfig(env=cfg.env, checkpoint=str(final), out_dir=str(bundle)), progress=False)
            out[name]["bundle"] = str(bundle)
        write(result, out)  # after every variant: a cut-short bench keeps what it finished
    if setup.task != "click_bell":
        return
    # a reference that does look: the same policy SFT'd on 50 demos (after the runs, whose budgets it
    # would otherwise delay by the 50 demos' recording and SFT)
    start["image_sensitivity_50_demo_sft"] = image_sensitivity(TorchPolicy.from_checkpoint(sft_checkpoint(50, 1500)),
                                                               initial[0][:SENSITIVITY_SEEDS])
    write(result, out)


if __name__ == "__main__":
    cfg = from_hydra(BenchRLConfig, compose("bench_rl", sys.argv[1:]))
    if cfg.remeasure:
        remeasure(cfg.eval_seeds, cfg.setup)
    elif cfg.gradient_noise:
        measure_gradient_noise(cfg)
    else:
        main(cfg)
