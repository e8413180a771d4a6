"""Engine: runs an exported bundle with onnxruntime; numpy + onnxruntime only (no torch).

Loads and verifies the bundle (hashes, version), opens an InferenceSession with the requested
providers in order of preference (TensorRT, CUDA, CPU by default on GPU machines) and reports the
ones it actually got (onnxruntime silently falls back to CPU when CUDA is missing), pre-processes
observations exactly as training did (``pushcut.policy.preprocess``), decodes greedily or by
sampling, un-normalises with the bundle's statistics and returns an action chunk.

Parity gate: before it serves, the engine runs the bundle's parity samples (``parity.npz``: the
export's inputs and the torch model's fp32 logits) on the provider it got and refuses to start
where the variant is outside the gate the export wrote (fp32: its ``parity_atol``, every greedy bin
the same; fp16: ``FP16_GATE``), so a CUDA or TensorRT session is held to what the CPU one was at
export. TensorRT builds its engines into ``cache_dir`` (a run folder, never the bundle).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pushcut.artefacts import PARITY_SAMPLES
from pushcut.deploy.bundle import BundleError, load_manifest
from pushcut.devices import onnxruntime
from pushcut.interface import Policy
from pushcut.policy.action_tokenizer import ActionTokenizer, Normalizer, decode_chunks
from pushcut.policy.preprocess import build_inputs, instruction_problem, load_tokenizer, proprio_normalizer

log = logging.getLogger(__name__)
ort = onnxruntime()

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def provider_options(providers: Sequence[str], variant: str, cache_dir: str | Path, device_id: int) -> list[dict]:
    """Each provider's options: TensorRT builds fp16 kernels for the fp16 variant and caches its
    engines (and timing) in ``cache_dir``; CUDA keeps fp32 matmuls in fp32 (no TF32), so the fp32
    variant meets the export's fp32 gate."""
    out = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            out.append({"device_id": device_id, "trt_fp16_enable": variant == "fp16",
                        "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir),
                        "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache_dir)})
        elif p == "CUDAExecutionProvider":
            out.append({"device_id": device_id, "use_tf32": 0})
        else:
            out.append({})
    return out


def gpu_build_hint(providers: Sequence[str]) -> str:
    """Why a GPU provider is missing, where the installed onnxruntime says."""
    from importlib import metadata

    if not set(providers) & {"TensorrtExecutionProvider", "CUDAExecutionProvider"}:
        return ""
    dists = {d.metadata["Name"].lower() for d in metadata.distributions()} & {"onnxruntime", "onnxruntime-gpu"}
    if dists == {"onnxruntime", "onnxruntime-gpu"}:
        return ("; onnxruntime and onnxruntime-gpu are both installed and share one module: "
                "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'pushcut[gpu]'")
    if "onnxruntime-gpu" not in dists:
        return "; this is the CPU build of onnxruntime: pip uninstall -y onnxruntime && pip install 'pushcut[gpu]'"
    return "; onnxruntime-gpu found no CUDA/TensorRT libraries it can load (see its requirements for this CUDA)"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Engine(Policy):
    """A bundle behind the one ``Policy`` interface, plus batch inference and sampling."""

    def __init__(
        self,
        bundle: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        variant: str = "fp32",  # "fp32" | "int8" (dynamic quantisation, made at export) | "fp16" (GPU)
        graph_optimization: str = "all",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        temperature: float = 0.0,  # 0: greedy
        seed: int = 0,
        cache_dir: str | Path | None = None,  # TensorRT's engine cache; None: ~/.cache/pushcut/tensorrt/<model hash>
        device_id: int = 0,  # the GPU of CUDA and TensorRT
    ):
        self.path = Path(bundle)
        self.manifest = load_manifest(self.path)
        m = self.manifest
        models = m["models"]
        if variant not in models:
            raise BundleError(f"{self.path} has no {variant!r} model; it has {sorted(models)}")
        if graph_optimization not in OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {list(OPT_LEVELS)}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = OPT_LEVELS[graph_optimization]
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        available = ort.get_available_providers()
        wanted = [p for p in providers if p in available]
        if not wanted:
            raise BundleError(f"none of the providers {list(providers)} is available; onnxruntime has {available}"
                              f"{gpu_build_hint(providers)}")
        if cache_dir is None:
            cache_dir = Path.home() / ".cache" / "pushcut" / "tensorrt" / m["files"][models[variant]][:16]
        self.session = ort.InferenceSession(str(self.path / models[variant]), sess_options=opts,
                                            providers=wanted,
                                            provider_options=provider_options(wanted, variant, cache_dir, device_id))
        self.providers = self.session.get_providers()
        self.source = self.providers[0]
        if self.providers[0] != providers[0]:
            log.warning("asked for %s, onnxruntime runs on %s%s", providers[0], self.providers[0],
                        gpu_build_hint(providers[:1]))
        if variant == "fp16" and self.providers[0] == "CPUExecutionProvider":
            log.warning("the fp16 model is meant for GPU providers; on CPU it is usually slower than fp32")
        self.variant = variant
        space = m["action_space"]
        self.action_dim, self.chunk_len, self.n_bins = space["dim"], space["chunk_len"], space["n_bins"]
        self.cameras = [c["name"] for c in m["cameras"]]
        self.image_size = m["cameras"][0]["image_size"]
        self.center_crop = m["cameras"][0].get("center_crop")
        self._check_model_shapes(models[variant])
        stats = m["norm_stats"]
        self.action_norm = Normalizer(stats["action"], space["normalization"], self.action_dim)
        self.proprio_norm = proprio_normalizer(stats, m["proprio"]["dim"])
        self.tokenizer = load_tokenizer((self.path / m["instruction"]["tokenizer"]).read_text())
        self.action_tokenizer = ActionTokenizer(self.n_bins, space["vocab_size"])
        self.temperature = temperature
        self.rng = np.random.default_rng(seed)
        self.parity = self._check_parity()

    def _check_parity(self) -> dict | None:
        """The bundle's parity samples through this session, refused outside the variant's gate."""
        gate = self.manifest["parity"].get("gate", {}).get(self.variant)
        if PARITY_SAMPLES not in self.manifest["files"]:
            if self.source != "CPUExecutionProvider":
                raise BundleError(f"{self.path} carries no parity samples (exported before {PARITY_SAMPLES}): "
                                  f"it is not run on {self.source} unchecked; re-export it")
            return None  # its fp32 model was gated on CPU at export
        with np.load(self.path / PARITY_SAMPLES) as data:
            reference = data["logits"]
            out = self.session.run(["logits"], {k: data[k] for k in data.files if k != "logits"})[0]
        report = {"provider": self.source, "variant": self.variant, "samples": len(reference),
                  "max_abs_logit_diff": float(np.abs(out.astype(np.float64) - reference).max()),
                  "greedy_agreement": float((out.argmax(-1) == reference.argmax(-1)).mean()), "gate": gate}
        if gate and (not report["max_abs_logit_diff"] <= gate["atol"]
                     or report["greedy_agreement"] < gate["greedy_agreement"]):
            raise BundleError(
                f"{self.path}: the {self.variant} model on {self.source} fails the parity gate: max |logit diff| "
                f"{report['max_abs_logit_diff']:.3g} (allowed {gate['atol']:g}), greedy agreement "
                f"{report['greedy_agreement']:.2%} (need {gate['greedy_agreement']:.0%}) against the exported torch "
                "model; it is not served")
        log.info("parity on %s (%s): %s", self.source, self.variant, report)
        return report

    def _check_model_shapes(self, model_file: str) -> None:
        """The ONNX graph's input and output shapes must be the manifest's: a mismatch is refused
        here, naming both, instead of as a reshape error at the first inference."""
        m = self.manifest
        expect = {"logits": [self.chunk_len * self.action_dim, self.n_bins], **m["inputs"]}
        graph = {a.name: a.shape[1:] for a in (*self.session.get_inputs(), *self.session.get_outputs())}
        for name, want in expect.items():
            have = graph.get(name)
            static = [d for d in (have or []) if isinstance(d, int)]
            if have is None or (len(static) == len(have) and list(have) != list(want)):
                raise BundleError(f"{self.path}: {model_file} has {name} of shape {have}; the manifest says {want}")
        sizes = {c["image_size"] for c in m["cameras"]}  # square images, one size for all cameras
        pixels = m["inputs"]["pixels"]  # (cameras, 3, H, W)
        if len(sizes) != 1 or len(m["cameras"]) != pixels[0] or pixels[-2:] != [min(sizes)] * 2:
            raise BundleError(f"{self.path}: cameras {m['cameras']} do not match the model's pixels input {pixels}")

    def logits(self, observations: Sequence[Mapping]) -> np.ndarray:
        """Refuses (ValueError) non-finite proprio and non-finite logits: a NaN joint state would
        otherwise decode to a finite, valid-looking chunk (every argmax of NaN logits is bin 0)."""
        for i, o in enumerate(observations):
            if not np.all(np.isfinite(np.asarray(o["proprio"], dtype=np.float64))):
                raise ValueError(f"observation {i}: proprio is not finite: {np.asarray(o['proprio']).tolist()}")
        inputs = build_inputs(observations, self.cameras, self.image_size, self.tokenizer, self.proprio_norm,
                              self.center_crop)
        logits = self.session.run(["logits"], inputs)[0]  # (B, A, n_bins)
        if not np.all(np.isfinite(logits)):
            raise ValueError("the model produced non-finite logits; no action is decoded from them")
        return logits

    def decode(self, logits: np.ndarray, temperature: float) -> np.ndarray:
        if temperature <= 0:
            bins = logits.argmax(-1)
        else:
            p = _softmax(logits.astype(np.float64) / temperature)
            cdf = p.cumsum(-1)
            u = self.rng.random(p.shape[:-1] + (1,))
            bins = np.minimum((cdf < u).sum(-1), self.n_bins - 1)
        return bins

    def infer_batch(self, observations: Sequence[Mapping], temperature: float | None = None) -> np.ndarray:
        """Action chunks (B, chunk_len, action_dim), un-normalised, for a batch of observations."""
        t = self.temperature if temperature is None else temperature
        bins = self.decode(self.logits(observations), t)
        chunks = decode_chunks(bins, self.action_tokenizer, self.action_norm, self.chunk_len, self.action_dim)
        if not np.all(np.isfinite(chunks)):
            raise FloatingPointError("the model produced non-finite actions")
        return chunks

    def infer(self, obs: Mapping) -> np.ndarray:
        return self.infer_batch([obs])[0]

    def instruction_problem(self, text: str) -> str | None:
        return instruction_problem(self.tokenizer, text)
