"""Embedding benchmark: texts/s and peak RSS of our path against the seed's EmbeddingGenerator.

    python benchmarks/embed.py [--texts 4000] [--users-scale 25m]      # here: CPU figures
    python benchmarks/embed.py --isa avx2                                # as on a CPU without AVX512/AMX
    python benchmarks/embed.py --bundle                                  # here: what a GPU machine needs
    python3 benchmarks/embed.py --gpu-only                               # there: GPU figures

Ours: tasks.embed.models.load_model (fp16 on CUDA; on a CPU OpenVINO, in bf16 where the CPU has it
natively) and tasks.embed.models.encode (sentence-transformers sorts texts by length into batches: 256
on CPU, 1024 on a GPU). Baseline
(seed 000): plain transformers AutoModel in fp32, fixed batches of 64 in input order, mean pooling.
Both encode the same movie texts (a generated small release) with all-MiniLM-L6-v2, each in its own
process, and the figures include how close our vectors are to the baseline's. The CPU run also
times the user vectors for the 25m-scale ratings the ingest benchmark leaves in
benchmarks/.cache/out-ours (one sparse product).

GPU: the device machine has torch and sentence-transformers but not this project's stack, and
takes at most 64 MiB per call, so `--bundle` writes benchmarks/.cache/gpu/ here: the 62,423 movie
texts of the 25m-scale release (after benchmarks/ingest.py; else the small release's), CPU fp32
reference vectors, and all-MiniLM-L6-v2 saved in fp16 (46 MB in all; the wheel's fp32 weights
alone are 91 MB). There, carry that folder and run `--gpu-only`: MiniLM-L6 and bge-base at fp16
against the seed approach on the same GPU, the fp16 vectors' agreement with the CPU reference, and the share of
the GPU's FP16 peak the useful FLOPs represent. bge-base's weights are not on PyPI: unless they are
in the Hugging Face cache, its figure comes from the same architecture (BERT-base, 768 x 12 layers,
its tokenizer's vocabulary) with random weights, which costs exactly the same per token.
Precisions: torch's fp32, bf16 and dynamic int8, and OpenVINO's fp32 and bf16 each run in a child,
with texts/s and agreement with torch's fp32 vectors (minimum cosine, recall@10 of the fp32 neighbours
over 2,000 distinct texts); the pipeline's `auto` is OpenVINO, in bf16 only where the CPU has it
natively. `--isa avx2` measures all of it on AVX2 code paths, as on a CPU without AVX512/AMX.
On the CPU each side's figure is the fastest of 3 passes over the same texts (the machine is shared).
Last line: one JSON object. Targets: CPU >= the seed's throughput and <= 2 GB; GPU >= 30,000
texts/s for MiniLM-L6 fp16; user vectors for 25M ratings <= 20 s; a precision is usable only at
cosine >= 0.98 and recall@10 >= 0.95.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, cpu_model, measure, run_child  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
BGE_BASE = "BAAI/bge-base-en-v1.5"
BUNDLE = CACHE / "gpu"
REFERENCE_ROWS = 512
# bge-base-en-v1.5 is BERT-base with CLS pooling over the uncased WordPiece vocabulary MiniLM-L6 uses too.
BGE_BASE_ARCH = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "vocab_size": 30522, "max_position_embeddings": 512}


def movie_texts_sample(prefer_25m: bool = False) -> list[str]:
    """Distinct movie texts (needs the project's stack): a generated small release's, or with
    prefer_25m the 25m-scale release's that benchmarks/ingest.py leaves (genome themes make them
    longer: 83 characters on average against 47)."""
    from tasks.embed.embeddings import movie_texts
    from tasks.ingest.movielens import ingest_release
    from tasks.ingest.sample import generate

    if prefer_25m and (CACHE / "out-ours" / "movies.parquet").exists():
        return movie_texts(CACHE / "out-ours")["text"].to_list()
    release = CACHE / "ml-small-seed42"
    if not (release / "README.txt").exists():
        generate("small", release, seed=42)
    processed = CACHE / "embed-processed"
    if not (processed / "movies.parquet").exists():
        ingest_release(release, processed)
    return movie_texts(processed)["text"].to_list()


def texts(n: int, bundle: Path | None = None) -> list[str]:
    if bundle:
        distinct = json.loads(gzip.decompress((bundle / "texts.json.gz").read_bytes()))
    else:
        distinct = movie_texts_sample()
    return (distinct * (n // len(distinct) + 1))[:n]


def write_bundle(out: Path, distinct: list[str]) -> float:
    """Texts, CPU reference vectors and an fp16 copy of MiniLM-L6: all a bare GPU machine needs.
    Returns its size in MiB (one device call carries at most 64)."""
    import numpy as np

    from tasks.embed.models import encode, load_model

    model = load_model(MODEL, "cpu", precision="fp32", runtime="torch")  # the reference: torch fp32
    reference = encode(model, distinct[:REFERENCE_ROWS])
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "texts.json.gz").write_bytes(gzip.compress(json.dumps(distinct).encode()))
    np.save(tmp / "reference.npy", reference)
    model.half().save(str(tmp / MODEL))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20


def bundled_model(name: str, bundle: Path, device: str, workdir: Path):
    """MiniLM-L6 from the bundle; bge-base from the HF cache, else its architecture with random weights."""
    from tasks.embed.models import EmbeddingError, load_model

    if name == MODEL:
        return load_model(str(bundle / MODEL), device), "real"
    try:
        return load_model(name, device), "real"
    except EmbeddingError:
        pass
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    arch = workdir / "bert-base"
    BertModel(BertConfig(**BGE_BASE_ARCH)).half().save_pretrained(arch)
    for tokenizer_file in (bundle / MODEL).glob("*"):
        if tokenizer_file.is_file() and ("token" in tokenizer_file.name or tokenizer_file.name == "vocab.txt"):
            shutil.copy(tokenizer_file, arch / tokenizer_file.name)
    transformer = models.Transformer(str(arch), max_seq_length=512)
    SentenceTransformer(modules=[transformer, models.Pooling(768, "cls"), models.Normalize()]).save(str(workdir / "st"))
    return load_model(str(workdir / "st"), device), "random (bge-base architecture: throughput only)"


REPEATS = 3  # CPU: each side's fastest pass over the texts (the machine is shared; GPU runs: one pass)


def fastest(encode_all: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(wall s, CPU s, result) of the fastest of `repeats` calls."""
    best = None
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = encode_all()
        run = (time.perf_counter() - started, time.process_time() - cpu_started, result)
        best = run if best is None or run[0] < best[0] else best
    return best


def ours(n: int, device: str, model_name: str = MODEL, bundle: Path | None = None) -> dict:
    import numpy as np
    import torch

    from tasks.embed.models import encode, load_model, precision_of

    batch = texts(n, bundle)
    with tempfile.TemporaryDirectory() as workdir:
        model, weights = bundled_model(model_name, bundle, device, Path(workdir)) if bundle else (
            load_model(model_name, device), "real")
        model.encode(batch[:64])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        seconds, _, vectors = fastest(lambda: encode(model, batch, 256 if device == "cpu" else 1024),
                                      REPEATS if device == "cpu" else 1)
    tokens = sum(len(x) for x in model.tokenizer(batch, truncation=True, max_length=model.max_seq_length)["input_ids"])
    # Embedding lookups cost no multiply-adds: only the other weights count towards FLOPs.
    params = sum(p.numel() for name, p in model.named_parameters() if ".embeddings." not in f".{name}")
    figures = {"texts": n, "encode_s": round(seconds, 2), "texts_per_s": round(n / seconds, 1),
               "tokens_per_text": round(tokens / n, 1), "non_embedding_params": params,
               "device": str(model.device), "weights": weights, "precision": precision_of(model)}
    if device == "cuda":
        figures.update(gpu=torch.cuda.get_device_name(),
                       gpu_peak_mem_mb=round(torch.cuda.max_memory_allocated() / 2**20))
    if not bundle:
        np.save(CACHE / "embed-ours.npy", vectors)
    if bundle and model_name == MODEL:
        reference = np.load(bundle / "reference.npy")
        rows = min(len(vectors), len(reference))
        figures["min_cosine_vs_cpu_fp32"] = round(float((vectors[:rows] * reference[:rows]).sum(axis=1).min()), 5)
    return figures


PRECISIONS = ("fp32", "bf16", "int8", "openvino-fp32", "openvino-bf16")
# An AVX2-only CPU's code paths on any x86 CPU: torch's own kernels, oneDNN and MKL each held to AVX2.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
AGREEMENT_ROWS = 2_000


def precision_figures(n: int, precision: str) -> dict:
    """texts/s of MiniLM-L6 on the CPU at one precision and runtime, and its agreement with torch's
    fp32 vectors over distinct movie texts: the minimum cosine, and recall@10 of the fp32 nearest
    neighbours. fp32, bf16 and int8 run in torch (int8: dynamic quantisation of every Linear layer,
    activations quantised per batch); openvino-* are the pipeline's CPU runtime (with_openvino)."""
    import numpy as np
    import torch

    from tasks.embed.models import encode, load_model, precision_of, with_openvino

    distinct = movie_texts_sample()[:AGREEMENT_ROWS]
    model = load_model(MODEL, "cpu", precision="fp32", runtime="torch")
    reference = encode(model, distinct)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    elif precision == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    elif precision.startswith("openvino-"):
        model = with_openvino(model, bf16=precision.endswith("bf16"))
    batch = texts(n)
    encode(model, batch[:64])  # warm-up
    seconds, cpu, _ = fastest(lambda: encode(model, batch), REPEATS)
    vectors = encode(model, distinct)

    def neighbours(v: np.ndarray) -> np.ndarray:
        similarity = v @ v.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :10]

    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(neighbours(reference), neighbours(vectors))])
    ran_as = "int8" if precision == "int8" else precision_of(model)
    return {"precision": precision, "ran_as": ran_as, "texts": n, "encode_s": round(seconds, 2),
            "encode_cpu_s": round(cpu, 2),
            "texts_per_s": round(n / seconds, 1),
            "min_cosine_vs_fp32": round(float((vectors * reference).sum(axis=1).min()), 5),
            "recall_at_10_vs_fp32": round(float(recall), 4)}


def seed_generator(n: int, device: str = "cpu", bundle: Path | None = None) -> dict:
    """seed 000's EmbeddingGenerator: AutoTokenizer/AutoModel in fp32, batches of 64, mean pooling."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tasks.embed.models import model_path

    batch = texts(n, bundle)
    path = str(bundle / MODEL if bundle else model_path(MODEL))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).float().to(device).eval()

    def encode_all() -> list:
        out = []
        with torch.no_grad():
            for i in range(0, n, 64):
                enc = tokenizer(batch[i:i + 64], padding=True, truncation=True, max_length=512,
                                return_tensors="pt").to(device)
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                out.append(torch.nn.functional.normalize(pooled, dim=1).cpu().numpy())
        return out

    seconds, _, out = fastest(encode_all, REPEATS if device == "cpu" else 1)
    if not bundle:
        np.save(CACHE / "embed-seed.npy", np.concatenate(out))
    return {"texts": n, "encode_s": round(seconds, 2), "texts_per_s": round(n / seconds, 1)}


def users(scale: str) -> dict:
    import h5py
    import numpy as np
    import polars as pl

    from tasks.embed.embeddings import user_vectors

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


def gpu_figures(n: int, peak_tflops: float, bundle: Path = BUNDLE, device: str = "cuda") -> dict:
    """GPU children: ours (MiniLM-L6, bge-base) and the seed approach, all from the bundle."""
    if not (bundle / "texts.json.gz").exists():
        raise SystemExit(f"{bundle} is missing: run `python benchmarks/embed.py --bundle` on the CPU machine first")
    common = ("--gpu-texts", str(n), "--bundle", str(bundle), "--device", device)
    figures: dict = {}
    for name in (MODEL, BGE_BASE):
        gpu = run_child(__file__, "ours-cuda", *common, "--model", name)
        flops = 2 * gpu["non_embedding_params"] * gpu["tokens_per_text"] * gpu["texts_per_s"]
        figures[f"gpu_{name}"] = {**gpu, "share_of_fp16_peak": round(flops / (peak_tflops * 1e12), 4)}
    seed = run_child(__file__, "seed-cuda", *common)
    ours_gpu = figures[f"gpu_{MODEL}"]
    figures.update(gpu_wall_s=ours_gpu["encode_s"], gpu_peak_rss_mb=ours_gpu["peak_rss_mb"],
                   gpu_texts_per_s=ours_gpu["texts_per_s"], gpu_baseline_texts_per_s=seed["texts_per_s"],
                   gpu_baseline_wall_s=seed["encode_s"], gpu_speedup=round(seed["encode_s"] / ours_gpu["encode_s"], 2))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=4_000)
    parser.add_argument("--gpu-texts", type=int, default=200_000)
    parser.add_argument("--users-scale", default="25m", choices=["25m", "small"])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense FP16 peak (H100/H200 SXM)")
    parser.add_argument("--bundle", nargs="?", const=str(BUNDLE),
                        help="alone: write what a GPU machine needs, and stop; with --gpu-only: read it from there")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU figures, from the bundle")
    parser.add_argument("--child")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--device", default="cuda", help="of the GPU part (the tests run it on cpu)")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native",
                        help="avx2: hold torch, oneDNN and MKL to AVX2 code paths, as on a CPU without AVX512/AMX")
    args = parser.parse_args()
    if args.isa == "avx2":  # before torch loads, here and in every child
        os.environ.update(AVX2_ONLY)
    bundle = Path(args.bundle) if args.bundle else None
    if args.child == "ours-cpu":
        import sentence_transformers  # noqa: F401 - imported before the clock starts

        measure(lambda: ours(args.texts, "cpu"))
        return
    if args.child == "ours-cuda":
        import sentence_transformers  # noqa: F401

        measure(lambda: ours(args.gpu_texts, args.device, args.model, bundle))
        return
    if args.child and args.child.startswith("precision-"):
        import sentence_transformers  # noqa: F401

        measure(lambda: precision_figures(args.texts, args.child.removeprefix("precision-")))
        return
    if args.child in ("seed", "seed-cuda"):
        import transformers  # noqa: F401

        gpu = args.child == "seed-cuda"
        measure(lambda: seed_generator(args.gpu_texts if gpu else args.texts, args.device if gpu else "cpu", bundle))
        return
    if args.child == "users":
        import tasks.embed.embeddings  # noqa: F401

        measure(lambda: users(args.users_scale))
        return
    if args.gpu_only:
        figures = gpu_figures(args.gpu_texts, args.peak_tflops, bundle or BUNDLE, args.device)
        print(json.dumps({"benchmark": "embed-gpu", "model": MODEL, "wall_s": figures["gpu_wall_s"],
                          "peak_rss_mb": figures["gpu_peak_rss_mb"], "speedup": figures["gpu_speedup"], **figures}))
        return
    if bundle:
        mib = write_bundle(bundle, movie_texts_sample(prefer_25m=True))
        print(json.dumps({"bundle": str(bundle), "mib": round(mib, 1)}))
        return

    import numpy as np
    import torch

    from tasks.embed.models import native_bf16_cpu

    figures: dict = {"benchmark": "embed", "model": MODEL, "texts": args.texts, "cpu": cpu_model(),
                     "isa": "AVX2 code paths (torch, oneDNN, MKL held to AVX2)" if args.isa == "avx2" else "native",
                     "native_bf16": native_bf16_cpu()}
    ours_cpu = run_child(__file__, "ours-cpu", "--texts", str(args.texts))
    figures["auto_precision"] = ours_cpu["precision"]
    seed = run_child(__file__, "seed", "--texts", str(args.texts))
    user = run_child(__file__, "users", "--users-scale", args.users_scale)
    precisions = {p: run_child(__file__, f"precision-{p}", "--texts", str(args.texts)) for p in PRECISIONS}
    figures.update(
        wall_s=ours_cpu["encode_s"], cpu_s=ours_cpu["cpu_s"], peak_rss_mb=ours_cpu["peak_rss_mb"],
        texts_per_s=ours_cpu["texts_per_s"],
        baseline="seed 000 EmbeddingGenerator (transformers, batches of 64, mean pooling)",
        baseline_wall_s=seed["encode_s"], baseline_cpu_s=seed["cpu_s"], baseline_peak_rss_mb=seed["peak_rss_mb"],
        baseline_texts_per_s=seed["texts_per_s"], speedup=round(seed["encode_s"] / ours_cpu["encode_s"], 2),
        precisions={p: {k: f[k] for k in ("ran_as", "texts_per_s", "encode_cpu_s", "min_cosine_vs_fp32",
                                          "recall_at_10_vs_fp32")}
                    | {"speedup_vs_seed": round(f["texts_per_s"] / seed["texts_per_s"], 2)}
                    for p, f in precisions.items()},
        min_cosine_vs_baseline=round(float((np.load(CACHE / "embed-ours.npy") * np.load(CACHE / "embed-seed.npy"))
                                           .sum(axis=1).min()), 5),
        user_vectors_s=user["user_vectors_s"], user_vectors_users=user["users"],
        user_vectors_ratings=user["ratings_used"], user_vectors_peak_rss_mb=user["peak_rss_mb"])
    if torch.cuda.is_available():
        if not (BUNDLE / "texts.json.gz").exists():
            write_bundle(BUNDLE, movie_texts_sample(prefer_25m=True))
        figures.update(gpu_figures(args.gpu_texts, args.peak_tflops))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
