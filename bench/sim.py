"""bench-sim: env throughput of the twin against LIBERO in the same run, and expert success.

"Rendered step": one control step followed by rendering the policy's observation (what LIBERO
does every step). Chunked: a chunk per rendered observation, as our policy runs (25 actions on
the twin, 8 on LIBERO, which renders at 256 x 256 and prepares the frame as the reference does).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from bench.common import held_out_seeds, write
from pushcut.sim.config import EnvConfig
from pushcut.sim.expert import run_expert
from pushcut.sim.libero import NOOP, RENDER_SIZE, LiberoEnv
from pushcut.sim.twin.env import TwinEnv
from pushcut.sim.vector import VectorEnv

IMAGE = (64, 64)
N_EXPERT = 200
LIBERO_CHUNK = 8  # OpenVLA-OFT's LIBERO chunk


def _steps_per_s(env_step, reset, n_steps: int, per_call: int) -> float:
    reset()
    t0 = time.perf_counter()
    done_steps = 0
    while done_steps < n_steps:
        step = env_step()
        done_steps += per_call
        if step.done:
            reset()
    return done_steps / (time.perf_counter() - t0)


def twin_figures() -> dict:
    env = TwinEnv(EnvConfig(task="click_bell", image_size=IMAGE))
    hold = lambda: env.target.copy()
    seeds = iter(range(10_000))
    one = _steps_per_s(lambda: env.step(hold()), lambda: env.reset(next(seeds)), 400, 1)
    chunk = _steps_per_s(lambda: env.step(np.tile(hold(), (25, 1))), lambda: env.reset(next(seeds)), 2000, 25)
    env.close()
    with VectorEnv(EnvConfig(task="click_bell", image_size=IMAGE), num_envs=2) as venv:
        obs = venv.reset([0, 1])
        targets = [o.proprio for o in obs]
        t0 = time.perf_counter()
        n = 0
        for _ in range(200):
            steps = venv.step(list(targets))
            n += 2
            if any(s.done for s in steps):
                venv.reset([n, n + 1])
        vec = n / (time.perf_counter() - t0)
    return {"rendered_steps_per_s": one, "chunked_steps_per_s": chunk, "vector2_rendered_steps_per_s": vec}


def libero_figures() -> dict:
    """LIBERO rendering an observation after every control step (``rendered_steps_per_s``, as the
    env did before it rendered only at chunk boundaries) against an 8-action chunk per observation
    (``chunked_steps_per_s``, the policy's chunk, what rollouts now do); a task switch that builds
    the task's simulator (every switch, before each task's simulator was kept) against one that
    finds it built."""
    cfg = EnvConfig(kind="libero", task="libero_spatial", task_ids=(0, 1), cameras=("agentview",), image_size=IMAGE,
                    physics_hz=500, action_hz=20)
    env = LiberoEnv(cfg)
    t0 = time.perf_counter()
    env.reset(0)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    env.reset(1)  # task 1: built
    switch_build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    env.reset(2)  # task 0 again: kept
    switch_kept_s = time.perf_counter() - t0
    one = _steps_per_s(lambda: env.step(NOOP), lambda: env.reset(0), 60, 1)
    chunk = _steps_per_s(lambda: env.step(np.tile(NOOP, (LIBERO_CHUNK, 1))), lambda: env.reset(0), 240, LIBERO_CHUNK)
    env.close()
    with VectorEnv(replace(cfg, task_ids=(0,)), num_envs=2) as venv:
        venv.reset([0, 1])
        t0 = time.perf_counter()
        for _ in range(30):
            venv.step([NOOP, NOOP])
        vec = 60 / (time.perf_counter() - t0)
    return {"rendered_steps_per_s": one, "chunked_steps_per_s": chunk, "chunk": LIBERO_CHUNK,
            "chunked_over_rendered": chunk / one, "vector2_rendered_steps_per_s": vec, "first_reset_s": build_s,
            "task_switch_building_s": switch_build_s, "task_switch_kept_s": switch_kept_s,
            "render_size": RENDER_SIZE}


def expert_figures() -> dict:
    out = {}
    for task in ("click_bell", "stack_bowls_two", "stack_bowls_three"):
        env = TwinEnv(EnvConfig(task=task, image_size=(16, 16)))
        t0 = time.perf_counter()
        ok = [run_expert(env, seed, chunk_len=25) for seed in held_out_seeds(N_EXPERT)]
        out[task] = {"success_rate": float(np.mean(ok)), "episodes": N_EXPERT,
                     "seconds_per_episode": (time.perf_counter() - t0) / N_EXPERT}
        env.close()
    return out


def main() -> None:
    twin = twin_figures()
    libero = libero_figures()
    write(
        "sim",
        {
            "image_size": list(IMAGE),
            "cameras": 1,
            "twin_click_bell": twin,
            "libero_spatial_task0": libero,
            "twin_over_libero_rendered_step": twin["rendered_steps_per_s"] / libero["rendered_steps_per_s"],
            "twin_over_libero_vector2": twin["vector2_rendered_steps_per_s"] / libero["vector2_rendered_steps_per_s"],
            "expert": expert_figures(),
        },
    )


if __name__ == "__main__":
    main()
