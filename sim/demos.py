"""Expert demonstrations: recording (``pushcut-demos``), the on-disk format, and loading.

Format (version 1), one folder per task (a twin task, or ``<suite>_task<k>`` for one LIBERO
task)::

    <out_dir>/<task>/meta.json          format, version, task, instruction, env config,
                                        chunk_len, cameras, episode list, action/proprio stats
    <out_dir>/<task>/episode_00000.npz  actions (T, A) float32     every executed action
                                        obs_steps (K,) int32       step index of each observation
                                        obs_proprio (K, P) float32
                                        images_<camera> (K, H, W, 3) uint8
                                        seed () int64

An observation is stored where each executed chunk starts (the moments a chunked policy is
queried). To give a chunked policy more than a couple of states per demo, the recorded action
stream is replayed from the same seed with the chunk boundaries shifted by each of
``obs_offsets`` steps, and the observations at those boundaries are kept too (the smoothing then
differs slightly, a realistic perturbation); ``obs_steps`` is sorted. LIBERO steps one action
at a time, so its shifted chunk starts are taken from the one run. Only successful episodes are
kept. Statistics are per action dimension (min, max, q01, q99, mean, std) over all kept
actions. Files are written atomically; npz is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from pushcut.artefacts import read_versioned, write_json_atomic
from pushcut.configs import hydra_entry, ranges, require, to_dict
from pushcut.sim.config import EnvConfig

DEMO_FORMAT = "pushcut-demos"
DEMO_VERSION = 1


@ranges(num_episodes=">=1", seed_start=">=0", chunk_len=">=1", obs_offsets=">=1", max_attempts=">=1")
@dataclass(frozen=True, kw_only=True)
class DemosConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    num_episodes: int = 50
    seed_start: int = 0
    chunk_len: int = 25
    obs_offsets: tuple[int, ...] = (5, 10, 15, 20)  # extra replays with shifted chunk boundaries
    out_dir: str = "demos"
    max_attempts: int | None = None  # seeds to try before giving up (None: 2 * num_episodes + 10)
    # pushcut: the npz folder SFT reads; lerobot: a LeRobot v3.0 dataset (every control step a frame,
    # fps = the action rate, camera videos) in <out_dir>/<task folder>
    format: Literal["pushcut", "lerobot"] = "pushcut"

    def __post_init__(self) -> None:
        require(all(0 < o < self.chunk_len for o in self.obs_offsets), "obs_offsets must lie in (0, chunk_len)")
        require(self.env.kind == "twin" or len(self.env.task_ids) == 1,
                "LIBERO demos are recorded one task at a time: give env.task_ids a single id")


def folder_name(env: EnvConfig) -> str:
    """A task's demo folder under ``out_dir``: the twin task, or ``<suite>_task<k>`` for LIBERO."""
    return env.task if env.kind == "twin" else f"{env.task}_task{env.task_ids[0]}"


def task_envs(env: EnvConfig, tasks: tuple[str, ...] | None = None) -> list[EnvConfig]:
    """One env config per demo folder: each twin task of ``tasks``, or each id of a LIBERO suite."""

    if env.kind == "twin":
        return [replace(env, task=t) for t in (tasks or (env.task,))]
    return [replace(env, task_ids=(k,)) for k in env.task_ids]


def array_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics of ``x`` (N, D) as JSON-ready lists."""
    return {
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
    }


def _save_npz_atomic(path: Path, **arrays) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _replay(env, seed: int, actions: np.ndarray, offset: int, chunk_len: int, steps: list, frames: list) -> None:
    """Replay ``actions`` from ``seed`` in chunks starting at ``offset``; add the observations."""
    env.reset(seed)
    if offset >= len(actions):
        return
    step = env.step(actions[:offset])
    start = offset
    while start < len(actions) and not step.done:
        steps.append(start)
        frames.append(step.obs)
        step = env.step(actions[start : start + chunk_len])
        start += chunk_len


def _twin_episode(env, seed: int, cfg: DemosConfig):
    """The expert's actions and the observations at every chunk start (plus shifted replays)."""
    from pushcut.sim.expert import run_expert

    frames: list = []
    actions: list = []
    steps: list = []

    def on_chunk(obs, chunk):
        steps.append(sum(len(a) for a in actions))
        frames.append(obs)
        actions.append(chunk)

    if not run_expert(env, seed, cfg.chunk_len, on_chunk=on_chunk):
        return None
    acts = np.concatenate(actions).astype(np.float32)
    for offset in cfg.obs_offsets:
        _replay(env, seed, acts, offset, cfg.chunk_len, steps, frames)
    return acts, steps, frames


def _libero_episode(env, seed: int, cfg: DemosConfig):
    """LIBERO steps one action at a time, so the shifted chunk starts need no replay; only the kept
    observations are rendered."""
    from pushcut.sim.libero_expert import run_libero_expert

    frames: list = []
    actions: list = []
    starts = {0, *cfg.obs_offsets}  # step indices modulo chunk_len where a kept chunk starts

    def kept(t: int) -> bool:
        return t % cfg.chunk_len in starts

    if not run_libero_expert(env, seed, on_step=lambda obs, a: (frames.append(obs), actions.append(a)),
                             render_at=kept):
        return None
    keep = [t for t in range(len(actions)) if kept(t)]
    return np.stack(actions).astype(np.float32), keep, [frames[t] for t in keep]


def _frame_arrays(obs: list, actions, cameras) -> dict[str, np.ndarray]:
    """One LeRobot episode's features: the observation before every action, and the action."""
    return {"observation.state": np.stack([o.proprio for o in obs]).astype(np.float32),
            "action": np.asarray(actions, dtype=np.float32),
            **{f"observation.images.{c}": np.stack([o.images[c] for o in obs]) for c in cameras}}


def _twin_frames(env, seed: int, chunk_len: int) -> dict[str, np.ndarray] | None:
    """A twin expert episode frame by frame, observed as it runs (None where the expert fails)."""
    from pushcut.sim.expert import run_expert

    obs, actions = [], []

    def on_chunk(o, chunk):
        if not obs:  # the reset observation; every other one comes after a control step
            obs.append(o)
        actions.append(chunk)

    env.on_control_step = lambda: obs.append(env.observe())
    try:
        succeeded = run_expert(env, seed, chunk_len, on_chunk=on_chunk)
    finally:
        env.on_control_step = None
    n = env.steps  # a success ends the episode inside its last chunk: the frames up to its last action
    return _frame_arrays(obs[:n], np.concatenate(actions)[:n], env.cfg.cameras) if succeeded else None


# LeRobot feature names of each env kind's state and action
LEROBOT_NAMES = {"libero": (["eef_x", "eef_y", "eef_z", "eef_rx", "eef_ry", "eef_rz", "finger_l", "finger_r"],
                            ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"])}
ROBOT_TYPES = {"twin": "piper_dual", "libero": "libero_panda"}


def _libero_frames(env, seed: int) -> dict[str, np.ndarray] | None:
    """A LIBERO expert episode frame by frame (None where the expert fails)."""
    from pushcut.sim.libero_expert import run_libero_expert

    obs, actions = [], []
    if not run_libero_expert(env, seed, on_step=lambda o, a: (obs.append(o), actions.append(a))):
        return None
    return _frame_arrays(obs, np.stack(actions), env.cfg.cameras)


def _expert_frames(env, seed: int, cfg: DemosConfig) -> dict[str, np.ndarray] | None:
    return _libero_frames(env, seed) if cfg.env.kind == "libero" else _twin_frames(env, seed, cfg.chunk_len)


def record_lerobot(cfg: DemosConfig, progress: bool = True) -> Path:
    """Record ``cfg.num_episodes`` successful expert episodes as a LeRobot v3.0 dataset at
    ``<out_dir>/<task folder>`` (``pushcut.lerobot``); returns it."""

    from pushcut.lerobot import vector_feature, video_feature, write_dataset
    from pushcut.sim.registry import make_env
    from pushcut.spec import dual_arm_names

    env = make_env(cfg.env)
    try:
        episodes = [frames for _, frames in expert_runs(cfg, lambda seed: _expert_frames(env, seed, cfg), progress,
                                                        "lerobot") if frames is not None]
    finally:
        env.close()
    h, w = cfg.env.image_size
    state, action = LEROBOT_NAMES.get(cfg.env.kind, (dual_arm_names(), dual_arm_names()))
    features = {"observation.state": vector_feature(state), "action": vector_feature(action),
                **{f"observation.images.{c}": video_feature(h, w, cfg.env.action_hz) for c in cfg.env.cameras}}
    return write_dataset(Path(cfg.out_dir) / folder_name(cfg.env), episodes, [env.instruction] * len(episodes),
                         features, cfg.env.action_hz, robot_type=ROBOT_TYPES[cfg.env.kind])


def expert_runs(cfg: DemosConfig, run, progress: bool, label: str):
    """``(seed, run(seed))`` from ``seed_start`` on until ``num_episodes`` runs have returned an
    episode (the expert succeeded; None: it failed); refused past ``max_attempts`` seeds."""
    from tqdm import tqdm

    attempts = cfg.max_attempts or 2 * cfg.num_episodes + 10
    kept, seed = 0, cfg.seed_start
    with tqdm(total=cfg.num_episodes, desc=f"{label} {folder_name(cfg.env)}", disable=not progress) as bar:
        while kept < cfg.num_episodes:
            if seed - cfg.seed_start >= attempts:
                raise RuntimeError(f"the expert succeeded on {kept} of {attempts} seeds of {folder_name(cfg.env)}; "
                                   f"{cfg.num_episodes} were asked for")
            result = run(seed)
            if result is not None:
                kept += 1
                bar.update(1)
            yield seed, result
            seed += 1


def record(cfg: DemosConfig, progress: bool = True) -> Path:
    """Record ``cfg.num_episodes`` successful expert episodes; return the task's folder."""
    if cfg.format == "lerobot":
        return record_lerobot(cfg, progress)

    from pushcut.sim.registry import make_env

    out = Path(cfg.out_dir) / folder_name(cfg.env)
    out.mkdir(parents=True, exist_ok=True)
    env = make_env(cfg.env)
    run_episode = _twin_episode if cfg.env.kind == "twin" else _libero_episode
    episodes, all_actions, all_proprio, failures = [], [], [], []
    try:
        for seed, episode in expert_runs(cfg, lambda seed: run_episode(env, seed, cfg), progress, "demos"):
            if episode is not None:
                acts, steps, frames = episode
                order = np.argsort(steps, kind="stable")
                steps = [steps[i] for i in order]
                frames = [frames[i] for i in order]
                name = f"episode_{len(episodes):05d}.npz"
                _save_npz_atomic(
                    out / name,
                    actions=acts,
                    obs_steps=np.array(steps, dtype=np.int32),
                    obs_proprio=np.stack([f.proprio for f in frames]).astype(np.float32),
                    seed=np.int64(seed),
                    **{f"images_{c}": np.stack([f.images[c] for f in frames]) for c in cfg.env.cameras},
                )
                episodes.append({"file": name, "seed": seed, "steps": len(acts)})
                all_actions.append(acts)
                all_proprio.append(np.stack([f.proprio for f in frames]))
            else:
                failures.append(seed)
    finally:
        env.close()
    meta = {
        "format": DEMO_FORMAT,
        "version": DEMO_VERSION,
        "task": folder_name(cfg.env),
        "instruction": env.instruction,
        "env": to_dict(cfg.env),
        "chunk_len": cfg.chunk_len,
        "cameras": list(cfg.env.cameras),
        "image_size": list(cfg.env.image_size),
        "episodes": episodes,
        "failed_seeds": failures,
        "action_stats": array_stats(np.concatenate(all_actions)),
        "proprio_stats": array_stats(np.concatenate(all_proprio)),
    }
    write_json_atomic(out / "meta.json", meta)
    return out


@dataclass
class DemoSet:
    """Loaded demos of one task: per-episode arrays plus ``meta``."""

    meta: dict
    episodes: list[dict[str, np.ndarray]]

    @property
    def action_stats(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float32) for k, v in self.meta["action_stats"].items()}


def load(path: str | Path, max_episodes: int | None = None) -> DemoSet:
    """Load a task folder written by :func:`record`; refuses unknown formats and versions."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path} holds no demos (no meta.json); record them with pushcut-demos")
    meta = read_versioned(meta_path, DEMO_FORMAT, (DEMO_VERSION,), ValueError, "demos")
    entries = meta["episodes"][:max_episodes] if max_episodes else meta["episodes"]
    episodes = []
    for e in entries:
        with np.load(path / e["file"], allow_pickle=False) as z:
            episodes.append({k: z[k] for k in z.files})
    return DemoSet(meta=meta, episodes=episodes)


def from_lerobot(root: str | Path, env: EnvConfig, cameras: dict[str, str], state_key: str = "observation.state",
                 action_key: str = "action", max_episodes: int | None = None) -> list[DemoSet]:
    """A LeRobot v3.0 dataset (``pushcut.lerobot``; recorded on a robot with a LeRobot plugin, or by
    ``pushcut-demos format=lerobot``) as demos, one set per task string: every frame an observation
    (``state_key`` the proprio, ``cameras`` policy camera -> video feature) and ``action_key`` the
    actions. Refused, with the reason, where its rate is not the env's action rate or a feature is
    missing or of another size than the env's."""
    from pushcut.lerobot import LeRobotFormatError, read_dataset
    from pushcut.sim.registry import ACTION_DIM, PROPRIO_DIM

    info, episodes, tasks = read_dataset(root)
    feats, where = info["features"], f"LeRobot dataset {root}"
    if info["fps"] != env.action_hz:
        raise LeRobotFormatError(f"{where} is recorded at {info['fps']} fps; the policy acts at "
                                 f"env.action_hz={env.action_hz}: train at its rate (env.action_hz={info['fps']}) "
                                 "or resample it")
    wanted = {state_key: PROPRIO_DIM[env.kind], action_key: ACTION_DIM[env.kind]}
    for key, dim in wanted.items():
        if key not in feats:
            raise LeRobotFormatError(f"{where} has no feature {key!r}; it has {sorted(feats)}")
        if feats[key]["shape"] != [dim]:
            raise LeRobotFormatError(f"{where}: {key!r} is {feats[key]['shape']}; the {env.kind} env's is [{dim}]")
    for cam, key in cameras.items():
        if feats.get(key, {}).get("dtype") != "video":
            raise LeRobotFormatError(f"{where} has no video {key!r} for camera {cam!r}; its videos: "
                                     f"{sorted(k for k, f in feats.items() if f['dtype'] == 'video')}")
    by_task: dict[str, list[dict]] = {}
    for ep, task in zip(episodes[:max_episodes] if max_episodes else episodes, tasks):
        n = len(ep[action_key])
        by_task.setdefault(task, []).append(
            {"actions": ep[action_key], "obs_steps": np.arange(n, dtype=np.int32), "obs_proprio": ep[state_key],
             **{f"images_{cam}": ep[key] for cam, key in cameras.items()}})
    return [DemoSet(meta={"task": task, "instruction": task, "source": str(root), "episodes": eps}, episodes=eps)
            for task, eps in by_task.items()]


main = hydra_entry("demos", DemosConfig, lambda cfg, run_dir: print(f"wrote demos to {record(cfg)}"))


if __name__ == "__main__":
    main()
