"""Domain randomisation of the twin for sim-to-real (off unless ``randomization.enabled``), and
fixed perturbations (``perturbation``, the transfer suites' settings).

Per episode, from the episode's seed: light intensity, colours of the table and objects, camera
pose jitter, object mass and sliding friction, and an action latency of 0..``latency_steps``
control steps. A perturbation then shifts and tilts the cameras, scales the lights, shifts the
colours, adds pixel noise to every rendered image and delays the actions by a fixed amount. Every
changed model field is restored from its nominal copy first, so episodes do not drift.
"""

from __future__ import annotations

import mujoco
import numpy as np

from pushcut.sim.config import PerturbationConfig, RandomizationConfig


def _small_rotation(rng: np.random.Generator, std_rad: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis) + 1e-12
    angle = rng.normal() * std_rad
    return np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])


class Randomizer:
    def __init__(self, model: mujoco.MjModel, cfg: RandomizationConfig,
                 perturbation: PerturbationConfig | None = None):
        self.model, self.cfg = model, cfg
        self.perturbation = perturbation or PerturbationConfig()
        self._noise_rng: np.random.Generator | None = None
        self._nominal = {
            name: getattr(model, name).copy()
            for name in ("light_diffuse", "geom_rgba", "cam_pos", "cam_quat", "body_mass", "geom_friction")
        }
        arm_bodies = {i for i in range(model.nbody) if model.body(i).name.startswith(("left_", "right_"))}
        self._object_bodies = np.array(
            [i for i in range(1, model.nbody) if i not in arm_bodies and model.body_dofnum[i] > 0], dtype=int
        )
        self._colored_geoms = np.array(
            [g for g in range(model.ngeom) if model.geom_bodyid[g] not in arm_bodies], dtype=int
        )
        self._object_geoms = np.array(
            [g for g in range(model.ngeom) if model.geom_bodyid[g] in set(self._object_bodies.tolist())],
            dtype=int,
        )
        self._latency = 0
        self._history: np.ndarray | None = None

    def reset(self, rng: np.random.Generator, seed: int = 0) -> None:
        """Nominal model, then this episode's randomisation (from ``rng``, which the task's layout
        draws from next) and the perturbation (its pixel noise from ``seed``, apart from ``rng``, so
        a perturbed episode has the nominal one's layout)."""
        m, c = self.model, self.cfg
        for name, value in self._nominal.items():
            getattr(m, name)[:] = value
        self._history = None
        self._latency = 0
        if c.enabled:
            self._randomize(rng)
        self._perturb(seed)

    def _randomize(self, rng: np.random.Generator) -> None:
        m, c = self.model, self.cfg
        m.light_diffuse[:] *= 1 + rng.uniform(-c.light, c.light, size=(m.nlight, 1))
        rgb = m.geom_rgba[self._colored_geoms, :3]
        m.geom_rgba[self._colored_geoms, :3] = np.clip(rgb + rng.uniform(-c.color, c.color, rgb.shape), 0, 1)
        m.cam_pos[:] += rng.normal(scale=c.camera_pos, size=m.cam_pos.shape)
        for i in range(m.ncam):
            q = np.zeros(4)
            mujoco.mju_mulQuat(q, _small_rotation(rng, np.radians(c.camera_rot_deg)), m.cam_quat[i])
            m.cam_quat[i] = q
        if len(self._object_bodies):
            m.body_mass[self._object_bodies] *= 1 + rng.uniform(-c.mass, c.mass, len(self._object_bodies))
        if len(self._object_geoms):
            m.geom_friction[self._object_geoms, 0] *= 1 + rng.uniform(-c.friction, c.friction, len(self._object_geoms))
        self._latency = int(rng.integers(0, c.latency_steps + 1))

    def _perturb(self, seed: int) -> None:
        m, p = self.model, self.perturbation
        m.cam_pos[:] += np.asarray(p.camera_shift)
        if p.camera_tilt_deg:
            a = np.radians(p.camera_tilt_deg) / 2
            for i in range(m.ncam):
                q = np.zeros(4)
                mujoco.mju_mulQuat(q, m.cam_quat[i].copy(), np.array([np.cos(a), np.sin(a), 0.0, 0.0]))
                m.cam_quat[i] = q
        m.light_diffuse[:] *= p.light_scale
        rgb = m.geom_rgba[self._colored_geoms, :3]
        m.geom_rgba[self._colored_geoms, :3] = np.clip(rgb + p.color_shift, 0, 1)
        self._latency = max(self._latency, p.latency_steps)
        self._noise_rng = np.random.default_rng([seed, 0x1A6E]) if p.image_noise else None

    def image(self, img: np.ndarray) -> np.ndarray:
        """A rendered image with the perturbation's pixel noise (unchanged without)."""
        if self._noise_rng is None:
            return img
        noisy = img.astype(np.float32) + self._noise_rng.normal(0.0, self.perturbation.image_noise, img.shape)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

    def delay(self, chunk: np.ndarray) -> np.ndarray:
        """Shift the commanded actions by the episode's latency (repeating the last command)."""
        if self._latency == 0:
            return chunk
        if self._history is None:
            self._history = np.repeat(chunk[:1], self._latency, axis=0)
        stream = np.vstack([self._history, chunk])
        self._history = stream[-self._latency :]
        return stream[: len(chunk)]
