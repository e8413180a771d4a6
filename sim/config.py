"""Typed environment configuration (the ``env/`` Hydra group), checked on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pushcut.configs import ranges, require, to_dataclass
from pushcut.spec import TWIN_CAMERAS

TWIN_TASKS = ("click_bell", "stack_bowls_two", "stack_bowls_three")
LIBERO_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
LIBERO_CAMERAS = ("agentview", "robot0_eye_in_hand")


# env fields renamed since a checkpoint or record may have been written: old name -> new
RENAMED_FIELDS = {"control_hz": "action_hz"}


def upgrade_env_record(record: dict) -> dict:
    """An env config as a checkpoint or record stored it, under today's field names."""
    return {RENAMED_FIELDS.get(k, k): v for k, v in record.items()}


@ranges(light=">=0", color=">=0", camera_pos=">=0", camera_rot_deg=">=0", fov_deg=">=0", mass=">=0", friction=">=0",
        latency_steps=">=0", speed="[0,1)", image_noise=">=0", blur=">=0", jpeg_quality="[1,100]", distractors=">=0")
@dataclass(frozen=True, kw_only=True)
class RandomizationConfig:
    """Domain randomisation for sim-to-real, drawn per episode; everything off unless ``enabled``.

    The ranges in use are the env configs' (configs/env/*.yaml). A field added after the first ones
    defaults to none (no latency, no noise, no distractors, ...), so that an env record written before
    it existed (a checkpoint's, a bundle's) reads back as the twin it ran on."""

    enabled: bool = False
    light: float = 0.3  # relative jitter of light intensity
    color: float = 0.15  # jitter of rgb of table and objects
    camera_pos: float = 0.01  # m, std of camera position jitter
    camera_rot_deg: float = 1.0  # deg, std of camera orientation jitter
    fov_deg: float = 0.0  # deg, std of the cameras' vertical field of view (intrinsics)
    mass: float = 0.2  # relative jitter of object mass
    friction: float = 0.2  # relative jitter of sliding friction
    latency_steps: int = 0  # max action latency (control steps), sampled per episode
    speed: float = 0.0  # the joints' top speed drawn from (1 - speed .. 1) x the env's speed_percent
    image_noise: float = 0.0  # max std of Gaussian pixel noise (0-255)
    blur: float = 0.0  # max std of a Gaussian blur, pixels
    jpeg_quality: int = 100  # JPEG round trip at a quality drawn from (jpeg_quality .. 100); 100: none
    distractors: int = 0  # up to this many visual-only objects (boxes, cylinders) on the free table


@ranges(camera_shift="[-0.5,0.5]", camera_tilt_deg="[-45,45]", light_scale=">0", color_shift="[0,1]", image_noise=">=0",
        latency_steps=">=0")
@dataclass(frozen=True, kw_only=True)
class PerturbationConfig:
    """A fixed change to the twin, the same in every episode (a transfer test's setting; the
    randomisation above samples around the nominal instead). Applied after the randomisation."""

    camera_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # m, added to each camera's position
    camera_tilt_deg: float = 0.0  # each camera pitched about its own x axis
    light_scale: float = 1.0  # every light's diffuse intensity times this
    color_shift: float = 0.0  # the table and objects tinted: red - this, blue + this (clipped to [0, 1])
    image_noise: float = 0.0  # std of Gaussian noise on every rendered pixel (0-255)
    latency_steps: int = 0  # the commanded actions arrive this many control steps late


@ranges(task_ids=">=0", image_size=">=1", max_steps=">=1", physics_hz=">=1", action_hz=">=1", num_wait_steps=">=0",
        lead_steps=">=0", speed_percent="[1,100]", grasp_force_limit=">0")
@dataclass(frozen=True, kw_only=True)
class EnvConfig:
    """One environment: the MuJoCo twin (``kind: twin``) or a LIBERO suite (``kind: libero``)."""

    kind: Literal["twin", "libero"] = "twin"
    task: str = "click_bell"  # twin task name, or LIBERO suite name
    task_ids: tuple[int, ...] = (0,)  # LIBERO: which tasks of the suite
    cameras: tuple[str, ...] = ("head",)
    image_size: tuple[int, int] = (64, 64)  # (height, width) rendered for the policy
    max_steps: int | None = None  # None: the task's own step limit
    physics_hz: int = 250
    action_hz: int = 25  # the policy's action rate: one action (joint target) per control step
    # twin: the joints' top speed as a percentage of the Piper's (spec.JOINT_MAX_SPEED at 100), the
    # arm's speed setting; a bundle carries it and the robot runs at it (deploy/bundle.check_contract)
    speed_percent: int = 100
    num_wait_steps: int = 10  # LIBERO: no-op steps after reset
    head_calibration: str | None = None  # twin: camera_head.json from pushcut-calibrate (sim-to-real)
    # twin: the largest force (N) a grasp holds its object with before it slips (the weld lets go
    # and re-grips where the object then is, if the pads still pinch it); None: it never slips
    grasp_force_limit: float | None = None
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)  # twin: a fixed change (eval suites)
    # twin: how chunks are executed, as the robot's policy node does (pushcut.motion).
    # sync: each chunk to its end, at rest; async: the next chunk is inferred lead_steps before it
    # takes over (on the frame then, with the proprio at the takeover) and spliced in one step
    # before the current chunk's end, so the arm never stops between chunks
    execution: Literal["sync", "async"] = "sync"
    lead_steps: int = 2  # async: control steps the next inference overlaps (its latency, rounded up)
    # LIBERO: which of each task's 50 fixed initial states a seed can draw (sim.libero.INIT_STATE_SPLIT):
    # split: training seeds (0 on) the first 30, validation seeds (90000 on) the next 10, held-out
    # seeds (100000 on) the last 10, never seen in training or validation; all: any seed any of the
    # 50, as SimpleVLA-RL trains and evaluates (its figures are on states training also saw)
    init_states: Literal["split", "all"] = "split"

    def __post_init__(self) -> None:
        if self.kind == "twin":
            require(self.task in TWIN_TASKS, f"unknown twin task {self.task!r}; known: {list(TWIN_TASKS)}")
            allowed = TWIN_CAMERAS
        else:
            require(self.task in LIBERO_SUITES, f"unknown LIBERO suite {self.task!r}; known: {list(LIBERO_SUITES)}")
            allowed = LIBERO_CAMERAS
        require(len(self.cameras) > 0, "cameras must name at least one camera")
        bad = [c for c in self.cameras if c not in allowed]
        require(not bad, f"unknown camera(s) {bad}; known for {self.kind}: {list(allowed)}")
        require(len(set(self.cameras)) == len(self.cameras), "cameras must not repeat")
        require(self.physics_hz % self.action_hz == 0, "physics_hz must be a multiple of action_hz")
        if self.execution == "async":
            require(self.kind == "twin", "execution=async is implemented for the twin only")
            require(not (self.randomization.enabled and self.randomization.latency_steps),
                    "execution=async models the policy's latency itself (lead_steps): "
                    "set randomization.latency_steps=0")

    @property
    def substeps(self) -> int:
        return self.physics_hz // self.action_hz


def read_env(record: dict, where: str = "env") -> EnvConfig:
    """The env config a checkpoint's run config stored (``where`` names it in errors)."""
    return to_dataclass(EnvConfig, upgrade_env_record(record), where)
