"""SFT killed and rerun resumes bit-identically; torn metrics, interrupted and failed saves."""

import errno
import shutil
from dataclasses import replace

import pytest
import torch

from pushcut.policy import checkpoint
from pushcut.training import sft
from pushcut.training.config import SFTConfig, WandbConfig
from pushcut.training.run_log import read_metrics
from tests.training.conftest import MICRO_ENV, MICRO_POLICY


def _cfg(tmp_path, **kw):
    return SFTConfig(env=MICRO_ENV, policy=MICRO_POLICY, demos_dir=str(tmp_path / "demos"), demos_per_task=2,
                     steps=12, batch_size=8, lr=1e-3, warmup_steps=3, log_every=1, save_every=4,
                     wandb=WandbConfig(mode="offline"), **kw)


class Killed(Exception):
    pass


def _weights(ckpt):
    return checkpoint.load(ckpt)[0].state_dict()


def test_sft_killed_and_rerun_resumes_bit_identically(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path)
    straight = sft.train(cfg, tmp_path / "straight", progress=False)
    real_lr = sft.lr_at

    def dies_at_step_10(step, c):  # after the checkpoint of step 8, mid-way to the next one
        if step == 10:
            raise Killed
        return real_lr(step, c)

    monkeypatch.setattr(sft, "lr_at", dies_at_step_10)
    with pytest.raises(Killed):
        sft.train(cfg, tmp_path / "run", progress=False)
    monkeypatch.undo()
    run = tmp_path / "run"
    run_id = (run / "wandb_id.txt").read_text()
    assert checkpoint.read_meta(run / "checkpoint")["step"] == 8
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(10))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "loss": 1.')  # a row torn by the kill
    capsys.readouterr()
    resumed = sft.train(cfg, run, progress=False)
    assert "sft: resuming from step 8" in capsys.readouterr().out
    for (k, a), b in zip(_weights(straight).items(), _weights(resumed).values()):
        assert torch.equal(a, b), k
    rows, ref = read_metrics(run / "metrics.jsonl"), read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(12))  # no step missing, none twice
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    assert (run / "wandb_id.txt").read_text() == run_id  # the same wandb run, continued
    runs = list((run / "wandb").glob("offline-run-*"))
    assert runs and all(run_id in d.name for d in runs), [d.name for d in runs]  # one wandb run, continued
    assert not checkpoint.load_extra(resumed)  # the final checkpoint keeps the weights only
    capsys.readouterr()
    sft.train(cfg, run, progress=False)  # a finished run: nothing more to train
    assert "resuming from step 12" in capsys.readouterr().out
    for (k, a), b in zip(_weights(straight).items(), _weights(resumed).values()):
        assert torch.equal(a, b), k


def test_sft_recovers_an_interrupted_save_and_keeps_the_previous_checkpoint_when_a_save_fails(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    run = tmp_path / "run"
    real_lr = sft.lr_at
    monkeypatch.setattr(sft, "lr_at", lambda step, c: (_ for _ in ()).throw(Killed) if step == 6 else real_lr(step, c))
    with pytest.raises(Killed):
        sft.train(cfg, run, progress=False)
    monkeypatch.undo()
    # killed between the save's two renames: the good copy sits at checkpoint.old; a torn .tmp beside it
    shutil.move(run / "checkpoint", run / "checkpoint.old")
    (run / "checkpoint.tmp").mkdir()
    (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(checkpoint.CheckpointError, match=r"no meta.json\); a previous checkpoint sits at .*\.old"):
        checkpoint.load(run / "checkpoint")  # a reader (eval) says where the good copy is
    # the disk fills up at the next save: the previous checkpoint stays, no half-written copy is left
    real_save_file = checkpoint.save_file

    def disk_full(state, path):
        if path.parent.name == "checkpoint.tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_file(state, path)

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device.*previous checkpoint is kept"):
        sft.train(replace(cfg, steps=12), run, progress=False)
    monkeypatch.undo()
    assert checkpoint.read_meta(run / "checkpoint")["step"] == 4 and not (run / "checkpoint.tmp").exists()
    assert not (run / "checkpoint.old").exists()
    straight = sft.train(cfg, tmp_path / "straight", progress=False)
    resumed = sft.train(cfg, run, progress=False)
    for (k, a), b in zip(_weights(straight).items(), _weights(resumed).values()):
        assert torch.equal(a, b), k


def test_sft_reports_success_sampled_at_the_rollout_temperature_beside_greedy(tmp_path, capsys):
    """What GRPO's groups will see is the start sampled at its rollout temperature, which can be far
    from its greedy success: SFT measures both on the same held-out seeds."""
    demos = str(tmp_path / "demos")
    base = {"env": MICRO_ENV, "policy": MICRO_POLICY, "demos_dir": demos, "demos_per_task": 2, "steps": 5,
            "batch_size": 4, "eval_episodes": 2, "num_envs": 1, "wandb": WandbConfig(mode="disabled")}
    sft.train(SFTConfig(**base, eval_temperature=1.6), tmp_path / "a", progress=False)
    row = read_metrics(tmp_path / "a" / "metrics.jsonl")[-1]
    assert {"eval_success", "eval_success_sampled"} <= set(row)
    out = capsys.readouterr().out
    assert "success on 2 held-out seeds: greedy" in out and ", sampled at T 1.6 " in out
    sft.train(SFTConfig(**base, eval_temperature=None), tmp_path / "b", progress=False)
    row = read_metrics(tmp_path / "b" / "metrics.jsonl")[-1]
    assert "eval_success" in row and "eval_success_sampled" not in row


def test_demos_recorded_on_another_env_are_refused_not_reused(tmp_path):
    """A demos_dir holds one folder per task: an SFT asking for the randomised twin (or another image
    size) must not silently train on demos recorded on the nominal one."""
    from dataclasses import replace as dc_replace

    from pushcut.sim.config import RandomizationConfig

    base = SFTConfig(env=MICRO_ENV, policy=MICRO_POLICY, demos_dir=str(tmp_path / "demos"), demos_per_task=1,
                     steps=1, batch_size=2, wandb=WandbConfig(mode="disabled"))
    folder = sft.ensure_demos(base, MICRO_ENV)
    assert sft.ensure_demos(base, dc_replace(MICRO_ENV, max_steps=30)) == folder  # the step limit does not count
    # nor the randomisation's ranges while it is off on both sides
    ranges_only = RandomizationConfig(light=0.9, distractors=2)
    assert sft.ensure_demos(base, dc_replace(MICRO_ENV, randomization=ranges_only)) == folder
    with pytest.raises(ValueError, match=r"grasp_force_limit: None there, 5.0 here"):
        sft.ensure_demos(base, dc_replace(MICRO_ENV, grasp_force_limit=5.0))
    randomised = dc_replace(MICRO_ENV, randomization=RandomizationConfig(enabled=True))
    with pytest.raises(ValueError, match=r"holds demos recorded on another env \(randomization: .*'enabled': False"):
        sft.ensure_demos(base, randomised)
    with pytest.raises(ValueError, match=r"image_size: \[32, 32\] there, \[48, 48\] here"):
        sft.ensure_demos(base, dc_replace(MICRO_ENV, image_size=(48, 48)))
    fresh = dc_replace(base, demos_dir=str(tmp_path / "randomised"))
    assert sft.ensure_demos(fresh, randomised).parent == tmp_path / "randomised"
