"""GRPO end to end: distributed learner equivalence, a Ray run on the twin, kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pushcut.policy import checkpoint
from pushcut.training.config import CurriculumConfig, RolloutConfig, TrainConfig, WandbConfig

from .conftest import MICRO_ENV, MICRO_POLICY


def _train_cfg(ckpt, **kw) -> TrainConfig:
    base = {"env": MICRO_ENV, "policy": MICRO_POLICY, "init_checkpoint": str(ckpt), "n_samples": 4,
            "groups_per_iter": 2, "max_draw_rounds": 2, "lr": 1e-4, "iterations": 2, "eval_every": 0,
            "mini_batches": 2, "rollout": RolloutConfig(backend="local", num_workers=1, envs_per_worker=4),
            "wandb": WandbConfig(mode="disabled")}
    base.update(kw)
    return TrainConfig(**base)


def _batch(ckpt, successes=(True, False, True, False), temperature=1.6):
    """A real rollout batch from the SFT policy (local worker) at ``temperature``: two groups of two,
    with the given outcomes (by default both groups mixed, so every advantage is non-zero), and its
    advantages."""
    from pushcut.training import grpo
    from pushcut.training.rollout import Job, RolloutWorker

    model, stats, tok, _, _ = checkpoint.load(ckpt)
    w = RolloutWorker(MICRO_ENV, MICRO_POLICY, stats, tok.to_json(), n_envs=2)
    w.set_weights(model.state_dict())
    trajs = w.rollout([Job(0, 5, s, 100 + s) for s in range(2)] + [Job(1, 6, s, 200 + s) for s in range(2)],
                      temperature)
    for t, ok in zip(trajs, successes, strict=True):
        t.success = ok
    adv = {(g, k): float(a)
           for g, r in grpo.group_rewards(trajs).items() for k, a in enumerate(grpo.grpo_advantages(r))}
    return trajs, grpo.flatten(trajs, adv)


def test_rollout_horizon_ends_episodes_after_the_chunk_that_reaches_it(sft_checkpoint):
    from pushcut.training.rollout import Job, RolloutWorker

    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    w = RolloutWorker(MICRO_ENV, MICRO_POLICY, stats, tok.to_json(), n_envs=2)
    w.set_weights(model.state_dict())
    jobs = [Job(0, seed, 0, 300 + seed) for seed in range(4)]
    full, cut = w.rollout(jobs, 1.6), w.rollout(jobs, 1.6, max_steps=25)  # 10-step chunks, 60-step episodes
    assert any(not t.success and t.steps == MICRO_ENV.max_steps for t in full)  # failures run to the limit
    for f, c in zip(full, cut, strict=True):
        # the same episode up to the horizon: the third chunk (steps 20-30) is the last one
        assert len(c.bins) == min(len(f.bins), 3) and c.steps == min(f.steps, 30)
        assert c.success == (f.success and f.steps <= 30)
        for a, b in zip(f.bins, c.bins):
            np.testing.assert_array_equal(a, b)


def _ddp_worker(rank, world, ckpt, port, out, fsdp=False):
    import torch.distributed as dist

    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo, learner

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    trajs, batch = _batch(ckpt)
    model, stats, tok, _, _ = checkpoint.load(ckpt)
    cfg = _train_cfg(ckpt)
    if fsdp:
        learner.shard(model, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    metrics = grpo.update(model, None, opt, TorchPolicy(model, stats, tok), batch, len(trajs), cfg,
                          torch.Generator().manual_seed(0))
    weights = learner.full_weights(model)
    if rank == 0:  # Adam's first step hardly depends on the gradients' scale; their norm does
        torch.save({"grad_norm": torch.tensor(metrics["grad_norm"]), **{k: v.clone() for k, v in weights.items()}}, out)
    dist.destroy_process_group()


def test_two_process_gloo_learner_matches_one_process(sft_checkpoint, tmp_path):
    """Replicated (gradients summed) and FSDP-sharded learners on 2 ranks give 1 process's update."""
    import torch.multiprocessing as mp

    outs = {}
    for name, world, port, fsdp in (("one", 1, 29611, False), ("two", 2, 29612, False), ("fsdp", 2, 29613, True)):
        out = tmp_path / f"{name}.pt"
        mp.spawn(_ddp_worker, args=(world, str(sft_checkpoint), port, str(out), fsdp), nprocs=world, join=True)
        outs[name] = torch.load(out)
    norms = {name: float(out.pop("grad_norm")) for name, out in outs.items()}
    assert norms["two"] == pytest.approx(norms["one"], rel=1e-5)
    assert norms["fsdp"] == pytest.approx(norms["one"], rel=1e-5)
    before = checkpoint.load(sft_checkpoint)[0].state_dict()
    changed = 0
    for k, v in outs["one"].items():
        torch.testing.assert_close(outs["two"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(outs["fsdp"][k], v, rtol=1e-5, atol=1e-6, msg=f"fsdp {k}")
        changed += int(not torch.equal(v, before[k]))
    assert changed > 10  # the update did move the weights


def test_ppo_epochs_repeat_the_pass_against_the_rollout_log_probs(sft_checkpoint):
    """ppo_epochs=3 takes 3 x mini_batches optimiser steps; later passes see ratios away from 1."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint)
    results = {}
    for epochs in (1, 3):
        model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        steps = []
        opt.register_step_post_hook(lambda *_, steps=steps: steps.append(1))
        cfg = _train_cfg(sft_checkpoint, ppo_epochs=epochs, mini_batches=2)
        metrics = grpo.update(model, None, opt, TorchPolicy(model, stats, tok), batch, len(trajs), cfg,
                              torch.Generator().manual_seed(0))
        results[epochs] = (len(steps), metrics)
    assert results[1][0] == 2 and results[3][0] == 6
    # one pass starts from the rollout policy (ratio ~1); repeated passes have moved away from it
    assert abs(results[1][1]["approx_kl"]) < abs(results[3][1]["approx_kl"])
    assert results[3][1]["clipfrac"] >= results[1][1]["clipfrac"]


def test_step_normalisation_makes_each_step_mini_batches_times_larger(sft_checkpoint):
    """loss_normalization=step (the reference) divides each step by its share of the trajectories:
    the same steps' gradients, mini_batches times larger before the clip."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint)
    norms = {}
    for how in ("batch", "step"):
        model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay: the same steps in both
        cfg = _train_cfg(sft_checkpoint, mini_batches=2, loss_normalization=how)
        norms[how] = grpo.update(model, None, opt, TorchPolicy(model, stats, tok), batch, len(trajs), cfg,
                                 torch.Generator().manual_seed(0))["grad_norm"]
    assert norms["step"] == pytest.approx(2 * norms["batch"], rel=1e-5)


def test_reference_steps_each_take_the_mean_over_their_own_whole_trajectories(sft_checkpoint):
    """minibatch_split=trajectories with loss_normalization=step (the reference's): four trajectories
    in four steps, each step the token-mean PPO loss of one whole trajectory; its gradient norm is
    that of the loss computed by hand on that trajectory's chunks alone."""
    from pushcut.policy import sampling
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint)
    cfg = _train_cfg(sft_checkpoint, mini_batches=4, loss_normalization="step", minibatch_split="trajectories",
                     grad_clip=1e9)
    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    policy = TorchPolicy(model, stats, tok)
    got = grpo.update(model, None, torch.optim.SGD(model.parameters(), lr=0.0), policy, batch, len(trajs), cfg,
                      torch.Generator().manual_seed(0))
    norms = []
    traj = np.asarray(batch["traj"])
    for t in range(len(trajs)):
        rows = np.flatnonzero(traj == t)
        model.zero_grad()
        model.train()
        logp = sampling.token_log_probs(model(**policy.inputs([batch["obs"][i] for i in rows])),
                                        torch.from_numpy(np.stack([batch["bins"][i] for i in rows])), cfg.temperature)
        loss, _ = grpo.ppo_clip_loss(logp, torch.from_numpy(np.stack([batch["logp"][i] for i in rows])),
                                     torch.tensor([batch["adv"][i] for i in rows]),
                                     torch.from_numpy(np.stack([batch["mask"][i] for i in rows])),
                                     torch.tensor([float(batch["traj_tokens"][i]) for i in rows]), 1,
                                     cfg.clip_ratio_low, cfg.clip_ratio_high)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)))
    assert got["opt_steps"] == 4 and got["grad_norm"] == pytest.approx(np.mean(norms), rel=1e-4)


def test_update_takes_log_probs_at_the_temperature_the_batch_was_rolled_out_at(sft_checkpoint):
    """A batch rolled out at a late temperature of 0.8: in one mini-batch, before any step, the
    learner's log-probs at 0.8 are the rollout's (ratio 1, nothing clipped); at the recipe's 1.6
    they are not (the mean ratio stays near 1, an importance-sampling identity, but the tokens'
    ratios spread: KL and clipping show it)."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint, temperature=0.8)
    cfg = _train_cfg(sft_checkpoint, mini_batches=1)
    stats = {}
    for name, temperature in (("late", 0.8), ("recipe", None)):
        model, norm, tok, _, _ = checkpoint.load(sft_checkpoint)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        stats[name] = grpo.update(model, None, opt, TorchPolicy(model, norm, tok), batch, len(trajs), cfg,
                                  torch.Generator().manual_seed(0), temperature=temperature)
    assert stats["late"]["ratio"] == pytest.approx(1.0, abs=1e-5) and stats["late"]["approx_kl"] < 1e-8
    assert stats["late"]["clipfrac"] == 0.0
    assert stats["recipe"]["approx_kl"] > 0.01 and stats["recipe"]["clipfrac"] > 0.05


@pytest.mark.parametrize("successes", [(True, False, False, False), (False, False, False, False)],
                         ids=["one-uniform-group", "all-uniform"])
def test_zero_advantage_chunks_skip_the_pass_and_leave_the_update_unchanged(sft_checkpoint, successes):
    """A uniform group (dynamic sampling off) has zero advantage: leaving its chunks out of the
    forward pass gives the weights that computing them gives, and a batch with nothing to learn
    still takes AdamW's steps (moments, weight decay) as the full computation does."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint, successes)
    carrying = sum(a != 0 for a in batch["adv"])
    before = checkpoint.load(sft_checkpoint)[0].state_dict()
    results = {}
    for skip in (True, False):
        model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
        rows = []
        model.register_forward_hook(  # the update asks for the features too: (logits, features)
            lambda _m, _args, out, rows=rows: rows.append((out[0] if isinstance(out, tuple) else out).shape[0]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        cfg = _train_cfg(sft_checkpoint, mini_batches=2)
        grpo.update(model, None, opt, TorchPolicy(model, stats, tok), batch, len(trajs), cfg,
                    torch.Generator().manual_seed(0), skip_zero_advantage=skip)
        results[skip] = (sum(rows), model.state_dict())
    assert results[False][0] == len(batch["bins"])
    assert results[True][0] == carrying < len(batch["bins"])
    changed = 0
    for k, v in results[False][1].items():
        torch.testing.assert_close(results[True][1][k], v, rtol=1e-5, atol=1e-6, msg=k)
        changed += int(not torch.equal(results[True][1][k], before[k]))
    assert changed > 10  # the skipping update did step the weights


def _fsdp_train_worker(rank, world, ckpt, port, run, iterations):
    import torch.distributed as dist

    from pushcut.training import grpo
    from pushcut.training.config import LearnerConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    # every group kept and an entropy bonus: a gradient whatever the micro policy's successes, and
    # no weight decay, so weights move only if the sharded learner computes and applies gradients
    cfg = _train_cfg(ckpt, iterations=iterations, learner=LearnerConfig(fsdp=True, threads=1),
                     dynamic_sampling=False, entropy_coef=0.01, weight_decay=0.0)
    grpo.train(cfg, run, progress=False)
    dist.destroy_process_group()


def _budget_spent_worker(rank, world, ckpt, port, run):
    import torch.distributed as dist

    from pushcut.training import grpo
    from pushcut.training.config import LearnerConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    cfg = _train_cfg(ckpt, learner=LearnerConfig(fsdp=True, threads=1), eval_every=1, eval_episodes=1,
                     time_budget_s=1e-6)
    grpo.train(cfg, run, progress=False)
    dist.destroy_process_group()


def test_every_rank_stops_when_the_first_evaluation_spends_the_budget(sft_checkpoint, tmp_path):
    """Only rank 0 evaluates (disaggregated): the ranks that do not must still see its clock and stop
    with it, not wait in an iteration rank 0 never starts."""
    import torch.multiprocessing as mp

    ctx = mp.spawn(_budget_spent_worker, args=(2, str(sft_checkpoint), 29623, str(tmp_path / "run")), nprocs=2,
                   join=False)
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish: one is waiting for a collective the other never joins")
    assert checkpoint.read_meta(tmp_path / "run" / "checkpoint")["trainer"]["iteration"] == 0


def test_fsdp_learner_trains_and_resumes_under_two_ranks(sft_checkpoint, tmp_path):
    """pushcut-train with learner.fsdp=true on 2 gloo ranks: gathers, checkpoints, resumes."""
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    mp.spawn(_fsdp_train_worker, args=(2, str(sft_checkpoint), 29621, str(run), 1), nprocs=2, join=True)
    assert checkpoint.read_meta(run / "checkpoint")["trainer"]["iteration"] == 1
    extra = checkpoint.load_extra(run / "checkpoint")
    model, *_ = checkpoint.load(run / "checkpoint")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k[len("opt."):].rsplit(".", 1)[0] for k in extra if k.startswith("opt.")} == trained
    before = checkpoint.load(sft_checkpoint)[0].state_dict()
    assert any(not torch.equal(p, before[n]) for n, p in model.state_dict().items())
    # a second launch finds the checkpoint, loads the weights and the optimizer state, and goes on
    mp.spawn(_fsdp_train_worker, args=(2, str(sft_checkpoint), 29622, str(run), 2), nprocs=2, join=True)
    assert checkpoint.read_meta(run / "checkpoint")["trainer"]["iteration"] == 2


def test_two_iterations_through_ray_on_the_twin(sft_checkpoint, tmp_path, capfd):
    from pushcut.training import grpo
    from pushcut.training.run_log import read_metrics

    cfg = _train_cfg(sft_checkpoint, eval_every=2, eval_episodes=2, lr_warmup_iters=2, late_temperature=1.0,
                     late_fraction=0.5, rollout_max_steps=20,
                     rollout=RolloutConfig(backend="ray", num_workers=2, envs_per_worker=2))
    out = grpo.train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    # an iteration that kept no mixed group says so (on stderr), one that kept some does not
    warned = capfd.readouterr().err.count("so no advantage is non-zero")
    assert warned == sum(r["kept_groups"] == 0 for r in rows[1:])
    for key in ("reward", "kept_groups", "env_steps_per_s", "sim_s", "inference_s", "update_s"):
        assert key in rows[1], key
    for r in rows[1:]:  # every click_bell layout needs one arm: the sides split the groups
        sides = [s for s in ("left", "right") if f"reward_{s}" in r]
        assert sides and sum(r[f"kept_groups_{s}"] for s in sides) == r["kept_groups"]
        assert min(r[f"reward_{s}"] for s in sides) <= r["reward"] <= max(r[f"reward_{s}"] for s in sides)
    assert [rows[1]["lr"], rows[2]["lr"]] == pytest.approx([cfg.lr / 2, cfg.lr])  # what AdamW stepped with
    assert [rows[1]["temperature"], rows[2]["temperature"]] == [1.6, 1.0]  # the second half at the late one
    assert max(rows[1]["episode_steps"], rows[2]["episode_steps"]) <= 20  # training's horizon, not the env's 60
    assert 0.0 <= rows[2]["eval_success"] <= 1.0
    # evaluated before the first iteration and after every eval_every-th, each timed
    assert ["eval_success" in r for r in rows] == [True, False, True]
    assert rows[0]["eval_s"] > 0 and rows[2]["eval_s"] > 0
    assert checkpoint.read_meta(out)["trainer"]["iteration"] == 2
    assert (tmp_path / "run" / "learning_curve.png").exists()
    # <run>/best: the policy of the first evaluation that no later one beat
    evals = [(r["eval_success"], r["step"]) for r in rows if "eval_success" in r]
    best_success = max(s for s, _ in evals)
    best_step = next(step for s, step in evals if s == best_success)
    meta = checkpoint.read_meta(tmp_path / "run" / "best")
    assert (meta["job"], meta["iteration"], meta["eval_success"]) == ("grpo-best", best_step, best_success)
    assert checkpoint.read_meta(out)["trainer"]["best_eval"] == best_success
    same = checkpoint.load(out if best_step == 2 else sft_checkpoint)[0].state_dict()
    for k, v in checkpoint.load(tmp_path / "run" / "best")[0].state_dict().items():
        torch.testing.assert_close(v, same[k], rtol=0, atol=0, msg=k)


def test_a_budget_spent_by_the_first_evaluation_says_so_and_runs_no_iteration(sft_checkpoint, tmp_path, capfd):
    from pushcut.training import grpo
    from pushcut.training.run_log import read_metrics

    cfg = _train_cfg(sft_checkpoint, eval_every=1, eval_episodes=1, time_budget_s=1e-6)
    out = grpo.train(cfg, tmp_path / "run", progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0]
    meta = checkpoint.read_meta(out)
    assert meta["trainer"]["iteration"] == 0 and meta["complete"]  # the budget is spent: the run is finished
    assert "the iteration-0 evaluation took" in capfd.readouterr().err


RUN_SCRIPT = """
import sys, torch
from pushcut.configs import to_dataclass
from pushcut.training.config import TrainConfig
from pushcut.training import grpo
import json
cfg = to_dataclass(TrainConfig, json.loads(open(sys.argv[1]).read()))
grpo.train(cfg, sys.argv[2], progress=False)
"""


def test_kill_and_resume_continues_from_the_checkpoint(sft_checkpoint, tmp_path):
    from pushcut.configs import to_dict

    # the resumed run must pick the warmup and the curriculum's histories up where they were
    cfg = _train_cfg(sft_checkpoint, iterations=4, dynamic_sampling=False, groups_per_iter=1, n_samples=2,
                     lr_warmup_iters=3, curriculum=CurriculumConfig(layouts=3, max_samples=4))
    (tmp_path / "cfg.json").write_text(json.dumps(to_dict(cfg)))
    (tmp_path / "run.py").write_text(RUN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "cfg.json")]
    # uninterrupted reference run
    subprocess.run(cmd + [str(tmp_path / "ref")], check=True, env=env, timeout=300)
    # a run killed with SIGKILL once iteration 2 is on disk, then started again
    meta = tmp_path / "run" / "checkpoint" / "meta.json"
    proc = subprocess.Popen(cmd + [str(tmp_path / "run")], env=env)
    deadline = time.time() + 240
    while time.time() < deadline:
        if meta.exists() and json.loads(meta.read_text())["trainer"]["iteration"] >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads(meta.read_text())
    killed_at = killed["trainer"]["iteration"]
    assert killed_at < 4 and not killed["complete"] and killed["progress"] == f"iteration {killed_at} of 4"
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "rew')  # a row torn by the kill: dropped with a message, not a JSON error
    out = subprocess.run(cmd + [str(tmp_path / "run")], check=True, env=env, timeout=300, capture_output=True,
                         text=True)
    assert f"grpo: resuming from iteration {killed_at}" in out.stdout
    assert "metrics.jsonl: dropping line" in out.stderr
    done = json.loads(meta.read_text())
    assert done["trainer"]["iteration"] == 4 and done["complete"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # optimiser, RNG and counters were restored: the resumed run ends where the uninterrupted one did
    ref = json.loads((tmp_path / "ref" / "checkpoint" / "meta.json").read_text())["trainer"]
    assert done["trainer"]["layouts"] == ref["layouts"] and sum(map(len, ref["layouts"].values())) >= 8
    a, *_ = checkpoint.load(tmp_path / "ref" / "checkpoint")
    b, *_ = checkpoint.load(tmp_path / "run" / "checkpoint")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)


def test_mirror_images_join_the_batch_with_the_same_advantage(sft_checkpoint):
    """``mirror_augment``: each chunk's mirror image (head image flipped, proprio and bins mirrored:
    arms swapped, yaw and roll joints negated, so their bins flip exactly) joins the batch with the
    chunk's advantage as a new trajectory, its executed tokens masked to the arm that mirrors the
    acting one; its old log-probs are the policy's own at the rollout temperature, so the learner's
    first ratio on it is 1. A uniform group's chunks, which the update skips, get none."""
    from pushcut import spec
    from pushcut.policy.action_tokenizer import encode_chunks
    from pushcut.policy.inference import TorchPolicy
    from pushcut.sim.twin.mirror import mirror_dual_arm
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint, successes=(True, False, False, False))
    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    policy = TorchPolicy(model, stats, tok)
    cfg = _train_cfg(sft_checkpoint, mini_batches=1, mirror_augment=True)
    carries = grpo.carries_gradient(batch["adv"], cfg)
    aug = grpo.add_mirror_images(batch, policy, 1.6, carries)
    n = len(batch["bins"])
    assert len(aug["bins"]) == len(aug["obs"]) == len(aug["logp"]) == 2 * n
    assert aug["adv"][n:] == batch["adv"]
    assert aug["traj"][n:] == [t + len(trajs) for t in batch["traj"]]
    acting = grpo.acting_arm_dims(policy.decode(np.stack(batch["bins"])), np.asarray(batch["traj"]))
    for i in range(n):
        mask = batch["mask"][i].reshape(-1, 14)
        mirrored_mask = aug["mask"][n + i].reshape(-1, 14)
        arm = 7 if acting[i, 0] else 0  # the left arm acted: its mirror is the right (dims 7-13)
        np.testing.assert_array_equal(mirrored_mask[:, arm : arm + 7], mask[:, 7 - arm : 14 - arm])
        assert not mirrored_mask[:, 7 - arm : 14 - arm].any()
        assert aug["traj_tokens"][n + i] == sum(aug["mask"][n + j].sum() for j in range(n)
                                                if batch["traj"][j] == batch["traj"][i])
    for o, m in zip(batch["obs"], aug["obs"][n:]):
        np.testing.assert_array_equal(m[spec.IMAGES]["head"], o[spec.IMAGES]["head"][:, ::-1])
        np.testing.assert_array_equal(m[spec.PROPRIO], mirror_dual_arm(o[spec.PROPRIO]))
    bins = np.stack(batch["bins"]).reshape(n, MICRO_POLICY.chunk_len, 14)
    mirrored = np.stack(aug["bins"][n:]).reshape(n, MICRO_POLICY.chunk_len, 14)
    last = MICRO_POLICY.n_bins - 1
    np.testing.assert_array_equal(mirrored[..., 0], last - bins[..., 7])  # left j1 <- right j1, negated
    np.testing.assert_array_equal(mirrored[..., 8], bins[..., 1])  # right j2 <- left j2, kept
    np.testing.assert_array_equal(mirrored[..., 13], bins[..., 6])  # grippers swap
    twice = encode_chunks(mirror_dual_arm(policy.decode(np.stack(aug["bins"][n:]))), policy.action_tokenizer,
                          policy.action_norm)
    np.testing.assert_array_equal(twice, np.stack(batch["bins"]))
    logp = np.stack(aug["logp"][n:])
    assert np.isnan(logp[~carries]).all() and np.isfinite(logp[carries]).all() and carries.any() and not carries.all()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    mirrored_only = {k: v[n:] for k, v in aug.items()}
    metrics = grpo.update(model, None, opt, policy, mirrored_only, len(trajs), cfg, torch.Generator().manual_seed(0))
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-5) and metrics["approx_kl"] < 1e-8
    assert np.isfinite(metrics["pg_loss"]) and metrics["grad_norm"] > 0


def test_acting_arm_is_the_one_that_moved_more_over_the_trajectory():
    from pushcut.training import grpo

    chunks = np.zeros((3, 4, 14))
    chunks[0, :, 8] = np.linspace(0, 0.5, 4)  # trajectory 0: the right arm's j2 moves in its first chunk
    chunks[1, :, 1] = 0.1  # ... and the left arm holds a shifted pose in its second: a span of 0.1 < 0.5
    chunks[2, :, 3] = np.linspace(0, -0.3, 4)  # trajectory 1: the left arm's j4 moves
    dims = grpo.acting_arm_dims(chunks, np.array([0, 0, 1]))
    right, left = np.arange(14) >= 7, np.arange(14) < 7
    np.testing.assert_array_equal(dims, np.stack([right, right, left]))


def test_mirror_augment_needs_the_symmetric_twin():
    from pushcut.configs import ConfigError, compose, from_hydra

    with pytest.raises(ConfigError, match="mirror_augment"):
        from_hydra(TrainConfig, compose("train", ["init_checkpoint=x", "mirror_augment=true", "env=libero_object",
                                                  "policy=tiny_libero"]))
    with pytest.raises(ConfigError, match="mirror_augment"):
        from_hydra(TrainConfig, compose("train", ["init_checkpoint=x", "mirror_augment=true",
                                                  "env.cameras=[head,left_wrist]", "policy.cameras=[head,left_wrist]"]))


def test_k1_reward_penalty_is_zero_at_the_reference_and_grows_as_the_policy_leaves_it(sft_checkpoint, tmp_path):
    """kl_penalty=reward_k1: the first iteration rolls out with the reference's own weights, so each
    trajectory's k1 estimate is 0 (up to float); after an update it is not, and it is logged."""
    from pushcut.training import grpo
    from pushcut.training.run_log import read_metrics

    cfg = _train_cfg(sft_checkpoint, kl_coef=0.05, kl_penalty="reward_k1", dynamic_sampling=False, lr=1e-3)
    grpo.train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert abs(rows[0]["kl_reward"]) < 1e-6
    assert abs(rows[1]["kl_reward"]) > 1e-5
    assert "kl_ref" not in rows[1]  # no k3 term in the loss beside it


def test_target_kl_ends_the_update_before_the_first_step_past_it(sft_checkpoint):
    """The first mini-batch is on-policy (approx_kl ~0) and is stepped; a large step then puts the
    next one past a small target_kl, and the update ends there. Without target_kl every step runs."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint)
    taken = {}
    for target in (None, 1e-4):
        model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        steps = []
        opt.register_step_post_hook(lambda *_, steps=steps: steps.append(1))
        cfg = _train_cfg(sft_checkpoint, mini_batches=4, target_kl=target)
        metrics = grpo.update(model, None, opt, TorchPolicy(model, stats, tok), batch, len(trajs), cfg,
                              torch.Generator().manual_seed(0))
        taken[target] = (len(steps), metrics)
    assert taken[None][0] == 4 and taken[None][1]["opt_steps"] == 4
    assert taken[1e-4][0] == 1 and taken[1e-4][1]["opt_steps"] == 1
    assert taken[1e-4][1]["approx_kl"] > 1e-4 / 2  # the mini-batch that stopped it is logged: mean of ~0 and > 1e-4


def test_policy_gradient_is_the_first_steps_gradient(sft_checkpoint):
    """``policy_gradient`` is what ``update``'s one full-batch step follows: plain SGD at lr 1 moves
    the weights by exactly minus it; negated advantages negate it."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo

    trajs, batch = _batch(sft_checkpoint)
    cfg = _train_cfg(sft_checkpoint, mini_batches=1, grad_clip=1e9)
    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    policy = TorchPolicy(model, stats, tok)
    g = grpo.policy_gradient(model, policy, batch, len(trajs), cfg, cfg.temperature, chunk_rows=3)
    flipped = grpo.policy_gradient(model, policy, {**batch, "adv": [-a for a in batch["adv"]]}, len(trajs), cfg,
                                   cfg.temperature)
    trained = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().double().flatten() for p in trained])
    grpo.update(model, None, torch.optim.SGD(trained, lr=1.0), policy, batch, len(trajs), cfg,
                torch.Generator().manual_seed(0))
    moved = torch.cat([p.detach().double().flatten() for p in trained]) - before
    assert g.norm() > 0
    torch.testing.assert_close(moved, -g, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(flipped, -g, rtol=1e-5, atol=1e-9)


def test_gradient_noise_compares_independent_batches_from_the_start(sft_checkpoint, tmp_path):
    """Three batches drawn from the start with no update between them (the micro start never
    succeeds, so PPO's critic gives the advantages); GRPO's groups, all failures, give no gradient
    to measure, and it says so."""
    from pushcut.training import grpo

    cfg = _train_cfg(sft_checkpoint, algorithm="ppo", dynamic_sampling=False, bc_coef=0.2, bc_batch=8)
    out = grpo.gradient_noise(cfg, tmp_path / "noise", batches=3)
    assert out["batches"] == 3 and len(out["cosines"]) == 3 and len(out["per_batch"]) == 3
    assert all(r["trajectories"] == 8 and r["grad_norm"] > 0 for r in out["per_batch"])
    assert len({r["grad_norm"] for r in out["per_batch"]}) == 3  # new initial states and samples every batch
    assert out["mean_sq"] > out["signal_sq"] and out["noise_trace"] > 0
    assert out["bc"]["grad_norm"] > 0 and -1 <= out["bc"]["cosine_with_policy_gradient"] <= 1
    with pytest.raises(RuntimeError, match="kept no group with both successes and failures"):
        grpo.gradient_noise(_train_cfg(sft_checkpoint), tmp_path / "grpo", batches=2)


def test_bc_term_learns_the_starts_demos_when_rl_has_no_signal(sft_checkpoint):
    """Uniform groups (advantage 0): without bc_coef the weights stay put; with it every step lowers
    the cross-entropy of the start's own SFT demos (read from the checkpoint's run config)."""
    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import grpo
    from pushcut.training.sft import start_demos

    trajs, batch = _batch(sft_checkpoint, successes=(True, True, False, False))
    _, stats, _, _, run_config = checkpoint.load(sft_checkpoint)
    demos = start_demos(run_config, MICRO_POLICY, stats)
    assert len(demos["bins"]) > 0
    ce = {}
    for coef in (0.0, 1.0):
        model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ce_before = float(grpo.demo_loss(model, TorchPolicy(model, stats, tok), demos, 10_000, torch.Generator()))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        cfg = _train_cfg(sft_checkpoint, mini_batches=2, bc_coef=coef, bc_batch=8, weight_decay=0.0)
        metrics = grpo.update(model, None, opt, TorchPolicy(model, stats, tok), batch, len(trajs), cfg,
                              torch.Generator().manual_seed(0), demos=demos)
        moved = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        ce_after = float(grpo.demo_loss(model, TorchPolicy(model, stats, tok), demos, 10_000, torch.Generator()))
        ce[coef] = (moved, ce_before, ce_after, metrics)
    assert not ce[0.0][0] and "bc_loss" not in ce[0.0][3]
    assert ce[1.0][0] and ce[1.0][2] < ce[1.0][1] and ce[1.0][3]["bc_loss"] > 0
    with pytest.raises(ValueError, match="bc_coef needs a start written by pushcut-sft"):
        start_demos({"env": {}, "lr": 1.0, "not_an_sft_field": 1}, MICRO_POLICY, stats)


def test_a_run_takes_the_bc_term_and_the_target_kl(sft_checkpoint, tmp_path):
    from pushcut.training import grpo
    from pushcut.training.run_log import read_metrics

    cfg = _train_cfg(sft_checkpoint, bc_coef=0.2, bc_batch=8, target_kl=1e-3, dynamic_sampling=False, lr=1e-2,
                     iterations=1, mini_batches=4)
    grpo.train(cfg, tmp_path / "run", progress=False)
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert row["bc_loss"] > 0 and 1 <= row["opt_steps"] <= 4  # the demos are learned whatever the rollouts gave


def test_ppo_advantages_come_from_the_critic_and_carry_signal_where_a_group_has_none(sft_checkpoint):
    """algorithm=ppo: each chunk's advantage is GAE from the value head on the policy's features,
    normalised over the batch; a group whose rollouts all failed, which GRPO leaves at 0, gets
    advantages from the critic's own expectations."""
    from types import SimpleNamespace

    from pushcut.policy.inference import TorchPolicy
    from pushcut.training import critic as critic_mod
    from pushcut.training import grpo

    trajs, _ = _batch(sft_checkpoint, successes=(False, False, False, False))
    model, stats, tok, _, _ = checkpoint.load(sft_checkpoint)
    policy = TorchPolicy(model, stats, tok)
    head = critic_mod.ValueHead(MICRO_POLICY.llm.hidden_size)
    torch.nn.init.normal_(head.net[-1].weight, std=1.0)  # a critic with opinions
    run = SimpleNamespace(cfg=_train_cfg(sft_checkpoint, algorithm="ppo", dynamic_sampling=False), ref_policy=None,
                          policy=policy, model=model, critic=head, is_main=True, state={"iteration": 0})
    batch, n_traj = grpo.advantages(run, trajs, {}, 1.6)
    values = critic_mod.chunk_values(head, model, policy, batch["obs"])
    want, returns, _ = critic_mod.chunk_advantages(np.asarray(batch["traj"]), dict.fromkeys(range(4), 0.0), values,
                                                   0.99, 0.95)
    np.testing.assert_allclose(batch["adv"], want, rtol=1e-6)
    np.testing.assert_allclose(batch["returns"], returns, rtol=1e-6)
    assert n_traj == 4 and np.abs(batch["adv"]).max() > 0.1
    run.cfg = _train_cfg(sft_checkpoint, dynamic_sampling=False)  # grpo: an all-failure group has no signal
    assert not any(grpo.advantages(run, trajs, {"reward": 0.0, "drawn_groups": 2}, 1.6)[0]["adv"])


def test_a_ppo_run_trains_its_critic_and_resumes_it(sft_checkpoint, tmp_path):
    """Two PPO iterations in one run equal one, a restart, and another: the critic's weights and
    AdamW state come back from the checkpoint with the policy's."""
    from pushcut.training import grpo
    from pushcut.training.critic import ValueHead, load_critic
    from pushcut.training.run_log import read_metrics

    def cfg(iterations):
        return _train_cfg(sft_checkpoint, algorithm="ppo", dynamic_sampling=False, iterations=iterations, lr=1e-3,
                          critic_lr=1e-2)

    grpo.train(cfg(2), tmp_path / "whole", progress=False)
    grpo.train(cfg(1), tmp_path / "split", progress=False)
    grpo.train(cfg(2), tmp_path / "split", progress=False)
    rows = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert all(r["value_loss"] > 0 and "explained_variance" in r for r in rows)
    heads = []
    for name in ("whole", "split"):
        extra = checkpoint.load_extra(tmp_path / name / "checkpoint")
        head = ValueHead(MICRO_POLICY.llm.hidden_size)
        load_critic(head, torch.optim.AdamW(head.parameters()), extra)
        heads.append(head.state_dict())
    fresh = ValueHead(MICRO_POLICY.llm.hidden_size).state_dict()
    for k, v in heads[0].items():
        torch.testing.assert_close(v, heads[1][k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(heads[0][k], fresh[k]) for k in fresh)  # it learned
    a, *_ = checkpoint.load(tmp_path / "whole" / "checkpoint")
    b, *_ = checkpoint.load(tmp_path / "split" / "checkpoint")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-6, msg=k)
