"""Typed configs of the training entry points (sft, eval, train)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pushcut.configs import ranges, require
from pushcut.devices import check_device, check_providers
from pushcut.policy.config import PolicyConfig, check_policy_fits_env
from pushcut.sim.config import EnvConfig
from pushcut.sim.twin.mirror import MIRRORABLE_CAMERAS


@dataclass(frozen=True, kw_only=True)
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "pushcut"
    entity: str | None = None


def check_bundle_fits_env(manifest: dict, env: EnvConfig) -> None:
    """A bundle's action space, proprio and cameras against the env it is evaluated on."""
    from pushcut.deploy.bundle import check_compatible
    from pushcut.sim.registry import ACTION_DIM, PROPRIO_DIM

    check_compatible(manifest, ACTION_DIM[env.kind], env.cameras, proprio_dim=PROPRIO_DIM[env.kind],
                     target=f"the {env.kind} env ({env.task}, cameras {list(env.cameras)})")


def check_mirrorable(option: str, policy: PolicyConfig, env: EnvConfig) -> None:
    """An ``option`` that mirrors episodes left-right needs the twin and only its head camera."""
    require(env.kind == "twin", f"{option} mirrors the dual-arm twin's episodes; LIBERO's scenes are not symmetric")
    require(set(policy.cameras) <= set(MIRRORABLE_CAMERAS),
            f"{option} mirrors only the {list(MIRRORABLE_CAMERAS)} camera(s); the policy reads {list(policy.cameras)}")


@ranges(share="(0,1)")
@dataclass(frozen=True, kw_only=True)
class LeRobotSourceConfig:
    """SFT from a LeRobot v3.0 dataset instead of pushcut's demos: where it is and which of its
    features are the proprio, the actions and each of the policy's cameras (in policy.cameras' order)."""

    root: str | None = None  # the dataset's folder; null: pushcut's demos (demos_dir)
    # null: the dataset alone; a fraction: mixed with demos_dir's demos (e.g. real with sim), this
    # share of every batch drawn from the dataset
    share: float | None = None
    state: str = "observation.state"
    action: str = "action"
    cameras: tuple[str, ...] = ("observation.images.head",)


@ranges(demos_per_task=">=1", steps=">=1", batch_size=">=1", bin_smoothing=">=0", lr=">0", weight_decay=">=0",
        warmup_steps=">=0", grad_clip=">0", seed=">=0", log_every=">=1", save_every=">=1", eval_episodes=">=0",
        num_envs=">=1", eval_temperature=">0")
@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    demos_dir: str = "demos"
    demos_per_task: int = 50
    tasks: tuple[str, ...] | None = None
    init_checkpoint: str | None = None  # a pretrained policy to fine-tune (SFT'd on other tasks); null: scratch
    norm_bounds: Literal["robot", "demos"] = "robot"
    steps: int = 1500
    batch_size: int = 32
    mirror_demos: bool = False  # add each demo's mirror image (the other arm, the mirrored scene); twin only
    bin_smoothing: float = 0.0  # soft targets: a Gaussian of this std (in bins) around each target bin; 0: one-hot
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    save_every: int = 500  # steps between resumable checkpoints (weights, optimizer, RNGs)
    eval_episodes: int = 0
    # beside greedy, success sampled at this temperature (GRPO's rollout temperature: what its groups
    # will see; null: greedy only)
    eval_temperature: float | None = 1.6
    lerobot: LeRobotSourceConfig = field(default_factory=LeRobotSourceConfig)  # root set: train on that dataset
    num_envs: int = 2
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        require(self.tasks is None or self.env.kind == "twin",
                "tasks lists twin tasks; a LIBERO suite trains on its env.task_ids")
        require(self.lerobot.root is None or len(self.lerobot.cameras) == len(self.policy.cameras),
                f"lerobot.cameras {list(self.lerobot.cameras)} must name one video per policy camera "
                f"{list(self.policy.cameras)}")
        require(not self.policy.lora.rank or self.init_checkpoint is not None,
                "policy.lora: adapters fine-tune a base; give init_checkpoint")
        if self.mirror_demos:
            check_mirrorable("mirror_demos", self.policy, self.env)
        check_policy_fits_env(self.policy, self.env)


# named transfer suites: each setting changes the twin beyond what the randomisation's defaults
# sample (light +-30%, colours +-0.15, camera 1 cm / 1 deg std, no latency, the trained speed)
SUITES: dict[str, dict[str, dict]] = {
    "transfer": {
        "nominal": {},
        "camera_shift_3cm": {"perturbation": {"camera_shift": (0.03, 0.0, 0.0)}},
        "camera_tilt_5deg": {"perturbation": {"camera_tilt_deg": 5.0}},
        "light_dim_40": {"perturbation": {"light_scale": 0.4}},
        "light_bright_180": {"perturbation": {"light_scale": 1.8}},
        "colors_shift_03": {"perturbation": {"color_shift": 0.3}},
        "image_noise_12": {"perturbation": {"image_noise": 12.0}},
        "latency_3_steps": {"perturbation": {"latency_steps": 3}},
        "speed_70": {"speed_percent": 70},
    },
}


@ranges(episodes=">=1", seed_start=">=0", num_envs=">=1")
@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    checkpoint: str | None = None
    bundle: str | None = None
    episodes: int = 50
    seed_start: int = 100_000
    num_envs: int = 2
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    device: str = "cpu"  # where a checkpoint's policy runs (cuda: a GPU, in its policy.dtype); bundles use providers
    suite: str | None = None  # a transfer suite (SUITES above): success per perturbation, on the same seeds

    def __post_init__(self) -> None:
        require((self.checkpoint is None) != (self.bundle is None), "give exactly one of checkpoint= or bundle=")
        check_providers(self.providers, "providers")
        check_device(self.device, "device")
        require(self.suite is None or self.suite in SUITES, f"suite {self.suite!r}: known suites {sorted(SUITES)}")
        require(self.suite is None or self.env.kind == "twin", f"suite {self.suite!r} perturbs the twin, not LIBERO")


@ranges(num_workers=">=1", envs_per_worker=">=1", threads_per_worker=">=1", gpus_per_worker=">0")
@dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    # disaggregated: rollout workers with policy copies of their own (Ray actors, or in-process with
    # backend=local), sent the weights after every update; colocated: every learner rank rolls out
    # with the learner's own model on the learner's device (no copy, no sync; num_workers, backend,
    # device and threads_per_worker then do not apply)
    placement: Literal["disaggregated", "colocated"] = "disaggregated"
    backend: Literal["ray", "local"] = "ray"
    num_workers: int = 2  # Ray actors (rollout workers), each with persistent envs and a policy copy
    envs_per_worker: int = 4  # one batched forward pass per step covers all of a worker's envs
    env_processes: bool = False  # step a worker's envs in parallel processes (sim.vector) instead of in turn
    # with env_processes: half the envs step while the other half's forward pass runs (overlaps sim and
    # inference at half the batch per pass; worth it where bench-gpu shows a large sim share)
    pipeline: bool = False
    threads_per_worker: int = 1
    device: str = "cpu"  # where a worker's policy copy runs (cuda: its GPU, in policy.dtype)
    gpus_per_worker: float = 1.0  # GPUs each Ray actor asks for when device=cuda (fractions share a GPU)
    ray_address: str | None = None  # an existing cluster ("auto" or host:port); None starts one locally

    def __post_init__(self) -> None:
        require(self.device in ("cpu", "cuda"), f"rollout.device: {self.device!r} is not cpu or cuda")
        require(not self.pipeline or self.env_processes, "rollout.pipeline overlaps envs that step in their own "
                                                         "processes: set rollout.env_processes=true")
        if self.device == "cuda" and self.ray_address is None:  # a cluster's GPUs are its nodes' business
            check_device(self.device, "rollout.device")


@ranges(threads=">=1", micro_batch=">=1")
@dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    backend: Literal["gloo", "nccl"] = "gloo"  # torch.distributed backend when launched by torchrun
    device: str = "cpu"
    threads: int = 2
    fsdp: bool = False  # shard weights, gradients and optimizer state over the ranks (FSDP2); for 7B
    # recompute each vision and language layer's activations in the backward pass instead of keeping them
    activation_checkpointing: bool = False
    micro_batch: int | None = None  # chunks per forward/backward pass, gradients summed (null: a rank's whole share)
    cpu_offload: bool = False  # FSDP: keep the sharded weights, gradients and AdamW state in host memory

    def __post_init__(self) -> None:
        check_device(self.device, "device")
        require(not self.cpu_offload or self.fsdp, "learner.cpu_offload offloads FSDP shards: set learner.fsdp=true")


@ranges(layouts=">=0", window=">=1", max_samples="[2,64]")
@dataclass(frozen=True, kw_only=True)
class CurriculumConfig:
    # layouts > 0: training's initial states come from a pool of this many (seeds train_seed_start on),
    # each drawn with probability p(1-p) of its recent success p (training/curriculum.py); 0: a new
    # initial state per group (the recipe)
    layouts: int = 0
    window: int = 32  # a layout's success is estimated from its last this-many rollouts
    max_samples: int = 8  # where success (or failure) is rare, a group grows from n_samples to this (<= 64)


@ranges(n_samples=">=2", groups_per_iter=">=1", max_draw_rounds=">=1", temperature=">0", late_temperature=">0",
        late_fraction="(0,1]", group_success_bounds="[0,1]", rollout_max_steps=">=1", clip_ratio_low="[0,1)",
        clip_ratio_high=">0", kl_coef=">=0", target_kl=">0", bc_coef=">=0", bc_batch=">=1",
        entropy_coef=">=0", lr=">0", lr_warmup_iters=">=0", weight_decay=">=0", betas="[0,1)", grad_clip=">0",
        mini_batches=">=1", ppo_epochs=">=1", success_reward=">0", gamma="[0,1]", gae_lambda="[0,1]", critic_lr=">0",
        iterations=">=1", time_budget_s=">0",
        eval_every=">=0",
        eval_episodes=">=0", eval_seed_start=">=0", train_seed_start=">=0", save_every=">=1", seed=">=0")
@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    init_checkpoint: str | None = None  # the SFT checkpoint to start from
    n_samples: int = 8  # rollouts per (task, initial state)
    groups_per_iter: int = 8  # groups kept per iteration (the batch)
    max_draw_rounds: int = 4  # dynamic sampling: draw at most this many batches of groups
    dynamic_sampling: bool = True
    # dynamic sampling keeps a group whose success rate lies within these bounds, inclusive
    # (null: any mixed group, 1/n to (n-1)/n; the reference: [0.1, 0.9], which drops groups of
    # more than 10 with one success or one failure)
    group_success_bounds: tuple[float, float] | None = None
    temperature: float = 1.6
    # the last late_fraction of the run (of its time budget, or of its iterations) rolls out at
    # late_temperature instead (null: the recipe's constant temperature), so the reward then
    # improves a policy whose samples stay near its greedy decoding
    late_temperature: float | None = None
    late_fraction: float = 0.3
    # also learn from each kept trajectory's mirror image (the other arm on the mirrored scene, same
    # advantage, old log-probs taken by the policy before the update); twin and head camera only
    mirror_augment: bool = False
    # training rollouts end after the chunk that reaches this many control steps, failures unless they
    # have succeeded by then (null: the task's own limit, as evaluation always uses): a failure costs
    # that much simulation and inference instead of the task's full limit
    rollout_max_steps: int | None = None
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    kl_coef: float = 0.0
    # loss_k3: kl_coef x the k3 estimate of KL(pi || SFT reference) in the loss, per token (ours);
    # reward_k1: kl_coef x the k1 estimate summed over a trajectory's tokens, off its reward (the reference's)
    kl_penalty: Literal["loss_k3", "reward_k1"] = "loss_k3"
    entropy_coef: float = 0.0
    # PPO's target_kl (trust region): an update skips its remaining optimiser steps once a
    # mini-batch's approx_kl against the rollout policy passes this (null: every step is taken)
    target_kl: float | None = None
    # demonstrations in the loss (RLinf's SFT co-training, 0.2 there): every optimiser step adds
    # bc_coef x the token cross-entropy of bc_batch chunks drawn from the demos the start was SFT'd
    # on (read from init_checkpoint's run config); 0: off
    bc_coef: float = 0.0
    bc_batch: int = 32
    lr: float = 5e-6
    lr_warmup_iters: int = 0  # linear warmup of lr over the first iterations (the recipe: 0, a constant lr)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    mini_batches: int = 4  # optimiser steps per pass over the iteration's data
    # batch: every optimiser step's loss is its share of the mean over the iteration's trajectories
    # (the steps add up to one full-batch loss); step: the mean over the step's own share, as the
    # reference (each step mini_batches times larger before the grad clip)
    loss_normalization: Literal["batch", "step"] = "batch"
    # how a pass is cut into mini-batches: chunks shuffled and cut (ours), or whole trajectories
    # shuffled and cut (the reference's, where a step's "own mean" is over the trajectories it holds)
    minibatch_split: Literal["chunks", "trajectories"] = "chunks"
    # grpo: group-normalised advantages (the recipe); ppo: GAE over each trajectory's chunks from a
    # value head on the policy's features (training/critic.py), the same rollouts and clipped loss
    algorithm: Literal["grpo", "ppo"] = "grpo"
    gamma: float = 0.99  # ppo: discount per chunk
    gae_lambda: float = 0.95  # ppo: GAE's lambda
    critic_lr: float = 1e-3  # ppo: the value head's AdamW learning rate
    # the reward of a success (0 for a failure): group normalisation cancels its scale, except against
    # kl_penalty=reward_k1, whose kl_coef it sets the meaning of (the reference: 5)
    success_reward: float = 1.0
    ppo_epochs: int = 1  # passes over the iteration's data (the recipe: one)
    iterations: int = 100
    time_budget_s: float | None = None  # stop when this much wall time has been used (resumes count)
    eval_every: int = 5
    eval_episodes: int = 50
    eval_seed_start: int = 90_000  # validation seeds: apart from training's (0 on) and pushcut-eval's (100000 on)
    keep_best: bool = True  # also save the policy at its best periodic evaluation so far to <run>/best
    train_seed_start: int = 0
    save_every: int = 1
    seed: int = 0
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.group_success_bounds is not None:
            lo, hi = self.group_success_bounds
            require(0 <= lo <= hi <= 1, f"group_success_bounds {list(self.group_success_bounds)}: "
                                        "need 0 <= low <= high <= 1")
        if self.mirror_augment:
            check_mirrorable("mirror_augment", self.policy, self.env)
        check_policy_fits_env(self.policy, self.env)
        require(not (self.policy.lora.rank and self.learner.fsdp),
                "policy.lora: adapters train on one GPU without sharding (learner.fsdp=false)")
        require(self.algorithm == "grpo" or not (self.learner.fsdp or self.mirror_augment),
                "algorithm=ppo: its critic is not sharded (learner.fsdp) and values no mirror images (mirror_augment)")
        c = self.curriculum
        require(not c.layouts or self.train_seed_start + c.layouts <= self.eval_seed_start,
                f"curriculum.layouts: seeds {self.train_seed_start} to {self.train_seed_start + c.layouts - 1} "
                f"reach the validation seeds from eval_seed_start={self.eval_seed_start}")
        require(not c.layouts or c.max_samples >= self.n_samples,
                f"curriculum.max_samples {c.max_samples} is below n_samples {self.n_samples}")
        require(self.rollout.placement == "disaggregated" or not self.learner.cpu_offload,
                "rollout.placement=colocated rolls out with the learner's model, which learner.cpu_offload "
                "keeps in host memory: use the disaggregated placement")
