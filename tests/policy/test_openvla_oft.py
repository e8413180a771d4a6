"""The OpenVLA-OFT checkpoint loader on a tiny checkpoint written here in that format."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pushcut.policy.inference import TorchPolicy
from pushcut.policy.openvla_oft import OpenVLALoadError, load_openvla_oft

D_VIS, D, LAYERS_VIS, PATCH, IMAGE = 32, 48, 2, 8, 16


def _tiny_oft(path, fused=False, datasets=("libero_10_no_noops",)):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02
    w = {
        "vision_backbone.featurizer.patch_embed.proj.weight": r(D_VIS, 3, PATCH, PATCH),
        "vision_backbone.featurizer.patch_embed.proj.bias": r(D_VIS),
        "vision_backbone.featurizer.pos_embed": r(1, (IMAGE // PATCH) ** 2, D_VIS),
        "vision_backbone.featurizer.norm.weight": 1 + r(D_VIS),
        "vision_backbone.featurizer.norm.bias": r(D_VIS),
        "vision_backbone.featurizer.attn_pool.latent": r(1, 1, D_VIS),  # the unused MAP head
        "projector.fc1.weight": r(D, D_VIS), "projector.fc1.bias": r(D),
        "projector.fc2.weight": r(D, D), "projector.fc2.bias": r(D),
        "language_model.model.embed_tokens.weight": r(300, D),
        "language_model.model.norm.weight": 1 + r(D),
        "language_model.lm_head.weight": r(300, D),
    }
    for i in range(LAYERS_VIS):
        b = f"vision_backbone.featurizer.blocks.{i}."
        w.update({b + "norm1.weight": 1 + r(D_VIS), b + "norm1.bias": r(D_VIS), b + "norm2.weight": 1 + r(D_VIS),
                  b + "norm2.bias": r(D_VIS), b + "attn.qkv.weight": r(3 * D_VIS, D_VIS),
                  b + "attn.qkv.bias": r(3 * D_VIS),
                  b + "attn.proj.weight": r(D_VIS, D_VIS), b + "attn.proj.bias": r(D_VIS),
                  b + "mlp.fc1.weight": r(64, D_VIS), b + "mlp.fc1.bias": r(64), b + "mlp.fc2.weight": r(D_VIS, 64),
                  b + "mlp.fc2.bias": r(D_VIS)})
    for i in range(2):
        b = f"language_model.model.layers.{i}."
        w.update({b + "self_attn.q_proj.weight": r(D, D), b + "self_attn.k_proj.weight": r(D, D),
                  b + "self_attn.v_proj.weight": r(D, D), b + "self_attn.o_proj.weight": r(D, D),
                  b + "mlp.gate_proj.weight": r(96, D), b + "mlp.up_proj.weight": r(96, D),
                  b + "mlp.down_proj.weight": r(D, 96), b + "input_layernorm.weight": 1 + r(D),
                  b + "post_attention_layernorm.weight": 1 + r(D)})
    if fused:
        w["projector.fc3.weight"] = r(D, D)
    keys = sorted(w)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: w[k].contiguous() for k in ks}, path / name)
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, ks in shards.items() for k in ks}}))
    (path / "config.json").write_text(json.dumps({
        "model_type": "openvla", "vision_backbone_id": "tiny-vit", "vision_num_heads": 2, "image_sizes": [IMAGE],
        "n_action_bins": 32, "text_config": {"hidden_size": D, "num_hidden_layers": 2, "num_attention_heads": 4,
                                             "num_key_value_heads": 4, "intermediate_size": 96}}))
    stats = {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7, "mask": [True] * 6 + [False]},
             "proprio": {"min": [-1.0] * 8, "max": [1.0] * 8}}
    (path / "dataset_statistics.json").write_text(json.dumps({d: stats for d in datasets}))
    torch.save({"module.fc1.weight": r(D, 8), "module.fc1.bias": r(D), "module.fc2.weight": r(D, D),
                "module.fc2.bias": r(D)}, path / "proprio_projector--50000_checkpoint.pt")
    return w


def test_loads_weights_into_the_right_places(tmp_path):
    w = _tiny_oft(tmp_path)
    model, stats, tok, report = load_openvla_oft(tmp_path)
    sd = model.state_dict()
    qkv = w["vision_backbone.featurizer.blocks.1.attn.qkv.weight"]
    torch.testing.assert_close(sd["vision.encoder.layers.1.self_attn.k_proj.weight"], qkv[D_VIS : 2 * D_VIS])
    torch.testing.assert_close(sd["vision.embeddings.position_embedding.weight"],
                               w["vision_backbone.featurizer.pos_embed"][0])
    torch.testing.assert_close(sd["llm.layers.0.mlp.down_proj.weight"],
                               w["language_model.model.layers.0.mlp.down_proj.weight"])
    torch.testing.assert_close(sd["lm_head.weight"], w["language_model.lm_head.weight"])
    torch.testing.assert_close(sd["projector.2.weight"], w["projector.fc2.weight"])
    assert model.cfg.action_dim == 7 and model.cfg.chunk_len == 8 and model.cfg.n_bins == 32 and model.cfg.use_proprio
    # OFT has no learned action placeholders or camera embeddings; SigLIP's pooling head is unused
    assert {k for k in report["initialised"] if not k.startswith("vision.head.")} == {"action_queries", "camera_embed"}
    assert stats["action"]["q99"] == [1.0] * 7
    assert "byte tokenizer" in report["tokenizer"]
    policy = TorchPolicy(model, stats, tok)
    obs = {"images": {"agentview": np.zeros((16, 16, 3), np.uint8)}, "proprio": np.zeros(8, np.float32),
           "instruction": "put the bowl on the plate"}
    chunk = policy.infer(obs)
    assert chunk.shape == (8, 7) and np.all(np.abs(chunk) <= 1.0)


def test_refuses_what_it_cannot_load_faithfully(tmp_path):
    (tmp_path / "a").mkdir()
    _tiny_oft(tmp_path / "a", fused=True)
    with pytest.raises(OpenVLALoadError, match="fused SigLIP\\+DINOv2"):
        load_openvla_oft(tmp_path / "a")
    (tmp_path / "b").mkdir()
    _tiny_oft(tmp_path / "b", datasets=("libero_10", "bridge"))
    with pytest.raises(OpenVLALoadError, match=r"several datasets \['bridge', 'libero_10'\]; pass dataset="):
        load_openvla_oft(tmp_path / "b")
    assert load_openvla_oft(tmp_path / "b", dataset="bridge")[1]["action"]["q01"][0] == -1.0
    (tmp_path / "b" / "dataset_statistics.json").unlink()
    with pytest.raises(OpenVLALoadError, match="no dataset_statistics.json"):
        load_openvla_oft(tmp_path / "b", dataset="bridge")
    with pytest.raises(OpenVLALoadError, match="no config.json"):
        load_openvla_oft(tmp_path)


def _tiny_hf_tokenizer(path) -> None:
    """A byte-level BPE tokenizer in Hugging Face's layout, with a BOS like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["In: What action should the robot take to put the bowl on the plate?\nOut:",
            "pick up the alphabet soup and place it in the basket"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=280, special_tokens=["<pad>", "<unk>", "<s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(path)


def test_the_checkpoint_tokenizer_travels_to_the_torch_free_engine(tmp_path):
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from pushcut.deploy.engine import Engine
    from pushcut.policy import checkpoint
    from pushcut.policy.export import ExportConfig, export
    from pushcut.policy.preprocess import PROMPT, HFTokenizer
    from pushcut.sim.config import EnvConfig

    oft = tmp_path / "oft"
    oft.mkdir()
    _tiny_oft(oft)
    _tiny_hf_tokenizer(oft)
    model, stats, tok, report = load_openvla_oft(oft)
    assert isinstance(tok, HFTokenizer) and report["tokenizer"] == "the checkpoint's tokenizer"
    task = "put the bowl on the plate"
    reference = AutoTokenizer.from_pretrained(oft)(PROMPT.format(task=task))["input_ids"]
    assert tok.encode(task).tolist() == reference and reference[0] == 2  # BOS, as transformers adds it

    ckpt = checkpoint.save(tmp_path / "ckpt", model, stats, tok)
    _, _, loaded, _, _ = checkpoint.load(ckpt)
    assert loaded.encode(task).tolist() == reference
    libero = EnvConfig(kind="libero", task="libero_object", cameras=("agentview",),
                       image_size=(IMAGE, IMAGE))  # a 7-dim arm, as OFT's
    bundle = export(ExportConfig(env=libero, checkpoint=str(ckpt), out_dir=str(tmp_path / "bundle"),
                                 parity_env_samples=0, parity_random_samples=4, int8=False, fp16=False))
    engine = Engine(bundle)
    assert engine.tokenizer.encode(task).tolist() == reference
    obs = {"images": {"agentview": np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)},
           "proprio": np.zeros(8, np.float32), "instruction": task}
    np.testing.assert_allclose(engine.infer(obs), TorchPolicy(model, stats, tok).infer(obs), atol=1e-6)
    code = (
        "import sys, numpy as np; from pushcut.deploy.engine import Engine;"
        f"e = Engine({str(bundle)!r}); ids = e.tokenizer.encode({task!r}).tolist();"
        f"assert ids == {reference!r}, ids;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == 'transformers'];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
