"""The twin: every task resets and steps, seeds are reproducible, success checks go both ways."""

import dataclasses
import itertools

import mujoco
import numpy as np
import pytest

from pushcut import spec
from pushcut.sim.config import TWIN_TASKS, EnvConfig, RandomizationConfig
from pushcut.sim.registry import make_env
from pushcut.sim.tasks.click_bell import XY_TOL
from pushcut.sim.twin.env import TwinEnv, smooth_path
from pushcut.sim.twin.model import BELL_TOP_Z, BOWL_NEST_HEIGHT


@pytest.fixture(scope="module", params=TWIN_TASKS)
def env(request):
    e = make_env(EnvConfig(task=request.param, cameras=spec.TWIN_CAMERAS, image_size=(48, 64)))
    yield e
    e.close()


def test_reset_and_step_shapes(env):
    obs = env.reset(seed=3)
    assert set(obs.images) == set(spec.TWIN_CAMERAS)
    for img in obs.images.values():
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        assert img.std() > 1.0  # a real rendered picture, not a blank buffer
    assert obs.proprio.shape == (14,) and obs.proprio.dtype == np.float32
    assert obs.instruction
    chunk = np.tile(obs.proprio, (5, 1))
    step = env.step(chunk)
    assert step.steps == 5 and not step.done and step.reward == 0.0
    assert np.all(np.isfinite(step.obs.proprio))
    step = env.step(obs.proprio)  # one action is a chunk of one
    assert step.steps == 6


def test_same_seed_same_layout(env):
    a = env.reset(seed=11)
    layout_a = {k: np.copy(v) for k, v in env.layout.items()}
    env.reset(seed=12)
    b = env.reset(seed=11)
    for k, v in layout_a.items():
        np.testing.assert_array_equal(v, env.layout[k])
    np.testing.assert_array_equal(a.images["head"], b.images["head"])


def test_different_seeds_differ(env):
    env.reset(seed=1)
    first = {k: np.copy(v) for k, v in env.layout.items() if isinstance(v, np.ndarray)}
    env.reset(seed=2)
    assert any(not np.allclose(v, env.layout[k]) for k, v in first.items())


def test_bad_actions_are_rejected(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(14, np.nan))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(7))


def test_out_of_range_actions_are_clamped():
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(16, 16)))
    env.reset(seed=0)
    env.step(np.full((10, 14), 100.0))
    lo, hi = (np.array(v) for v in spec.dual_arm_limits())
    np.testing.assert_array_equal(env.target, hi)  # the command itself is clamped
    env.step(np.full((25, 14), -100.0))
    np.testing.assert_array_equal(env.target, lo)
    env.step(np.tile(lo, (25, 1)))  # settled: the joints sit within the limits
    q = env.proprio()
    assert np.all(q <= hi + 0.02) and np.all(q >= lo - 0.02)
    env.close()


def test_joints_move_no_faster_than_the_arm_can():
    """A chunk that asks joint 1 to be 1 rad away from the first control step on (25 rad/s) is
    executed at the SDK's top joint speed: it gets there, late."""
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(16, 16)))
    obs = env.reset(seed=0)
    far = obs.proprio.astype(np.float64)
    far[0] += 1.0
    q0 = env.proprio()[0]
    env.step(np.tile(far, (5, 1)))  # 0.2 s
    moved = env.proprio()[0] - q0
    assert 0.5 * spec.JOINT_MAX_SPEED * 0.2 < moved < spec.JOINT_MAX_SPEED * 0.2 + 0.02
    steps = int(np.ceil(1.0 / (spec.JOINT_MAX_SPEED / env.cfg.action_hz))) + 5
    env.step(np.tile(far, (steps, 1)))
    assert abs(env.proprio()[0] - far[0]) < 0.02
    env.close()


def test_smooth_path_passes_through_waypoints():
    start = np.zeros(2)
    wps = np.array([[1.0, 0.0], [2.0, 1.0], [2.0, 2.0]])
    path = smooth_path(start, wps, substeps=10)
    assert path.shape == (30, 2)
    np.testing.assert_allclose(path[9::10], wps)
    assert np.all(np.abs(np.diff(path[:, 0])) <= 0.2)  # no overshooting jumps


def _touch_bell(env: TwinEnv, offset_xy: float) -> bool:
    """Stage the bell task: put the tool at the bell top (+offset), gripper closed."""
    arm = env.layout["arm"]
    top = np.array([*env.layout["bell"], BELL_TOP_Z])
    mujoco.mj_forward(env.model, env.data)
    tcp = env.data.site(f"{arm}_tcp")
    # move the bell under the tool instead of the tool onto the bell: exact staging
    env.model.body_pos[env.task.bell][:2] += tcp.xpos[:2] - top[:2] + (offset_xy, 0.0)
    env.model.body_pos[env.task.bell][2] = tcp.xpos[2] - BELL_TOP_Z - 0.01
    mujoco.mj_forward(env.model, env.data)
    return env.task.success(env.data, {arm: 0.0, "left" if arm == "right" else "right": 1.0})


def test_click_bell_success_and_near_miss():
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(16, 16)))
    env.reset(seed=5)
    assert _touch_bell(env, 0.0)
    env.reset(seed=5)
    assert not _touch_bell(env, XY_TOL + 0.005)  # near miss in xy
    env.reset(seed=5)
    arm = env.layout["arm"]
    assert not env.task.success(env.data, {arm: 1.0, "left": 1.0, "right": 1.0})  # far and open
    env.close()


def _place_bowls(env: TwinEnv, positions):
    for adr, p in zip(env.task.qadr, positions):
        env.data.qpos[adr : adr + 3] = p
        env.data.qpos[adr + 3 : adr + 7] = (1, 0, 0, 0)
    mujoco.mj_forward(env.model, env.data)


@pytest.mark.parametrize("task,n", [("stack_bowls_two", 2), ("stack_bowls_three", 3)])
def test_stack_bowls_success_and_near_miss(task, n):
    env = TwinEnv(EnvConfig(task=task, image_size=(16, 16)))
    env.reset(seed=0)
    stacked = [(0.0, -0.1, i * BOWL_NEST_HEIGHT) for i in range(n)]
    _place_bowls(env, stacked)
    opened = {"left": 1.0, "right": 1.0}
    assert env.task.success(env.data, opened)
    assert not env.task.success(env.data, {"left": 0.0, "right": 1.0})  # a gripper still closed
    near = list(stacked)
    near[-1] = (0.045, -0.1, (n - 1) * BOWL_NEST_HEIGHT)  # off by 4.5 cm in x
    _place_bowls(env, near)
    assert not env.task.success(env.data, opened)
    high = list(stacked)
    high[-1] = (0.0, -0.1, (n - 1) * BOWL_NEST_HEIGHT + 0.025)  # resting 2.5 cm too high
    _place_bowls(env, high)
    assert not env.task.success(env.data, opened)
    env.close()


def test_bowls_nest_under_physics():
    """A bowl dropped over another settles nested: the stacking geometry is physical."""
    env = TwinEnv(EnvConfig(task="stack_bowls_two", image_size=(16, 16)))
    env.reset(seed=0)
    _place_bowls(env, [(0.0, -0.1, 0.0005), (0.01, -0.105, 0.04)])
    for _ in range(500):
        mujoco.mj_step(env.model, env.data)
    pos = env.task.bowl_positions(env.data)
    assert abs(pos[1, 2] - pos[0, 2] - BOWL_NEST_HEIGHT) < 0.01
    assert np.all(np.abs(pos[1, :2] - pos[0, :2]) < 0.01)  # the walls centre it
    env.close()


def test_randomization_changes_scene_and_restores():
    cfg = EnvConfig(task="click_bell", image_size=(32, 32),
                    randomization=RandomizationConfig(enabled=True, latency_steps=2))
    env = TwinEnv(cfg)
    plain = TwinEnv(EnvConfig(task="click_bell", image_size=(32, 32)))
    a, b = env.reset(seed=4), plain.reset(seed=4)
    assert not np.array_equal(a.images["head"], b.images["head"])
    # colours jitter around what is drawn: the textured table's material (white) within the range,
    # its geom rgba left at MuJoCo's default, which would otherwise replace the material's
    table = env.model.geom("table").id
    np.testing.assert_array_equal(env.model.geom_rgba[table], plain.model.geom_rgba[table])
    mat = env.model.mat_rgba[env.model.geom_matid[table], :3]
    assert not np.array_equal(mat, [1.0, 1.0, 1.0]) and (mat >= 1.0 - cfg.randomization.color).all()
    bright = [o.images["head"].mean() for o in (a, b)]
    assert abs(bright[0] - bright[1]) < 0.25 * bright[1]  # a jitter of the scene, not another scene
    assert env.randomizer._latency in (0, 1, 2)
    env2 = TwinEnv(cfg)
    c = env2.reset(seed=4)
    np.testing.assert_array_equal(a.images["head"], c.images["head"])  # seeded
    for e in (env, plain, env2):
        e.close()


_NO_RANGES = {"light": 0.0, "color": 0.0, "camera_pos": 0.0, "camera_rot_deg": 0.0, "fov_deg": 0.0, "mass": 0.0,
              "friction": 0.0, "latency_steps": 0, "speed": 0.0, "image_noise": 0.0, "blur": 0.0, "jpeg_quality": 100,
              "distractors": 0}


@pytest.mark.parametrize("field,value", [("fov_deg", 3.0), ("speed", 0.3), ("image_noise", 8.0), ("blur", 1.0),
                                         ("jpeg_quality", 30), ("distractors", 3)])
def test_each_randomization_field_changes_what_it_names_and_restores(field, value):
    """With every other range at zero, the field alone moves what it names (the cameras' field of
    view, the joints' top speed, the image pipeline, distractors on the table clear of the task's
    objects); the layout is the plain episode's; an episode of another seed and back gives the same
    model again (nothing accumulates)."""
    cfg = EnvConfig(task="stack_bowls_two", image_size=(32, 32),
                    randomization=RandomizationConfig(enabled=True, **_NO_RANGES))
    plain, env = TwinEnv(cfg), TwinEnv(dataclasses.replace(cfg, randomization=RandomizationConfig(
        enabled=True, **{**_NO_RANGES, field: value})))
    seeds = range(6)
    images = [(plain.reset(s).images["head"], env.reset(s).images["head"]) for s in seeds]
    np.testing.assert_array_equal(plain.data.qpos[: plain.model.nq], env.data.qpos[: env.model.nq])
    differs = [not np.array_equal(a, b) for a, b in images]
    assert any(differs) == (field != "speed")  # speed changes how the arm moves, not the picture
    fovy = env.model.cam_fovy.copy()
    assert np.array_equal(fovy, plain.model.cam_fovy) == (field != "fov_deg")
    assert (env._max_step[:6] < plain._max_step[:6]).all() == (field == "speed")
    if field == "speed":
        assert 0.7 <= env.randomizer.speed_scale < 1.0
    elif field == "distractors":
        bodies = env.randomizer._distractors
        assert len(bodies) == value and plain.randomizer._distractors.size == 0
        on_table = [b for b in bodies if env.data.xpos[b, 2] > 0]
        objects = [env.data.xpos[env.model.body(b).id, :2] for b in env.task.graspable]
        assert all(np.linalg.norm(env.data.xpos[b, :2] - o) >= 0.1 for b in on_table for o in objects)
        assert not any(env.model.geom_contype[env.model.body_geomadr[b]] for b in bodies)  # visual only
    env.reset(99)
    again = env.reset(seeds[-1]).images["head"]
    np.testing.assert_array_equal(env.model.cam_fovy, fovy)
    np.testing.assert_array_equal(again, images[-1][1])
    for e in (plain, env):
        e.close()


def test_grasp_slips_over_its_force_limit():
    """The expert's stacking grasps hold under the configured 15 N (they transmit at most ~12.5);
    under a 1 N limit the weld lets go again and again while the bowl is carried, and the bowl
    slides down in the hand (its highest point > 1 cm lower)."""
    from pushcut.sim.expert import run_expert

    top = {}
    for limit in (15.0, 1.0):
        env = TwinEnv(EnvConfig(task="stack_bowls_two", image_size=(16, 16), grasp_force_limit=limit))
        heights = []
        env.on_control_step = lambda env=env, h=heights: h.append(env.task.bowl_positions(env.data)[:, 2].max())
        ok = run_expert(env, 0, chunk_len=25)
        top[limit] = (ok, env.slips, max(heights))
        env.close()
    assert top[15.0][:2] == (True, 0)
    assert top[1.0][1] > 5 and top[1.0][2] < top[15.0][2] - 0.01


def test_stacking_phases_latch_in_order():
    """The expert's episode reaches grasped, lifted and placed before success; the phases reported
    after each chunk only grow; standing still reaches none; the layout names the moved bowl's side."""
    from pushcut.sim.expert import run_expert

    env = TwinEnv(EnvConfig(task="stack_bowls_two", image_size=(16, 16)))
    seen = []
    original = env.step

    def step(chunk):
        out = original(chunk)
        seen.append(out.info["phases"])
        return out

    env.step = step
    assert run_expert(env, 0, chunk_len=25)
    assert seen[-1] == ["grasped", "lifted", "placed"]
    assert all(set(a) <= set(b) for a, b in itertools.pairwise(seen))
    assert seen[0] == []  # the first chunk only reaches for the bowl
    assert env.layout["arm"] == ("left" if env.layout["bowls"][1][0] < 0 else "right")
    env.reset(0)
    out = original(np.tile(env.target, (25, 1)))
    assert out.info["phases"] == [] and out.info["arm"] == env.layout["arm"]
    env.close()
    bell = TwinEnv(EnvConfig(task="click_bell", image_size=(16, 16)))
    sides = set()
    for seed in range(6):
        bell.reset(seed)
        info = bell.step(np.tile(bell.target, (5, 1))).info
        assert "phases" not in info and info["arm"] == bell.layout["arm"]  # a task without phases reports none
        sides.add(info["arm"])
    assert sides == {"left", "right"}
    bell.close()


@pytest.mark.parametrize("field,value", [("camera_shift", (0.03, -0.01, 0.0)), ("camera_tilt_deg", 5.0),
                                         ("light_scale", 0.4), ("color_shift", 0.3), ("image_noise", 12.0),
                                         ("latency_steps", 3)])
def test_each_perturbation_changes_what_it_names_and_keeps_the_layout(field, value):
    """A transfer suite's setting: the field it names moves by exactly its value, nothing else in the
    model does, the episode's layout is the nominal one's (same seed, same objects), and a second
    reset starts from the nominal model again (nothing accumulates)."""
    from pushcut.sim.config import PerturbationConfig

    plain = TwinEnv(EnvConfig(task="click_bell", image_size=(32, 32)))
    env = TwinEnv(EnvConfig(task="click_bell", image_size=(32, 32), perturbation=PerturbationConfig(**{field: value})))
    a, b = plain.reset(seed=7), env.reset(seed=7)
    m0, m = plain.model, env.model
    fields = {"camera_shift": ["cam_pos"], "camera_tilt_deg": ["cam_quat"], "light_scale": ["light_diffuse"],
              "color_shift": ["geom_rgba", "mat_rgba"]}
    for name in ("cam_pos", "cam_quat", "light_diffuse", "geom_rgba", "mat_rgba"):
        same = np.array_equal(getattr(m0, name), getattr(m, name))
        assert same != (name in fields.get(field, [])), name
    if field == "color_shift":  # the textured table's material is tinted; its geom keeps the default rgba
        table = m.geom("table").id
        np.testing.assert_allclose(m.mat_rgba[m.geom_matid[table], :3], [1 - value, 1.0, 1.0])
        np.testing.assert_array_equal(m.geom_rgba[table], m0.geom_rgba[table])
    if field == "camera_shift":
        np.testing.assert_allclose(m.cam_pos - m0.cam_pos, np.broadcast_to(value, m.cam_pos.shape), atol=1e-12)
    if field == "light_scale":
        np.testing.assert_allclose(m.light_diffuse, m0.light_diffuse * value)
    if field == "camera_tilt_deg":  # the angle between nominal and tilted orientation
        dot = np.abs((m.cam_quat * m0.cam_quat).sum(axis=1))
        np.testing.assert_allclose(np.degrees(2 * np.arccos(np.clip(dot, -1, 1))), value, atol=1e-6)
    assert env.randomizer._latency == (value if field == "latency_steps" else 0)
    np.testing.assert_array_equal(plain.data.qpos, env.data.qpos)  # the same layout
    np.testing.assert_array_equal(a.proprio, b.proprio)
    assert np.array_equal(a.images["head"], b.images["head"]) == (field == "latency_steps")
    before = {n: getattr(m, n).copy() for n in ("cam_pos", "cam_quat", "light_diffuse", "geom_rgba", "mat_rgba")}
    env.reset(seed=8)
    for n, v in before.items():
        np.testing.assert_array_equal(getattr(m, n), v, err_msg=n)
    plain.close()
    env.close()


@pytest.mark.parametrize("task", ["click_bell", "stack_bowls_two"])
def test_eval_splits_success_by_the_side_each_seed_needs(task):
    """pushcut-eval's by_side: each seed's side is its layout's arm, from a reset alone, and the
    successes are counted on their own side."""
    from pushcut.training.eval import sides, summarize

    cfg = EnvConfig(task=task, image_size=(32, 32))
    seeds = list(range(100000, 100016))
    arms = sides(cfg, seeds)
    assert set(arms) == {"left", "right"}
    env = make_env(cfg)
    for k in (0, 7, 15):
        env.reset(seeds[k])
        assert env.layout["arm"] == arms[k]
    env.close()
    out = summarize([{"seed": s, "success": a == "left"} for s, a in zip(seeds, arms)], task, arms)
    assert out["success_rate"] == arms.count("left") / len(seeds)
    assert out["by_side"] == {"left": {"success_rate": 1.0, "episodes": arms.count("left")},
                              "right": {"success_rate": 0.0, "episodes": arms.count("right")}}
    assert "by_side" not in summarize(out["results"], task)
