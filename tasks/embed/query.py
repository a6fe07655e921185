"""One query text embedded in milliseconds, without torch: a BERT encoder's forward pass in numpy.

A search embeds one short text. Importing torch and sentence-transformers takes 10-13 s on these
machines (scikit-learn, SciPy and transformers' model registry come with it) for a forward pass that
takes milliseconds; numpy, `tokenizers` and `safetensors` load in well under a second. The same
weights, tokenizer, pooling and normalisation as sentence-transformers give the same vectors (cosine
>= 0.9999 to the embed stage's: tests/test_embeddings.py). Models of another architecture than BERT
(every registered model is one) go through sentence-transformers.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

ERF = (0.3275911, 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26), vectorised: numpy has none."""
    p, *a = ERF
    t = 1.0 / (1.0 + p * np.abs(x))
    poly = t * (a[0] + t * (a[1] + t * (a[2] + t * (a[3] + t * a[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:  # BERT's exact GELU (erf), not the tanh approximation
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


class BertQueryEncoder:
    def __init__(self, path: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.config = json.loads((path / "config.json").read_text())
        weights = load_file(str(path / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in weights.items()}
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        self.cls = bool(pooling.get("pooling_mode_cls_token"))
        limit = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length", 512)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(limit)

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.config["layer_norm_eps"])

    def encode(self, text: str) -> np.ndarray:
        ids = np.array(self.tokenizer.encode(text).ids)
        n, heads = len(ids), self.config["num_attention_heads"]
        x = (self.w["embeddings.word_embeddings.weight"][ids] + self.w["embeddings.position_embeddings.weight"][:n]
             + self.w["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, "embeddings.LayerNorm")
        for i in range(self.config["num_hidden_layers"]):
            layer = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{layer}.attention.self.{p}").reshape(n, heads, -1).transpose(1, 0, 2)
                       for p in ("query", "key", "value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            attended = self._linear(context.transpose(1, 0, 2).reshape(n, -1), f"{layer}.attention.output.dense")
            x = self._norm(x + attended, f"{layer}.attention.output.LayerNorm")
            inner = _gelu(self._linear(x, f"{layer}.intermediate.dense"))
            x = self._norm(x + self._linear(inner, f"{layer}.output.dense"), f"{layer}.output.LayerNorm")
        pooled = x[0] if self.cls else x.mean(0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)


def supported(path: Path) -> bool:
    """A sentence-transformers folder of a BERT model with safetensors weights and plain pooling."""
    try:
        config = json.loads((path / "config.json").read_text())
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]
    except (OSError, ValueError, KeyError):
        return False
    plain = pooling.get("pooling_mode_cls_token") or pooling.get("pooling_mode_mean_tokens")
    others = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v and not k.endswith(("cls_token",
                                                                                                    "mean_tokens"))]
    return (config.get("model_type") == "bert" and (path / "model.safetensors").exists()
            and (path / "tokenizer.json").exists() and plain and not others
            and modules in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]))


@lru_cache(maxsize=2)
def query_encoder(path: Path) -> BertQueryEncoder:
    return BertQueryEncoder(path)
