"""GRPO pieces against hand computations."""

import numpy as np
import pytest
import torch

from pushcut.training import grpo, grpo_run
from pushcut.training.config import CurriculumConfig
from pushcut.training.rollout import Trajectory, executed_token_mask


def test_advantages_on_hand_made_groups():
    adv = grpo.grpo_advantages([1, 0, 0, 0])
    std = np.std([1, 0, 0, 0], ddof=1)  # unbiased: 0.5
    np.testing.assert_allclose(adv, (np.array([1, 0, 0, 0]) - 0.25) / (std + 1e-6))
    assert adv[0] == pytest.approx(1.5, rel=1e-5) and adv[1] == pytest.approx(-0.5, rel=1e-5)
    np.testing.assert_allclose(grpo.grpo_advantages([1, 1, 1, 1]), 0.0)  # uniform groups carry nothing
    np.testing.assert_allclose(grpo.grpo_advantages([0, 1]),
                               [-1 / (np.sqrt(0.5) + 1e-6) * 0.5] + [0.5 / (np.sqrt(0.5) + 1e-6)])


def test_clipped_loss_against_hand_computation():
    # two trajectories: traj 0 has 1 chunk (2 executed tokens of 3), traj 1 has 1 chunk (3 tokens)
    old = torch.zeros(2, 3)
    ratio = torch.tensor([[1.5, 0.5, 2.0], [0.7, 1.1, 1.3]])
    logp = torch.log(ratio)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    traj_tokens = torch.tensor([2.0, 3.0])
    loss, stats = grpo.ppo_clip_loss(logp, old, adv, mask, traj_tokens, n_traj=2, clip_low=0.2, clip_high=0.28)
    # positive advantage: ratio clipped above at 1.28 -> -min(1.5, 1.28) = -1.28; 0.5 -> -0.5
    traj0 = (-1.28 + -0.5) / 2
    # negative advantage (-2): max(-A r, -A clip(r)) = max(2r, 2clip(r)); 0.7 -> max(1.4, 1.6) = 1.6;
    # 1.1 -> 2.2; 1.3 -> max(2.6, 2.56) = 2.6
    traj1 = (1.6 + 2.2 + 2.6) / 3
    assert loss.item() == pytest.approx((traj0 + traj1) / 2, rel=1e-6)
    # clipped tokens: 1.5 (>1.28), 0.5 (<0.8), 0.7 (<0.8), 1.3 (>1.28); masked 2.0 is excluded
    assert stats["clipfrac"].item() == pytest.approx(4 / 5)
    # the reference's count: only where the clipped term is the one taken (1.5 at A > 0, 0.7 at A < 0)
    assert stats["clipfrac_active"].item() == pytest.approx(2 / 5)
    np.testing.assert_allclose(stats["ratio"].item(), (1.5 + 0.5 + 0.7 + 1.1 + 1.3) / 5, rtol=1e-6)


def test_loss_shards_add_up():
    torch.manual_seed(0)
    logp, old = torch.randn(6, 4), torch.randn(6, 4)
    adv, mask = torch.randn(6), torch.rand(6, 4) > 0.3
    tt = torch.tensor([5.0, 5.0, 7.0, 7.0, 3.0, 3.0])
    full, _ = grpo.ppo_clip_loss(logp, old, adv, mask, tt, 3, 0.2, 0.28)
    parts = sum(grpo.ppo_clip_loss(logp[s], old[s], adv[s], mask[s], tt[s], 3, 0.2, 0.28)[0]
                for s in (slice(0, 2), slice(2, 5), slice(5, 6)))
    assert full.item() == pytest.approx(parts.item(), rel=1e-6)


def test_executed_token_mask():
    m = executed_token_mask(2, chunk_len=3, action_dim=2)
    assert m.tolist() == [True, True, True, True, False, False]


class ScriptedPool:
    """A stand-in for the rollout pool that returns preset outcomes: tests the refill logic only."""

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)  # one list of successes per drawn group, in draw order
        self.calls = []
        self.temperatures = []
        self.max_steps = []

    def rollout(self, jobs, temperature, max_steps=None):
        self.calls.append(len(jobs))
        self.temperatures.append(temperature)
        self.max_steps.append(max_steps)
        out = []
        for g in sorted({j.group for j in jobs}):
            res = self.outcomes.pop(0)
            out += [Trajectory(group=g, seed=g, success=bool(r), steps=10) for r in res]
        return out


def _cfg(**kw):
    from pushcut.training.config import TrainConfig
    from tests.training.conftest import MICRO_ENV, MICRO_POLICY

    return TrainConfig(**{"env": MICRO_ENV, "policy": MICRO_POLICY, "n_samples": 2, "groups_per_iter": 2, **kw})


def test_dynamic_sampling_drops_uniform_groups_and_refills():
    pool = ScriptedPool([[1, 1], [0, 1], [0, 0], [1, 0]])
    state = {"next_group": 0}
    kept, info = grpo.collect(pool, _cfg(), state)
    assert {t.group for t in kept} == {1, 3}  # all-1 group 0 and all-0 group 2 dropped
    # 2 groups x 2 samples; one kept -> refill one group (all-0, dropped) -> refill one more
    assert pool.calls == [4, 2, 2]
    assert info["kept_groups"] == 2 and info["drawn_groups"] == 4 and info["draw_rounds"] == 3
    assert state["next_group"] == 4
    assert pool.temperatures == [1.6] * 3  # the recipe's rollout temperature, unless told another
    assert pool.max_steps == [None] * 3  # the task's own step limit, unless told another
    pool = ScriptedPool([[0, 1], [1, 0]])
    grpo.collect(pool, _cfg(rollout_max_steps=100), {"next_group": 0}, temperature=0.7)
    assert pool.temperatures == [0.7] and pool.max_steps == [100]


def _groups(successes_per_group):
    return [Trajectory(group=g, seed=g, success=bool(ok), steps=1)
            for g, outcomes in enumerate(successes_per_group) for ok in outcomes]


def test_rollout_success_and_kept_groups_by_side():
    trajs = [Trajectory(group=g, seed=g, success=ok, steps=1, side=side)
             for g, side, outcomes in [(0, "left", [1, 0]), (1, "left", [0, 0]), (2, "right", [1, 1]),
                                       (3, "right", [1, 0])] for ok in map(bool, outcomes)]
    kept = [t for t in trajs if t.group in grpo.mixed_groups(trajs)]
    assert grpo.by_side(trajs, kept) == {"reward_left": 0.25, "kept_groups_left": 1,
                                         "reward_right": 0.75, "kept_groups_right": 1}
    assert grpo.by_side(_groups([[1, 0]]), []) == {}  # an env without sides (LIBERO) logs none


def test_the_references_group_bounds_drop_one_in_more_than_ten():
    trajs = _groups([[1] + [0] * 7, [1] + [0] * 15, [0] * 15 + [1], [1] * 8 + [0] * 8, [0] * 8, [1, 0]])
    assert grpo.mixed_groups(trajs) == {0, 1, 2, 3, 5}
    # [0.1, 0.9]: 1/8 = 0.125 stays, 1/16 and 15/16 go, uniform groups stay out
    assert grpo.mixed_groups(trajs, (0.1, 0.9)) == {0, 3, 5}
    assert grpo.mixed_groups(trajs, (0.5, 0.5)) == {3, 5}
    with pytest.raises(ValueError, match="group_success_bounds"):
        _cfg(group_success_bounds=(0.9, 0.1))


def test_dynamic_sampling_gives_up_after_max_rounds_and_off_keeps_all():
    pool = ScriptedPool([[0, 0]] * 4)
    kept, info = grpo.collect(pool, _cfg(max_draw_rounds=2), {"next_group": 0})
    assert kept == [] and info["draw_rounds"] == 2
    pool = ScriptedPool([[0, 0], [1, 1]])
    kept, info = grpo.collect(pool, _cfg(dynamic_sampling=False), {"next_group": 0})
    assert len(kept) == 4 and info["draw_rounds"] == 1
    # neither batch has a mixed group: the trainer then says which way the groups went
    assert "every group was all successes or all failures in 2 groups" in grpo.no_signal_message(info, 7)
    assert grpo.no_signal_message({"reward": 0.0, "drawn_groups": 4}, 7).startswith(
        "grpo iteration 7: every rollout failed in 4 groups")


def test_best_evaluation_is_the_first_that_no_later_one_beats():
    state = {}
    flags = [grpo_run.is_new_best(_cfg(), state, s) for s in (0.1, 0.3, 0.3, 0.2, 0.5, 0.0)]
    assert flags == [True, True, False, False, True, False] and state["best_eval"] == 0.5
    resumed = {"best_eval": 0.5}  # a resumed run compares with the best its checkpoint carries
    assert not grpo_run.is_new_best(_cfg(), resumed, 0.4) and grpo_run.is_new_best(_cfg(), resumed, 0.6)
    assert not grpo_run.is_new_best(_cfg(keep_best=False), {}, 1.0)


def test_lr_warms_up_linearly_then_holds():
    assert [grpo.lr_at(_cfg(lr=1e-3, lr_warmup_iters=4), it) for it in (1, 2, 4, 5, 100)] == pytest.approx(
        [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert grpo.lr_at(_cfg(lr=1e-3), 1) == 1e-3  # the recipe: constant


def test_late_temperature_takes_over_for_the_last_fraction_of_the_run():
    # by iterations: the last 30% of 10 updates (8, 9, 10) roll out at the late temperature
    cfg = _cfg(iterations=10, late_temperature=0.8, late_fraction=0.3)
    assert [grpo.rollout_temperature(cfg, it, 0.0) for it in range(1, 11)] == [1.6] * 7 + [0.8] * 3
    # by time: with a budget, the wall time already used decides as soon as it is further along
    cfg = _cfg(iterations=100_000, time_budget_s=100.0, late_temperature=0.8, late_fraction=0.4)
    assert [grpo.rollout_temperature(cfg, 5, w) for w in (0.0, 59.9, 60.0, 99.0)] == [1.6, 1.6, 0.8, 0.8]
    assert grpo.rollout_temperature(_cfg(iterations=10), 10, 1e9) == 1.6  # the recipe: constant
    for bad, match in (({"late_temperature": 0.0}, r"late_temperature: 0.0 is out of range: must be > 0"),
                       ({"late_fraction": 0.0}, r"late_fraction: 0.0 is out of range: must be in \(0, 1\]"),
                       ({"late_fraction": 1.5}, r"late_fraction: 1.5 is out of range: must be in \(0, 1\]"),
                       ({"rollout_max_steps": 0}, "rollout_max_steps: 0 is out of range: must be >= 1")):
        with pytest.raises(ValueError, match=match):
            _cfg(**bad)


def test_k1_kl_penalty_comes_off_each_trajectorys_reward_before_the_group_normalisation():
    """kl_penalty=reward_k1 (the reference's KL in the reward): a trajectory's k1 estimate is the sum
    over its executed tokens of log pi_old - log ref; kl_coef times it comes off its reward, and the
    group's advantages are those of the penalised rewards."""
    logp = [np.array([-1.0, -2.0, -0.5], dtype=np.float32), np.array([-1.5, -1.0, -3.0], dtype=np.float32)]
    ref = [np.array([-1.5, -1.0, -0.5], dtype=np.float32), np.array([-1.0, -2.0, -1.0], dtype=np.float32)]
    mask = [np.array([True, True, False]), np.array([True, False, False])]
    # executed: (-1 + 1.5) + (-2 + 1) in the first chunk, (-1.5 + 1) in the second: 0.5 - 1 - 0.5
    assert grpo.k1_penalties(logp, ref, mask) == pytest.approx(-1.0)
    trajs = _groups([[1, 0, 0]])
    penalties = [0.2, 0.1, -0.3]  # kl_coef x each trajectory's k1
    rewards = grpo.group_rewards(trajs, penalties)[0]
    np.testing.assert_allclose(rewards, [0.8, -0.1, 0.3])
    r = np.array([0.8, -0.1, 0.3])
    np.testing.assert_allclose(grpo.grpo_advantages(rewards), (r - r.mean()) / (r.std(ddof=1) + 1e-6))
    np.testing.assert_array_equal(grpo.group_rewards(trajs)[0], [1.0, 0.0, 0.0])  # without: the binary reward
    assert grpo.mixed_groups(trajs) == {0}  # dynamic sampling still looks at successes alone
    # the reference's scale: a success is worth 5, so the same kl_coef weighs the KL 5x less against it
    r5 = grpo.group_rewards(trajs, penalties, success_reward=5.0)[0]
    np.testing.assert_allclose(r5, [4.8, -0.1, 0.3])
    np.testing.assert_allclose(grpo.grpo_advantages(r5), (r5 - r5.mean()) / (r5.std(ddof=1) + 1e-6))
    assert not np.allclose(grpo.grpo_advantages(r5), grpo.grpo_advantages(rewards))
    # without the penalty the scale cancels in the group normalisation (up to the 1e-6)
    np.testing.assert_allclose(grpo.grpo_advantages(grpo.group_rewards(trajs, None, 5.0)[0]),
                               grpo.grpo_advantages(grpo.group_rewards(trajs)[0]), atol=1e-5)
    # logged: per trajectory summed over its tokens (what comes off the reward) and, as the reference
    # logs it, per executed token of the batch
    two = [Trajectory(group=0, seed=0, success=True, steps=1, token_mask=[mask[0], mask[1]]),
           Trajectory(group=0, seed=0, success=False, steps=1, token_mask=[mask[1]])]
    assert grpo.k1_token_mean([-1.0, 0.5], two) == pytest.approx(-0.5 / 4)  # 3 + 1 executed tokens


def test_reference_mini_batches_hold_whole_trajectories():
    """minibatch_split=trajectories (the reference's): every chunk in exactly one mini-batch, each
    trajectory's chunks all in one, and loss_normalization=step divides a step by the trajectories it
    holds; chunks (ours) cuts the shuffled chunks evenly."""
    traj = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    parts = grpo.mini_batch_rows(traj, 2, "trajectories", torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert all(len(np.unique(traj[p])) == 2 for p in parts)
    for t in range(4):
        assert sum(t in traj[p] for p in parts) == 1  # whole
    cfg = _cfg(loss_normalization="step", minibatch_split="trajectories", mini_batches=2)
    assert [grpo.step_divisor(traj[p], 4, cfg) for p in parts] == [2, 2]
    three = grpo.mini_batch_rows(traj, 3, "trajectories", torch.Generator().manual_seed(0))
    assert sorted(grpo.step_divisor(traj[p], 4, _cfg(loss_normalization="step", minibatch_split="trajectories",
                                                     mini_batches=3)) for p in three) == [1, 1, 2]
    chunks = grpo.mini_batch_rows(traj, 2, "chunks", torch.Generator().manual_seed(0))
    assert [len(p) for p in chunks] == [5, 5]
    assert grpo.step_divisor(traj[chunks[0]], 4, _cfg(loss_normalization="step", mini_batches=2)) == 2.0
    assert grpo.step_divisor(traj[chunks[0]], 4, _cfg(mini_batches=2)) == 4  # batch: the whole batch's


# --- the curriculum over initial states -----------------------------------------------------------
class LayoutPool:
    """A stand-in for the rollout pool whose success depends on the initial state: layout seed ->
    success probability, each rollout's outcome drawn from its job's own seed."""

    def __init__(self, p_success):
        self.p = p_success
        self.jobs = []

    def rollout(self, jobs, temperature, max_steps=None):
        self.jobs += jobs
        return [Trajectory(group=j.group, seed=j.seed, steps=1,
                           success=bool(np.random.default_rng(j.rng_seed).random() < self.p[j.seed])) for j in jobs]


def test_curriculum_weights_and_group_sizes_on_hand_made_histories():
    from pushcut.training import curriculum

    assert curriculum.success_estimate([]) == 0.5 and curriculum.success_estimate([0] * 8) == 0.1
    w = curriculum.draw_weights({"0": [1, 0] * 4, "1": [0] * 8, "2": [1] * 8}, 4)  # layout 3 never tried
    assert np.allclose(w, np.array([0.25, 0.09, 0.09, 0.25]) / 0.68)
    # the rarer outcome turns up with probability 1/2: ceil(log 0.5 / log 0.9) = 7 -> n_samples 8;
    # at p = 0.03, 23 -> the cap
    assert curriculum.group_size(0.1, 8, 16) == 8 and curriculum.group_size(0.03, 8, 16) == 16
    assert curriculum.group_size(0.97, 8, 16) == 16 and curriculum.group_size(0.5, 8, 16) == 8
    assert curriculum.group_size(0.05, 8, 16) == 14
    hist = {"0": [1, 1]}
    curriculum.record(hist, {0: [0, 1, 0], 5: [0]}, window=4)
    assert hist == {"0": [1, 0, 1, 0], "5": [0]}


def test_curriculum_draws_the_layouts_where_the_policy_sometimes_succeeds():
    """Sixteen layouts: one where the policy succeeds half the time, one where it always does, the rest
    where it never does. Without the curriculum every group is a new state; with it, once the pool
    has been tried, the half-way layout gets the most groups and the hopeless ones grow to the cap."""
    p = {s: 0.0 for s in range(16)} | {3: 0.5, 5: 1.0}
    pool = LayoutPool(p)
    state = {"next_group": 0}
    cfg = _cfg(n_samples=4, groups_per_iter=2, max_draw_rounds=1,
               curriculum=CurriculumConfig(layouts=16, max_samples=12))
    for _ in range(80):
        grpo.collect(pool, cfg, state)
    late = pool.jobs[len(pool.jobs) // 2:]
    groups = {j.group: j.seed for j in late}
    share = {s: sum(g == s for g in groups.values()) / len(groups) for s in range(16)}
    assert set(groups.values()) <= set(range(16))  # the pool, apart from validation seeds
    assert share[3] > 2 * max(share[s] for s in range(16) if s != 3)
    sizes = {g: sum(j.group == g for j in late) for g in groups}
    assert max(sizes[g] for g, s in groups.items() if s == 0) == 12  # never succeeds: the cap
    assert min(sizes[g] for g, s in groups.items() if s == 3) == 4  # half the time: n_samples
    assert state["layouts"]["3"] and len(state["layouts"]["0"]) <= 32
    # the trainer state is JSON (saved with the checkpoint); a resumed draw is the uninterrupted one's
    import json

    resumed = json.loads(json.dumps(state))
    assert grpo.initial_states(cfg, resumed, 4) == grpo.initial_states(cfg, state, 4)
    plain = LayoutPool(p | {s: 0.0 for s in range(8, 200)})
    grpo.collect(plain, _cfg(n_samples=4, groups_per_iter=4, max_draw_rounds=1), {"next_group": 0})
    assert [j.seed for j in plain.jobs[::4]] == [0, 1, 2, 3]  # off: a new initial state per group


def test_curriculum_pool_stays_below_the_validation_seeds():
    with pytest.raises(ValueError, match="reach the validation seeds"):
        _cfg(curriculum=CurriculumConfig(layouts=200), train_seed_start=89_900)
    with pytest.raises(ValueError, match="max_samples 4 is below n_samples 8"):
        _cfg(n_samples=8, curriculum=CurriculumConfig(layouts=10, max_samples=4))


# --- PPO's critic over chunks ---------------------------------------------------------------------
def test_gae_over_chunks_against_hand_computation():
    from pushcut.training import critic

    values = np.array([0.2, 0.5, 0.4])
    adv, ret = critic.gae(np.array([0.0, 0.0, 1.0]), values, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.4  # the last chunk: its reward, nothing after it
    d1 = 0.0 + 0.9 * 0.4 - 0.5
    d0 = 0.0 + 0.9 * 0.5 - 0.2
    a2, a1 = d2, d1 + 0.72 * d2
    np.testing.assert_allclose(adv, [d0 + 0.72 * a1, a1, a2])
    np.testing.assert_allclose(ret, adv + values)
    # lambda 1, gamma 1: every chunk's return is the episode's reward
    _, ret = critic.gae(np.array([0.0, 0.0, 1.0]), values, 1.0, 1.0)
    np.testing.assert_allclose(ret, [1.0, 1.0, 1.0])
    # a batch of two trajectories (chunks in order within each): per-trajectory GAE, then normalised
    traj = np.array([0, 0, 0, 1, 1])
    v = np.array([0.2, 0.5, 0.4, 0.1, 0.3])
    a, r, explained = critic.chunk_advantages(traj, {0: 1.0, 1: 0.0}, v, 0.9, 0.8)
    raw = np.concatenate([critic.gae(np.array([0.0, 0.0, 1.0]), v[:3], 0.9, 0.8)[0],
                          critic.gae(np.array([0.0, 0.0]), v[3:], 0.9, 0.8)[0]])
    np.testing.assert_allclose(a, (raw - raw.mean()) / (raw.std() + 1e-8))
    assert abs(a.mean()) < 1e-9 and explained == pytest.approx(1 - np.var(r - v) / np.var(r))


def test_noise_scale_recovers_the_signal_and_the_batch_where_noise_equals_it():
    """Gradients drawn as G + noise/sqrt(B) with |G|^2 = 1 and tr(Sigma) = 100: the noise scale is
    100 samples, a batch of 50 carries twice as much noise as signal, and a pair's cosine is about
    1/3. Unresolved signal (pure noise) gives no scale instead of a negative one."""
    gen = torch.Generator().manual_seed(0)
    d, batch, trace = 20_000, 50, 100.0
    signal = torch.randn(d, generator=gen, dtype=torch.float64)
    signal /= signal.norm()
    grads = [signal + torch.randn(d, generator=gen, dtype=torch.float64) * (trace / d / batch) ** 0.5 for _ in range(6)]
    out = grpo.noise_scale(grads, batch)
    assert out["signal_sq"] == pytest.approx(1.0, abs=0.1)
    assert out["noise_trace"] == pytest.approx(trace, rel=0.05)
    assert out["noise_scale"] == pytest.approx(100.0, rel=0.15)
    assert out["signal_to_noise"] == pytest.approx(0.5, rel=0.15)
    assert len(out["cosines"]) == 15 and np.mean(out["cosines"]) == pytest.approx(1 / 3, abs=0.05)
    noise = [torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2)]
    pure = grpo.noise_scale([noise[0], -noise[0] + 1e-3 * noise[1]], batch)
    assert pure["signal_sq"] < 0 and pure["noise_scale"] is None
    with pytest.raises(ValueError, match="at least 2"):
        grpo.noise_scale(grads[:1], batch)
