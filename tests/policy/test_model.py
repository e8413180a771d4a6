"""Parallel decoding, log-probs, temperature, checkpoints."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from pushcut.policy import checkpoint, sampling
from pushcut.policy.config import PolicyConfig
from pushcut.policy.modeling import VLAPolicy
from pushcut.policy.preprocess import ByteTokenizer


def _inputs(cfg: PolicyConfig, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tok = ByteTokenizer()
    ids, mask = tok.batch(["click the bell", "stack the two bowls"][:b])
    return {
        "pixels": torch.rand(b, len(cfg.cameras), 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) * 2 - 1,
        "proprio": torch.rand(b, cfg.proprio_dim, generator=g),
        "input_ids": torch.from_numpy(ids),
        "text_mask": torch.from_numpy(mask),
    }


def test_logits_shape(micro_cfg):
    torch.manual_seed(0)
    m = VLAPolicy(micro_cfg).eval()
    logits = m(**_inputs(micro_cfg))
    assert logits.shape == (2, micro_cfg.chunk_len * micro_cfg.action_dim, micro_cfg.n_bins)
    assert torch.isfinite(logits).all()


def test_parallel_decoding_equals_per_token_reference(micro_cfg):
    """One pass decodes the chunk; token j equals running the model for token j alone.

    The per-token reference queries one action position at a time: the sequence is the same
    prefix plus all placeholders (OFT's parallel decoding conditions every action token on the
    prompt and the placeholders, never on other sampled actions), and only position j is read.
    It is computed sample by sample, through the backbone's hidden states and the LM head rows
    of the action tokens, so batching, slicing of the head and the output layout are all checked.
    """
    torch.manual_seed(0)
    m = VLAPolicy(micro_cfg).eval()
    x = _inputs(micro_cfg)
    with torch.no_grad():
        parallel = m(**x)
        for b in range(2):
            single = {k: v[b : b + 1] for k, v in x.items()}
            captured = {}

            def hook(mod, inp, out, captured=captured):
                captured["h"] = out.last_hidden_state

            handle = m.llm.register_forward_hook(hook)
            m(**single)
            handle.remove()
            h = captured["h"][0]  # (S, D)
            n_act = micro_cfg.n_action_tokens
            head = m.lm_head.weight[micro_cfg.llm.vocab_size - micro_cfg.n_bins :]  # (n_bins, D)
            for j in range(n_act):
                ref = head @ h[h.shape[0] - n_act + j]
                torch.testing.assert_close(parallel[b, j], ref, rtol=1e-4, atol=1e-5)
    greedy = sampling.greedy(parallel)
    assert torch.equal(greedy, torch.stack([parallel[:, j].argmax(-1) for j in range(parallel.shape[1])], 1))


def test_action_tokens_attend_bidirectionally(micro_cfg):
    torch.manual_seed(0)
    m = VLAPolicy(micro_cfg).eval()
    x = _inputs(micro_cfg, b=1)
    with torch.no_grad():
        a = m(**x)
        m.action_queries.data[-1] += 1.0  # change only the last placeholder
        b = m(**x)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-6  # the first action token sees the last


def test_log_probs_sum_and_temperature(micro_cfg):
    torch.manual_seed(0)
    logits = torch.randn(3, 12, micro_cfg.n_bins) * 3
    tokens = sampling.sample(logits, 1.6, torch.Generator().manual_seed(0))
    per_token = sampling.token_log_probs(logits, tokens, 1.6)
    manual = torch.log_softmax(logits / 1.6, -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(per_token, manual)
    torch.testing.assert_close(sampling.chunk_log_prob(logits, tokens, 1.6), manual.sum(-1))
    best = sampling.greedy(logits)
    # a higher temperature flattens: the argmax gets less likely, entropy rises
    assert torch.all(sampling.token_log_probs(logits, best, 2.0) < sampling.token_log_probs(logits, best, 1.0))
    assert torch.all(sampling.entropy(logits, 2.0) > sampling.entropy(logits, 1.0))
    with pytest.raises(ValueError, match="temperature"):
        sampling.token_log_probs(logits, tokens, 0.0)


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1]]])).expand(1, 20_000, 3)
    counts = torch.bincount(sampling.sample(logits, 1.0, torch.Generator().manual_seed(1)).flatten(), minlength=3)
    np.testing.assert_allclose((counts / counts.sum()).numpy(), [0.7, 0.2, 0.1], atol=0.02)


def test_sampling_never_draws_an_impossible_bin():
    # bins of probability 0 at both ends and between two possible ones
    logits = torch.tensor([[[-torch.inf, 0.0, -torch.inf, 0.0, -torch.inf]]]).expand(1, 20_000, 5)
    counts = torch.bincount(sampling.sample(logits, 1.6, torch.Generator().manual_seed(2)).flatten(), minlength=5)
    assert counts[[0, 2, 4]].tolist() == [0, 0, 0]
    assert abs(int(counts[1]) - 10_000) < 400


def _stats(cfg):
    return {
        "action": {"min": [-1.0] * cfg.action_dim, "max": [1.0] * cfg.action_dim},
        "proprio": {"min": [0.0] * cfg.proprio_dim, "max": [1.0] * cfg.proprio_dim},
    }


def test_checkpoint_round_trip_is_bit_exact(micro_cfg, tmp_path):
    torch.manual_seed(0)
    m = VLAPolicy(micro_cfg).eval()
    path = checkpoint.save(tmp_path / "ckpt", m, _stats(micro_cfg), ByteTokenizer(), run_config={"x": 1})
    m2, stats, _, meta, run = checkpoint.load(path, expected=micro_cfg)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    x = _inputs(micro_cfg)
    with torch.no_grad():
        assert torch.equal(m(**x), m2.eval()(**x))
    assert stats == _stats(micro_cfg) and run == {"x": 1} and meta["version"] == checkpoint.CKPT_VERSION
    assert not (tmp_path / "ckpt.tmp").exists()


def test_a_save_killed_between_its_renames_leaves_the_previous_checkpoint(micro_cfg, tmp_path, monkeypatch):
    torch.manual_seed(0)
    first = VLAPolicy(micro_cfg)
    path = checkpoint.save(tmp_path / "ckpt", first, _stats(micro_cfg), ByteTokenizer(), extra={"step": 1})
    real_replace, calls = os.replace, []

    def dies_on_second(src, dst):  # the previous checkpoint moved aside, then the process dies
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, VLAPolicy(micro_cfg), _stats(micro_cfg), ByteTokenizer(), extra={"step": 2})
    monkeypatch.undo()
    assert not path.exists() and (tmp_path / "ckpt.old" / "meta.json").exists()
    assert checkpoint.recover(path) and not checkpoint.recover(path)
    m, *_, meta, _ = checkpoint.load(path)
    assert meta["step"] == 1
    for k, v in first.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def test_checkpoint_mismatch_is_a_clear_error(micro_cfg, tmp_path):
    m = VLAPolicy(micro_cfg)
    path = checkpoint.save(tmp_path / "ckpt", m, _stats(micro_cfg), ByteTokenizer())
    other = PolicyConfig(**{**micro_cfg.__dict__, "chunk_len": 5})
    with pytest.raises(checkpoint.CheckpointError, match=r"chunk_len: 3 != 5"):
        checkpoint.load(path, expected=other)
    # weights that do not fit their own config
    from safetensors.torch import load_file, save_file

    state = load_file(path / "model.safetensors")
    state["action_queries"] = torch.zeros(7, micro_cfg.llm.hidden_size)
    save_file(state, path / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="model.safetensors does not match its sha256"):
        checkpoint.load(path)
    _restamp(path)  # consistent hashes, wrong shapes: refused by the shape check
    with pytest.raises(checkpoint.CheckpointError, match="action_queries"):
        checkpoint.load(path)
    (path / "meta.json").write_text('{"format": "pushcut-checkpoint", "version": 42}')
    with pytest.raises(checkpoint.CheckpointError, match="version 42"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="no meta.json"):
        checkpoint.load(tmp_path)


def _restamp(path):
    from pushcut.artefacts import sha256

    meta = json.loads((path / "meta.json").read_text())
    meta["files"] = {name: sha256(path / name) for name in meta["files"]}
    (path / "meta.json").write_text(json.dumps(meta))


def test_checkpoint_files_are_hashed_and_every_change_is_refused_by_name(micro_cfg, tmp_path, caplog):
    m = VLAPolicy(micro_cfg)
    path = checkpoint.save(tmp_path / "ckpt", m, _stats(micro_cfg), ByteTokenizer(), extra_tensors={"x": torch.ones(2)})
    meta = checkpoint.read_meta(path)
    assert set(meta["files"]) == {"model.safetensors", "extra.safetensors", "config.json", "norm_stats.json",
                                  "tokenizer.json"}
    clean = tmp_path / "clean"
    shutil.copytree(path, clean)

    def corrupted(edit):
        shutil.rmtree(path)
        shutil.copytree(clean, path)
        edit(path)
        return path

    def flip_byte(name, offset=-5):
        def edit(p):
            data = bytearray((p / name).read_bytes())
            data[offset] ^= 0x40  # e.g. a weight's exponent byte
            (p / name).write_bytes(bytes(data))
        return edit

    cases = [
        (flip_byte("model.safetensors"), "model.safetensors does not match its sha256"),
        (flip_byte("extra.safetensors"), "extra.safetensors does not match"),
        (lambda p: (p / "norm_stats.json").write_text((p / "norm_stats.json").read_text()[:-10]),
         "norm_stats.json does not match"),
        (lambda p: (p / "config.json").write_text((p / "config.json").read_text().replace("3", "4", 1)),
         "config.json does not match"),
        (lambda p: (p / "tokenizer.json").unlink(), "tokenizer.json listed in meta.json is missing"),
        (lambda p: (p / "stray.bin").write_bytes(b"x"), r"\['stray.bin'\] not listed"),
        (lambda p: (p / "meta.json").write_bytes(b"\xff{"), "meta.json is not valid JSON"),
        (lambda p: (p / "meta.json").write_text("[1]"), "format"),
    ]
    for edit, match in cases:
        with pytest.raises(checkpoint.CheckpointError, match=match):
            checkpoint.load(corrupted(edit))
    # a version-1 checkpoint (written before hashes) still loads, with a warning
    corrupted(lambda p: (p / "meta.json").write_text(json.dumps({"format": checkpoint.CKPT_FORMAT, "version": 1})))
    checkpoint.load(path)
    assert "carries no file hashes" in caplog.text


def test_sft_loss_falls_on_a_tiny_run(tmp_path):
    from pushcut.policy.config import LLMConfig, VisionConfig
    from pushcut.sim.config import EnvConfig
    from pushcut.training import sft
    from pushcut.training.config import SFTConfig, WandbConfig
    from pushcut.training.run_log import read_metrics

    cfg = SFTConfig(
        env=EnvConfig(task="click_bell", image_size=(32, 32)),
        policy=PolicyConfig(
            vision=VisionConfig(image_size=32, patch_size=16, hidden_size=32, num_layers=1, num_heads=2,
                                intermediate_size=64),
            llm=LLMConfig(hidden_size=48, num_layers=1, num_heads=4, num_kv_heads=4, intermediate_size=96),
            chunk_len=5,
        ),
        demos_dir=str(tmp_path / "demos"),
        demos_per_task=2,
        steps=60,
        batch_size=8,
        lr=1e-3,
        warmup_steps=5,
        log_every=10,
        wandb=WandbConfig(mode="offline"),
    )
    ckpt = sft.train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], [r["loss"] for r in rows]
    assert (ckpt / "model.safetensors").exists() and (tmp_path / "run" / "sft_curve.png").exists()
    assert any((tmp_path / "run" / "wandb").iterdir())  # an offline wandb run was written
