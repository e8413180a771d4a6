"""Domain randomisation of the twin for sim-to-real (off unless ``randomization.enabled``), and
fixed perturbations (``perturbation``, the transfer suites' settings).

Per episode, from the episode's seed: light intensity, colours of the table and objects, camera
pose and field of view, object mass and sliding friction, the joints' top speed, an action latency
of 0..``latency_steps`` control steps, the image pipeline (pixel noise, blur, a JPEG round trip) and
visual-only distractor objects on the table (placed after the layout, clear of the task's
objects, from a generator of their own so the layout stays the nominal one's). A perturbation then
shifts and tilts the cameras, scales the lights, tints the colours, adds pixel noise to every
rendered image and delays the actions by a fixed amount. Every changed model field is restored
from its nominal copy first, so episodes do not drift.
"""

from __future__ import annotations

import cv2
import mujoco
import numpy as np

from pushcut.sim.config import PerturbationConfig, RandomizationConfig

DISTRACTOR = "distractor_"  # body name prefix (pushcut.sim.twin.model.distractor_bodies)
TABLE_XY = (np.array([-0.45, -0.3]), np.array([0.45, 0.15]))  # where distractors may stand (x, y), m: in view
CLEARANCE = 0.1  # m between a distractor and a task object or another distractor
TINT = np.array([-1.0, 0.0, 1.0])  # a perturbation's colour shift: red down, blue up (white moves too)


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
        self._nominal = {
            name: getattr(model, name).copy()
            for name in ("light_diffuse", "geom_rgba", "mat_rgba", "cam_pos", "cam_quat", "cam_fovy", "cam_intrinsic",
                         "body_mass", "geom_friction", "body_pos", "geom_size", "geom_type")
        }
        arm_bodies = {i for i in range(model.nbody) if model.body(i).name.startswith(("left_", "right_"))}
        self._object_bodies = np.array(
            [i for i in range(1, model.nbody) if i not in arm_bodies and model.body_dofnum[i] > 0], dtype=int
        )
        scene = [g for g in range(model.ngeom) if model.geom_bodyid[g] not in arm_bodies  # distractors: own colours
                 and not model.body(model.geom_bodyid[g]).name.startswith(DISTRACTOR)]
        # a geom with a material (the textured table) is coloured by the material's rgba: a geom rgba
        # set away from MuJoCo's default would replace it (the texture then tinted by a grey ~0.5)
        self._colored_geoms = np.array([g for g in scene if model.geom_matid[g] < 0], dtype=int)
        self._colored_mats = np.unique([model.geom_matid[g] for g in scene
                                        if model.geom_matid[g] >= 0]).astype(int)
        self._object_geoms = np.array(
            [g for g in range(model.ngeom) if model.geom_bodyid[g] in set(self._object_bodies.tolist())],
            dtype=int,
        )
        self._distractors = np.array(
            [i for i in range(model.nbody) if model.body(i).name.startswith(DISTRACTOR)], dtype=int
        )
        self._history: np.ndarray | None = None
        self._image_rng: np.random.Generator | None = None
        self._seed = 0
        self._nothing_drawn()

    def _nothing_drawn(self) -> None:
        """An episode's draws before any: no latency, the full joint speed, a plain image."""
        self._latency = 0
        self.speed_scale = 1.0  # the episode's share of the env's joint top speed
        self._image = {"noise": 0.0, "blur": 0.0, "jpeg": 100}

    def reset(self, rng: np.random.Generator, seed: int = 0) -> None:
        """Nominal model, then this episode's randomisation (from ``rng``, which the task's layout
        draws from next) and the perturbation (its pixel noise from ``seed``, apart from ``rng``, so
        a perturbed episode has the nominal one's layout)."""
        m, c = self.model, self.cfg
        for name, value in self._nominal.items():
            getattr(m, name)[:] = value
        self._history = None
        self._nothing_drawn()
        self._seed = seed
        if c.enabled:
            self._randomize(rng)
        self._perturb(seed)
        noise = self._image["noise"] or self.perturbation.image_noise
        self._image_rng = np.random.default_rng([seed, 0x1A6E]) if noise else None

    def _randomize(self, rng: np.random.Generator) -> None:
        m, c = self.model, self.cfg
        m.light_diffuse[:] *= 1 + rng.uniform(-c.light, c.light, size=(m.nlight, 1))
        for field, rows in (("geom_rgba", self._colored_geoms), ("mat_rgba", self._colored_mats)):
            rgba = getattr(m, field)
            rgba[rows, :3] = np.clip(rgba[rows, :3] + rng.uniform(-c.color, c.color, (len(rows), 3)), 0, 1)
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
        fovy = np.clip(m.cam_fovy + rng.normal(scale=c.fov_deg, size=m.ncam), 5.0, 150.0)
        # a camera given by intrinsics (a calibration) draws with its focal lengths, not fovy
        m.cam_intrinsic[:, :2] *= (np.tan(np.radians(m.cam_fovy) / 2) / np.tan(np.radians(fovy) / 2))[:, None]
        m.cam_fovy[:] = fovy
        self.speed_scale = float(rng.uniform(1.0 - c.speed, 1.0))
        self._image = {"noise": float(rng.uniform(0, c.image_noise)), "blur": float(rng.uniform(0, c.blur)),
                       "jpeg": round(rng.uniform(c.jpeg_quality, 100))}

    def place_distractors(self, keep_clear: list[np.ndarray]) -> None:
        """Up to ``distractors`` of the model's distractor bodies onto the table, each at least
        ``CLEARANCE`` from the points ``keep_clear`` (x, y of the task's objects and the arm bases)
        and from each other; from a generator of the episode's seed, after the layout. They are
        static bodies: ``mj_forward`` places them."""
        if not (self.cfg.enabled and len(self._distractors)):
            return
        m, rng = self.model, np.random.default_rng([self._seed, 0xD157])
        taken = [np.asarray(p)[:2] for p in keep_clear]
        for body in self._distractors[: rng.integers(0, len(self._distractors) + 1)]:
            xy = rng.uniform(*TABLE_XY)
            if any(np.linalg.norm(xy - p) < CLEARANCE for p in taken):
                continue  # no room there: one distractor fewer
            taken.append(xy)
            geom = m.body_geomadr[body]
            half = rng.uniform(0.015, 0.04)
            if rng.random() < 0.5:
                m.geom_type[geom], height = mujoco.mjtGeom.mjGEOM_BOX, rng.uniform(0.01, 0.04)
                m.geom_size[geom] = (half, rng.uniform(0.6, 1.0) * half, height)
            else:
                m.geom_type[geom], height = mujoco.mjtGeom.mjGEOM_CYLINDER, rng.uniform(0.01, 0.04)
                m.geom_size[geom] = (half, height, 0.0)
            m.geom_rgba[geom, :3] = rng.uniform(0.1, 0.9, 3)
            m.body_pos[body] = (xy[0], xy[1], height)

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
        for rgba, rows in ((m.geom_rgba, self._colored_geoms), (m.mat_rgba, self._colored_mats)):
            rgba[rows, :3] = np.clip(rgba[rows, :3] + p.color_shift * TINT, 0, 1)
        self._latency = max(self._latency, p.latency_steps)

    def image(self, img: np.ndarray) -> np.ndarray:
        """A rendered image through the episode's image pipeline: blur, JPEG round trip, pixel
        noise (the randomised draw, or the perturbation's where it sets one); unchanged without."""
        im = self._image
        if im["blur"] > 0:
            img = cv2.GaussianBlur(img, (0, 0), im["blur"])
        if im["jpeg"] < 100:
            encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, im["jpeg"]])[1]
            img = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        if self._image_rng is None:
            return img
        std = self.perturbation.image_noise or im["noise"]
        noisy = img.astype(np.float32) + self._image_rng.normal(0.0, std, img.shape)
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
