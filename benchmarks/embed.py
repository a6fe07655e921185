"""Embedding benchmark: texts/s and peak RSS of our path against the seed's EmbeddingGenerator.

    python benchmarks/embed.py [--texts 4000] [--users-scale 25m]

Ours: sentence-transformers, texts sorted by length into batches of 256 (fp16 on CUDA).
Baseline (seed 000): plain transformers AutoModel, fixed batches of 64 in input order, mean
pooling, fp32. Both encode the same movie texts (a generated small release) with all-MiniLM-L6-v2,
each in its own process. Also times the user vectors for the 25m-scale ratings the ingest benchmark
leaves in benchmarks/.cache/out-ours (one sparse product). With a GPU: texts/s at fp16 for
MiniLM-L6 (and bge-base when its files are available) and the share of the GPU's FP16 peak.
Last line: one JSON object. Targets: CPU >= the seed's throughput and <= 2 GB; GPU >= 30,000
texts/s for MiniLM-L6 fp16; user vectors for 25M ratings <= 20 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, measure, run_child  # noqa: E402

MODEL = "all-MiniLM-L6-v2"


def texts(n: int) -> list[str]:
    from tasks.embeddings import movie_texts
    from tasks.movielens import ingest_release
    from tasks.movielens_sample import generate

    release = CACHE / "ml-small-seed42"
    if not (release / "README.txt").exists():
        generate("small", release, seed=42)
    processed = CACHE / "embed-processed"
    if not (processed / "movies.parquet").exists():
        ingest_release(release, processed)
    all_texts = movie_texts(processed)["text"].to_list()
    return (all_texts * (n // len(all_texts) + 1))[:n]


def ours(n: int, device: str, model_name: str = MODEL) -> dict:
    from tasks.embeddings import load_model, model_path  # noqa: F401

    batch = texts(n)
    model = load_model(model_name, device)
    model.encode(batch[:64])  # warm-up
    started = time.perf_counter()
    model.encode(batch, batch_size=256 if device == "cpu" else 1024, normalize_embeddings=True,
                 show_progress_bar=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(x) for x in model.tokenizer(batch, truncation=True, max_length=model.max_seq_length)["input_ids"])
    params = sum(p.numel() for p in model.parameters())
    return {"texts": n, "encode_s": round(seconds, 2), "texts_per_s": round(n / seconds, 1),
            "tokens_per_text": round(tokens / n, 1), "params": params, "device": str(model.device)}


def seed_generator(n: int) -> dict:
    """seed 000's EmbeddingGenerator: AutoTokenizer/AutoModel, batches of 64, mean pooling."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tasks.embeddings import model_path

    batch = texts(n)
    path = str(model_path(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    started = time.perf_counter()
    out = []
    with torch.no_grad():
        for i in range(0, n, 64):
            enc = tokenizer(batch[i:i + 64], padding=True, truncation=True, max_length=512, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    seconds = time.perf_counter() - started
    return {"texts": n, "encode_s": round(seconds, 2), "texts_per_s": round(n / seconds, 1)}


def users(scale: str) -> dict:
    import h5py
    import numpy as np
    import polars as pl

    from tasks.embeddings import user_vectors

    processed = CACHE / "out-ours" if scale == "25m" else CACHE / "embed-processed"
    if not (processed / "ratings.parquet").exists():
        raise SystemExit(f"{processed} has no ratings.parquet: run benchmarks/ingest.py first")
    media = pl.read_parquet(processed / "movies.parquet", columns=["media_id"])["media_id"].to_list()
    vectors = np.random.default_rng(0).normal(size=(len(media), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with h5py.File(CACHE / "bench-media.h5", "w") as f:
        f.create_dataset("ids", data=np.array(media, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=vectors)
        f.attrs["model"] = "random"
    started = time.perf_counter()
    counts = user_vectors(processed / "ratings.parquet", CACHE / "bench-media.h5", CACHE / "bench-users.h5")
    return {"user_vectors_s": round(time.perf_counter() - started, 2), **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=4_000)
    parser.add_argument("--gpu-texts", type=int, default=200_000)
    parser.add_argument("--users-scale", default="25m", choices=["25m", "small"])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense FP16 peak (H100/H200 SXM)")
    parser.add_argument("--child")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    if args.child == "ours-cpu":
        import sentence_transformers  # noqa: F401 - imported before the clock starts

        measure(lambda: ours(args.texts, "cpu"))
        return
    if args.child == "ours-cuda":
        import sentence_transformers  # noqa: F401

        measure(lambda: ours(args.gpu_texts, "cuda", args.model))
        return
    if args.child == "seed":
        import transformers  # noqa: F401

        measure(lambda: seed_generator(args.texts))
        return
    if args.child == "users":
        import tasks.embeddings  # noqa: F401

        measure(lambda: users(args.users_scale))
        return

    import torch

    figures: dict = {"benchmark": "embed", "model": MODEL, "texts": args.texts}
    ours_cpu = run_child(__file__, "ours-cpu", "--texts", str(args.texts))
    seed = run_child(__file__, "seed", "--texts", str(args.texts))
    user = run_child(__file__, "users", "--users-scale", args.users_scale)
    figures.update(
        wall_s=ours_cpu["encode_s"], peak_rss_mb=ours_cpu["peak_rss_mb"], texts_per_s=ours_cpu["texts_per_s"],
        baseline="seed 000 EmbeddingGenerator (transformers, batches of 64, mean pooling)",
        baseline_wall_s=seed["encode_s"], baseline_peak_rss_mb=seed["peak_rss_mb"],
        baseline_texts_per_s=seed["texts_per_s"], speedup=round(seed["encode_s"] / ours_cpu["encode_s"], 2),
        user_vectors_s=user["user_vectors_s"], user_vectors_users=user["users"],
        user_vectors_ratings=user["ratings_used"], user_vectors_peak_rss_mb=user["peak_rss_mb"])
    if torch.cuda.is_available():
        for name in (MODEL, "BAAI/bge-base-en-v1.5"):
            try:
                gpu = run_child(__file__, "ours-cuda", "--gpu-texts", str(args.gpu_texts), "--model", name)
            except SystemExit as exc:  # e.g. bge-base's files are not on this machine
                figures[f"gpu_{name}"] = f"not run: {str(exc).splitlines()[-1][:200]}"
                continue
            flops = 2 * gpu["params"] * gpu["tokens_per_text"] * gpu["texts_per_s"]
            figures[f"gpu_{name}"] = {"texts_per_s": gpu["texts_per_s"], "tokens_per_text": gpu["tokens_per_text"],
                                      "share_of_fp16_peak": round(flops / (args.peak_tflops * 1e12), 4)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
