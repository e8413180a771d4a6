"""VectorEnv: N persistent worker processes, each holding one env, stepped in lock-step.

Follows gymnasium's AsyncVectorEnv pattern (pipes to long-lived ``spawn`` workers, so MuJoCo's
GL contexts are never forked): workers are started once and reused for every episode. A
worker's exception is re-raised in the caller with the worker's traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Sequence
from typing import Self

import numpy as np

from pushcut.sim.config import EnvConfig
from pushcut.sim.core import Obs, Step


def _worker(conn, cfg: EnvConfig) -> None:
    from pushcut.sim.registry import make_env

    env = None
    try:
        env = make_env(cfg)
        conn.send(("ok", (env.action_dim, env.proprio_dim, env.max_steps)))
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                break
            try:
                result = env.reset(arg) if cmd == "reset" else env.step(arg)
                conn.send(("ok", result))
            except Exception:  # noqa: BLE001 - report, keep serving
                conn.send(("error", traceback.format_exc()))
    except Exception:  # noqa: BLE001 - the parent raises it
        conn.send(("error", traceback.format_exc()))
    finally:
        if env is not None:
            env.close()
        conn.close()


class VectorEnv:
    def __init__(self, cfg: EnvConfig, num_envs: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        ctx = mp.get_context("spawn")
        self.num_envs = num_envs
        self._conns, self._procs = [], []
        for _ in range(num_envs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, cfg), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self.action_dim, self.proprio_dim, self.max_steps = self._gather(range(num_envs))[0]

    def _gather(self, indices) -> list:
        out = []
        for i in indices:
            status, payload = self._conns[i].recv()
            if status != "ok":
                raise RuntimeError(f"env worker {i} failed:\n{payload}")
            out.append(payload)
        return out

    def reset(self, seeds: Sequence[int | None]) -> list[Obs | None]:
        """Reset every env whose seed is not None (the others are left as they are)."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        chosen = [i for i, s in enumerate(seeds) if s is not None]
        for i in chosen:
            self._conns[i].send(("reset", int(seeds[i])))
        results: list[Obs | None] = [None] * self.num_envs
        for i, r in zip(chosen, self._gather(chosen)):
            results[i] = r
        return results

    def step(self, actions: Sequence[np.ndarray | None]) -> list[Step | None]:
        """Step every env whose entry is not None (finished envs are skipped)."""
        return self.step_wait(self.step_async(actions))

    def step_async(self, actions: Sequence[np.ndarray | None]) -> list[int]:
        """Start stepping every env whose entry is not None; returns their indices for ``step_wait``."""
        active = [i for i, a in enumerate(actions) if a is not None]
        for i in active:
            self._conns[i].send(("step", np.asarray(actions[i])))
        return active

    def step_wait(self, indices: Sequence[int]) -> list[Step | None]:
        """The results of the envs ``indices`` started by ``step_async`` (None elsewhere)."""
        results: list[Step | None] = [None] * self.num_envs
        for i, r in zip(indices, self._gather(indices)):
            results[i] = r
        return results

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
