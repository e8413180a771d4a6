"""A checkpoint says whether its run finished: bench caches resume an interrupted run instead of
passing it on, and eval and export name a checkpoint taken mid-run."""

import json

import pytest

import bench.common
from pushcut.policy import checkpoint
from pushcut.training import sft
from tests.training.test_sft_resume import Killed, _cfg


def _interrupted(tmp_path, monkeypatch, run, cfg):
    real_lr = sft.lr_at
    monkeypatch.setattr(sft, "lr_at", lambda step, c: (_ for _ in ()).throw(Killed) if step == 6 else real_lr(step, c))
    with pytest.raises(Killed):
        sft.train(cfg, run, progress=False)
    monkeypatch.undo()
    return run / "checkpoint"


def test_a_checkpoint_says_whether_its_run_finished(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    mid = _interrupted(tmp_path, monkeypatch, tmp_path / "run", cfg)
    meta = checkpoint.read_meta(mid)
    assert (meta["complete"], meta["progress"]) == (False, "step 4 of 12")
    assert checkpoint.unfinished(meta) == "taken mid-run (step 4 of 12)"
    done = checkpoint.read_meta(sft.train(cfg, tmp_path / "run", progress=False))
    assert (done["complete"], done["progress"]) == (True, "step 12 of 12")
    assert checkpoint.unfinished(done) is None
    # earlier versions: an SFT checkpoint's steps tell; anything else is unknown, and said to be
    assert checkpoint.completion({"version": 2, "step": 500, "steps": 1500}) == (False, "step 500 of 1500")
    assert checkpoint.completion({"version": 2, "step": 1500, "steps": 1500})[0] is True
    assert checkpoint.completion({"version": 2, "job": "grpo"})[0] is None
    assert "does not say" in checkpoint.unfinished({"version": 1})
    meta_path = mid / "meta.json"
    meta_path.write_text(json.dumps({**meta, "complete": "yes"}))
    with pytest.raises(checkpoint.CheckpointError, match="'complete' 'yes' is not true or false"):
        checkpoint.read_meta(mid, verify=False)


def test_an_interrupted_cached_sft_is_resumed_not_returned(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path)
    name = "sft_micro"
    _interrupted(tmp_path, monkeypatch, tmp_path / name, cfg)  # (undoes every monkeypatch so far)
    monkeypatch.setattr(bench.common, "CACHE", tmp_path)
    calls = []
    real_train = sft.train
    monkeypatch.setattr(sft, "train", lambda c, run, **kw: (calls.append(run), real_train(cfg, run, progress=False))[1])
    capsys.readouterr()
    env = ["env.image_size=[32,32]", "env.num_wait_steps=10"]  # the micro env it was trained on
    ckpt = bench.common.sft_run(name, env, tmp_path / "demos")
    out = capsys.readouterr()
    assert calls == [tmp_path / name]
    assert f"the cached SFT start {tmp_path / name} was taken mid-run (step 4 of 12): resuming it" in out.err
    assert "sft: resuming from step 4" in out.out
    meta = checkpoint.read_meta(ckpt)
    assert meta["complete"] and meta["step"] == 12
    calls.clear()
    assert bench.common.sft_run(name, env, tmp_path / "demos") == ckpt and calls == []  # finished: returned as it is


def test_eval_and_export_name_a_checkpoint_taken_mid_run(tmp_path, monkeypatch, capsys):
    from pushcut.policy.export import ExportConfig, export
    from pushcut.training.config import EvalConfig
    from pushcut.training.eval import evaluate
    from tests.training.conftest import MICRO_ENV

    mid = _interrupted(tmp_path, monkeypatch, tmp_path / "run", _cfg(tmp_path))
    capsys.readouterr()
    s = evaluate(EvalConfig(checkpoint=str(mid), env=MICRO_ENV, episodes=1, num_envs=1), tmp_path / "eval", False)
    assert s["source"] == {"path": str(mid), "complete": False, "progress": "step 4 of 12"}
    assert sum(e["episodes"] for e in s["by_side"].values()) == 1  # the dual-arm twin's seeds have a side
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["source"]["complete"] is False
    assert f"pushcut-eval: {mid}: taken mid-run (step 4 of 12)" in capsys.readouterr().err
    bundle = export(ExportConfig(checkpoint=str(mid), env=MICRO_ENV, out_dir=str(tmp_path / "bundle"),
                                 parity_env_samples=2, parity_random_samples=2, int8=False, fp16=False),
                    progress=False)
    assert f"pushcut-export: {mid}: taken mid-run (step 4 of 12)" in capsys.readouterr().err
    source = json.loads((bundle / "manifest.json").read_text())["source_checkpoint"]
    assert (source["complete"], source["progress"]) == (False, "step 4 of 12")
    s = evaluate(EvalConfig(bundle=str(bundle), env=MICRO_ENV, episodes=1, num_envs=1), tmp_path / "eval2", False)
    assert s["source"]["complete"] is False and "taken mid-run" in capsys.readouterr().err
