"""Embeddings with the real all-MiniLM-L6-v2 on tiny inputs: unit vectors, determinism, resume,
refresh, user-vector weighting, bad input."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from tasks.embed import embeddings
from tasks.embed.embeddings import encode_to_h5, movie_texts, quality, read_h5, user_vectors
from tasks.embed.models import EmbeddingError, encode, load_model, model_path, native_bf16_cpu, precision_of

TEXTS = [f"A {adj} film about {topic} and {thing}." for adj, topic, thing in zip(
    ["quiet", "loud", "slow", "tender", "grim", "funny", "bright", "dark", "strange", "gentle"] * 3,
    ["the sea", "a war", "love", "space", "a heist", "family", "music", "a ghost", "robots", "cooking"] * 3,
    ["friendship", "revenge", "time", "loss", "money", "trust", "fame", "memory", "power", "home"] * 3)]
TEXTS = [f"{t} Part {i}." for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def model():
    return load_model("all-MiniLM-L6-v2", "cpu")


def frame(texts=TEXTS) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"m{i}" for i in range(len(texts))], "text": texts})


def test_unit_vectors_deterministic_with_metadata(model, tmp_path):
    encode_to_h5(frame(), tmp_path / "a.h5", model, "all-MiniLM-L6-v2")
    encode_to_h5(frame(), tmp_path / "b.h5", model, "all-MiniLM-L6-v2")
    ids, a = read_h5(tmp_path / "a.h5")
    _, b = read_h5(tmp_path / "b.h5")
    assert ids == [f"m{i}" for i in range(len(TEXTS))] and a.shape == (len(TEXTS), 384) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, b)
    with h5py.File(tmp_path / "a.h5") as f:
        assert f.attrs["model"] == "all-MiniLM-L6-v2" and f.attrs["dim"] == 384 and f.attrs["normalized"]
        assert f.attrs["created_at"] and f["embeddings"].chunks is not None and "done" not in f
    assert not (tmp_path / "a.h5.partial").exists()


def test_half_precision_on_the_cpu_stays_close_to_fp32(model):
    import torch

    full = load_model("all-MiniLM-L6-v2", "cpu", precision="fp32", runtime="torch")
    assert next(full.parameters()).dtype == torch.float32 and precision_of(full) == "fp32"
    assert precision_of(model) == ("bf16 (OpenVINO)" if native_bf16_cpu() else "fp32 (OpenVINO)")
    torch_half = load_model("all-MiniLM-L6-v2", "cpu", runtime="torch")
    assert next(torch_half.parameters()).dtype == (torch.bfloat16 if native_bf16_cpu() else torch.float32)
    exact = encode(full, TEXTS)
    for half in (encode(model, TEXTS), encode(torch_half, TEXTS)):
        assert half.dtype == np.float32 and np.allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
        assert (half * exact).sum(axis=1).min() > 0.9999
    with pytest.raises(EmbeddingError, match="precision 'fp8'"):
        load_model("all-MiniLM-L6-v2", "cpu", precision="fp8")
    with pytest.raises(EmbeddingError, match="runtime 'onnx'"):
        load_model("all-MiniLM-L6-v2", "cpu", runtime="onnx")


def test_openvino_runtime_gives_torch_vectors_for_any_batch(model):
    """The batch is split over OpenVINO's parallel requests: one text, fewer texts than requests, an
    odd count, a text past the model's window and an empty one all come back in order, equal to
    torch's fp32 vectors (cosine >= 0.9999)."""
    full = load_model("all-MiniLM-L6-v2", "cpu", precision="fp32", runtime="torch")
    fp32 = load_model("all-MiniLM-L6-v2", "cpu", precision="fp32")
    assert precision_of(fp32) == "fp32 (OpenVINO)"
    texts = TEXTS + ["word " * 400, "", "Toy Story (1995)"]
    for count in (1, 2, 3, 7, len(texts)):
        exact = encode(full, texts[:count])
        for ours in (model, fp32):
            assert (encode(ours, texts[:count], batch_size=5) * exact).sum(axis=1).min() > 0.9999
    assert (encode(fp32, texts) * encode(full, texts)).sum(axis=1).min() > 0.99999  # fp32 is fp32


def test_openvino_sends_no_telemetry_and_starts_no_process():
    """With openvino-telemetry installed, OpenVINO's model conversion sends usage events to Google
    Analytics from a forked process (its consent is assumed without a file in the user's home); such a
    fork deadlocked a threaded flow run here. The lock leaves the package out (Makefile), and OpenVINO
    falls back to its no-op stub."""
    import importlib.util

    import psutil
    from openvino.tools.ovc import telemetry_utils

    assert importlib.util.find_spec("openvino_telemetry") is None
    assert not [line for line in (ROOT / "requirements.lock").read_text().splitlines()
                if line.startswith("openvino-telemetry==")]
    assert telemetry_utils.tm.__name__ == "openvino.tools.ovc.telemetry_stub"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    encode(load_model("all-MiniLM-L6-v2", "cpu", precision="fp32"), TEXTS[:3])
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_openvino_is_not_used_where_its_telemetry_is_installed(monkeypatch, caplog):
    """A machine that installed the package by other means than the lock: torch, and how to fix it."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: object() if name == "openvino_telemetry" else find_spec(name, *args))
    with caplog.at_level(logging.WARNING, logger="tasks.embed.models"):
        model = load_model("all-MiniLM-L6-v2", "cpu", precision="fp32")
    assert precision_of(model) == "fp32" and "pip uninstall openvino-telemetry" in caplog.text


def test_a_model_openvino_cannot_convert_is_encoded_by_torch(monkeypatch, caplog):
    import openvino

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    with caplog.at_level(logging.WARNING, logger="tasks.embed.models"):
        fallback = load_model("all-MiniLM-L6-v2", "cpu", precision="fp32")
    assert "OpenVINO cannot run BertModel (unsupported operation): encoding with torch" in caplog.text
    assert precision_of(fallback) == "fp32"
    exact = encode(load_model("all-MiniLM-L6-v2", "cpu", precision="fp32", runtime="torch"), TEXTS)
    assert (encode(fallback, TEXTS) * exact).sum(axis=1).min() > 0.99999


def test_resume_after_interruption_matches_a_full_run(model, tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "CHUNK_ROWS", 8)
    encode_to_h5(frame(), tmp_path / "full.h5", model, "all-MiniLM-L6-v2")
    reported: list[int] = []

    def killed_in_the_third_chunk(done: int, total: int) -> None:  # progress is reported before a chunk is written
        reported.append(done)
        if len(reported) == 3:
            raise KeyboardInterrupt("killed mid-run")

    with pytest.raises(KeyboardInterrupt):
        encode_to_h5(frame(), tmp_path / "cut.h5", model, "all-MiniLM-L6-v2", progress=killed_in_the_third_chunk)
    assert (tmp_path / "cut.h5.partial").exists() and not (tmp_path / "cut.h5").exists()
    counts = encode_to_h5(frame(), tmp_path / "cut.h5", model, "all-MiniLM-L6-v2")
    assert counts["resumed"] == 16 and counts["encoded"] == len(TEXTS) - 16
    assert np.allclose(read_h5(tmp_path / "cut.h5")[1], read_h5(tmp_path / "full.h5")[1], atol=1e-6)


def test_refresh_re_encodes_only_what_changed(model, tmp_path):
    path = tmp_path / "media.h5"
    encode_to_h5(frame(), path, model, "all-MiniLM-L6-v2")
    _, before = read_h5(path)
    changed = list(TEXTS)
    changed[7] = "An entirely different story about mountains."
    counts = encode_to_h5(frame(changed + ["A brand new item."]), path, model, "all-MiniLM-L6-v2")
    assert (counts["encoded"], counts["carried_over"]) == (2, len(TEXTS) - 1)
    ids, after = read_h5(path)
    assert len(ids) == len(TEXTS) + 1
    unchanged = [i for i in range(len(TEXTS)) if i != 7]
    assert np.array_equal(after[unchanged], before[unchanged])
    assert not np.allclose(after[7], before[7])


def write_catalog(data: Path, texts: list[str]) -> None:
    (data / "synthetic").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": [f"c{i:03d}" for i in range(len(texts))], "content_text": texts}).write_parquet(
        data / "synthetic" / "media_catalog.parquet")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_a_set_is_shards_under_one_index_that_reruns_nothing_unchanged_and_rebuilds_what_broke(model, tmp_path):
    """30 texts in shards of 8: one index over four parts (a virtual dataset, not a copy); a rerun
    plans no shard; one changed text re-embeds exactly one shard, and encodes one text in it; a part
    with a changed vector or cut short is found and embedded again; a missing part stops every reader."""
    from tasks.embed.shards import manifest
    from tasks.embed.tasks import embed_shards, index_set, plan_set
    from tasks.errors import StaleInputs

    data, name = tmp_path / "data", "all-MiniLM-L6-v2"
    write_catalog(data, TEXTS)

    def run() -> tuple[list, list]:
        shards, todo = plan_set(data, "catalog", name, 8)
        embed_shards(data, todo, name, "cpu", 256, log=lambda _: None)
        index_set(data, "catalog", shards, todo, name, 1.0, model)
        return shards, todo

    shards, todo = run()
    assert [(s.index, s.start, s.stop) for s in shards] == [(0, 0, 8), (1, 8, 16), (2, 16, 24), (3, 24, 30)]
    assert todo == shards
    index = data / "embeddings" / "catalog.h5"
    ids, vectors = read_h5(index)
    assert ids == sorted(ids) == [f"c{i:03d}" for i in range(30)]
    encode_to_h5(frame(TEXTS), tmp_path / "whole.h5", model, name)  # one file, one process: the reference
    assert cosines(vectors, read_h5(tmp_path / "whole.h5")[1]).min() >= 0.9999
    with h5py.File(index) as f:
        assert f["embeddings"].is_virtual and len(f["embeddings"].virtual_sources()) == 4
    assert index.stat().st_size < vectors.nbytes / 2  # the index holds no copy of the vectors
    assert [e["file"] for e in manifest(index)] == [f"catalog/part-{i:05d}.h5" for i in range(4)]

    assert plan_set(data, "catalog", name, 8)[1] == []  # unchanged: nothing to embed
    stamp = index.stat().st_mtime_ns
    run()
    assert index.stat().st_mtime_ns == stamp  # nor an index rewritten (what later stages cache on)

    changed = list(TEXTS)
    changed[10] = "A brand new documentary about lighthouses."
    write_catalog(data, changed)
    _, todo = run()
    assert [s.index for s in todo] == [1]
    stats = json.loads((data / "embeddings" / "stats.json").read_text())["catalog"]
    assert (stats["shards_run"], stats["encoded"], stats["carried_over"]) == (1, 1, 7)
    new_ids, new_vectors = read_h5(index)
    assert new_ids == ids and np.array_equal(np.delete(new_vectors, 10, 0), np.delete(vectors, 10, 0))
    assert cosines(new_vectors[10:11], vectors[10:11])[0] < 0.9

    parts = data / "embeddings" / "catalog"
    with h5py.File(parts / "part-00002.h5", "r+") as f:  # a flipped vector, its seal left as it was
        f["embeddings"][3] = -f["embeddings"][3]
    whole = (parts / "part-00003.h5").read_bytes()
    (parts / "part-00003.h5").write_bytes(whole[: len(whole) // 2])  # cut short
    _, todo = run()
    assert [s.index for s in todo] == [2, 3]
    assert cosines(read_h5(index)[1], new_vectors).min() >= 0.9999

    (parts / "part-00000.h5").unlink()
    with pytest.raises(StaleInputs, match="part-00000.h5 is missing"):
        read_h5(index)


def test_bad_input(model, tmp_path):
    with pytest.raises(EmbeddingError, match="1 empty text.*'m1'"):
        encode_to_h5(frame(["fine", "   "]), tmp_path / "x.h5", model, "all-MiniLM-L6-v2")
    long_text = " ".join(["word"] * 5_000)
    counts = encode_to_h5(frame(["short", long_text]), tmp_path / "long.h5", model, "all-MiniLM-L6-v2")
    assert counts["truncated"] == 1
    assert np.allclose(np.linalg.norm(read_h5(tmp_path / "long.h5")[1], axis=1), 1.0, atol=1e-5)
    with pytest.raises(EmbeddingError, match="unknown model 'no-such-model'"):
        model_path("no-such-model")


def test_unknown_model_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(EmbeddingError, match=r"'BAAI/bge-base-en-v1.5' is not available offline.*huggingface-cli"):
        model_path("BAAI/bge-base-en-v1.5", tmp_path / "models")
    (tmp_path / "models" / "bge-base-en-v1.5").mkdir(parents=True)
    assert model_path("BAAI/bge-base-en-v1.5", tmp_path / "models") == tmp_path / "models" / "bge-base-en-v1.5"


def write_vectors(path, ids, vectors):
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=np.asarray(vectors, dtype=np.float32))
        f.attrs["model"] = "test"


def expected_user_vectors(ratings: pl.DataFrame, movies: list[str], media: np.ndarray, centre=None) -> dict:
    """The definition, user by user: weights (r/5)^2, the weighted mean of the rated movies' vectors
    less the centre (the same mean over all ratings), normalised."""
    col = {int(m.removeprefix("ml_")): i for i, m in enumerate(movies)}
    rows = [(u, col[m], (r / 5) ** 2) for u, m, r in ratings.iter_rows() if m in col]
    if centre is None:
        centre = sum(w * media[c] for _, c, w in rows) / sum(w for *_, w in rows)
    result = {}
    for user in sorted({u for u, *_ in rows}):
        mine = [(c, w) for u, c, w in rows if u == user]
        v = sum(w * media[c] for c, w in mine) / sum(w for _, w in mine) - centre
        result[str(user)] = v / np.linalg.norm(v)
    return result


def test_user_vectors_are_the_weighted_taste_less_the_average(tmp_path):
    write_vectors(tmp_path / "media.h5", ["ml_1", "ml_2", "ml_3"], np.eye(3))
    ratings = pl.DataFrame({"user_id": [1, 1, 2, 2, 3, 3, 4], "movie_id": [1, 2, 1, 2, 3, 1, 99],
                            "rating": [5.0, 0.5, 0.5, 5.0, 4.0, 1.0, 4.0]},
                           schema={"user_id": pl.Int32, "movie_id": pl.Int32, "rating": pl.Float32})
    ratings.write_parquet(tmp_path / "ratings.parquet")
    counts = user_vectors(tmp_path / "ratings.parquet", tmp_path / "media.h5", tmp_path / "users.h5")
    ids, vectors = read_h5(tmp_path / "users.h5")
    by_user = dict(zip(ids, vectors))
    assert counts == {"users": 3, "users_without_vector": 1, "ratings_used": 6,  # user 4 rated no embedded movie
                      "computed": 3, "carried_over": 0, "centre_kept": False}
    for user, vector in expected_user_vectors(ratings, ["ml_1", "ml_2", "ml_3"], np.eye(3)).items():
        assert np.allclose(by_user[user], vector, atol=1e-6)
    assert by_user["1"] @ by_user["2"] < -0.5  # opposite tastes point apart
    assert np.argmax(by_user["3"]) == 2  # the one who liked movie 3 points at it most
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_a_refresh_computes_only_the_affected_user_vectors(tmp_path):
    """Users whose ratings or rated movies' vectors changed are computed again, the others kept, on the
    kept centre; a change that moves the centre further recomputes everyone."""
    rng = np.random.default_rng(0)
    movies = [f"ml_{m}" for m in range(1, 21)]
    media = rng.normal(size=(20, 8)).astype(np.float32)
    write_vectors(tmp_path / "media.h5", movies, media)
    ratings = pl.DataFrame({"user_id": np.repeat(np.arange(1, 31), 4),
                            "movie_id": np.concatenate([rng.choice(np.arange(2, 21), 4, replace=False)
                                                        for _ in range(30)]),
                            "rating": rng.choice([3.5, 4.0, 5.0], 120)},
                           schema={"user_id": pl.Int32, "movie_id": pl.Int32, "rating": pl.Float32})
    # Only users 3 and 7 rated movie 1, lowly: its share of the centre is small.
    ratings = pl.concat([ratings, pl.DataFrame({"user_id": [3, 7], "movie_id": [1, 1], "rating": [0.5, 0.5]},
                                               schema=ratings.schema)])
    ratings.write_parquet(tmp_path / "ratings.parquet")
    first = user_vectors(tmp_path / "ratings.parquet", tmp_path / "media.h5", tmp_path / "users.h5")
    assert (first["computed"], first["carried_over"]) == (30, 0)
    again = user_vectors(tmp_path / "ratings.parquet", tmp_path / "media.h5", tmp_path / "users.h5")
    assert (again["computed"], again["centre_kept"]) == (0, True)
    before = dict(zip(*read_h5(tmp_path / "users.h5")))

    media[0] = rng.normal(size=8)  # movie 1's text changed; user 12 rated it too
    write_vectors(tmp_path / "media.h5", movies, media)
    changed = pl.concat([ratings, pl.DataFrame({"user_id": [12], "movie_id": [1], "rating": [0.5]},
                                               schema=ratings.schema)])
    changed.write_parquet(tmp_path / "ratings.parquet")
    counts = user_vectors(tmp_path / "ratings.parquet", tmp_path / "media.h5", tmp_path / "users.h5")
    assert (counts["computed"], counts["carried_over"], counts["centre_kept"]) == (3, 27, True)  # users 3, 7, 12
    with h5py.File(tmp_path / "users.h5") as f:
        centre = f["centre"][:]
    after = dict(zip(*read_h5(tmp_path / "users.h5")))
    expected = expected_user_vectors(changed, movies, media, centre)
    for user, vector in after.items():
        if user in ("3", "7", "12"):
            assert np.allclose(vector, expected[user], atol=1e-5)
        else:
            assert np.array_equal(vector, before[user])  # carried over as it was

    # Many new ratings of movie 1 move the centre: every user is computed again, on the new centre.
    pl.concat([changed, pl.DataFrame({"user_id": np.arange(1, 31), "movie_id": [1] * 30, "rating": [5.0] * 30},
                                     schema=ratings.schema)]).unique(["user_id", "movie_id"], keep="last")\
        .write_parquet(tmp_path / "ratings.parquet")
    moved = user_vectors(tmp_path / "ratings.parquet", tmp_path / "media.h5", tmp_path / "users.h5")
    assert (moved["computed"], moved["centre_kept"]) == (30, False)
    user_vectors(tmp_path / "ratings.parquet", tmp_path / "media.h5", tmp_path / "fresh.h5")
    assert np.allclose(read_h5(tmp_path / "users.h5")[1], read_h5(tmp_path / "fresh.h5")[1], atol=1e-6)


def test_movie_texts_follow_the_seed(tmp_path):
    pl.DataFrame({"media_id": ["ml_1", "ml_2"], "title": ["Toy Story", "Babylon 5"], "year": [1995, None],
                  "genres": [["Adventure", "Animation"], []]},
                 schema={"media_id": pl.String, "title": pl.String, "year": pl.Int16, "genres": pl.List(pl.String)}
                 ).write_parquet(tmp_path / "movies.parquet")
    pl.DataFrame({"media_id": ["ml_1", "ml_1"], "tag": ["toys", "pixar"], "rank": [2, 1]},
                 schema={"media_id": pl.String, "tag": pl.String, "rank": pl.Int16}
                 ).write_parquet(tmp_path / "genome_scores.parquet")
    texts = dict(movie_texts(tmp_path).iter_rows())
    assert texts["ml_1"] == "Toy Story. (1995). Genres: Adventure, Animation. Themes: pixar, toys"
    assert texts["ml_2"] == "Babylon 5."


def test_quality_metrics(model, tmp_path):
    encode_to_h5(frame(), tmp_path / "q.h5", model, "all-MiniLM-L6-v2")
    metrics = quality(tmp_path / "q.h5", model, TEXTS)
    assert metrics["nan"] == metrics["inf"] == 0 and metrics["dim"] == 384
    assert metrics["norm_min"] > 0.999 and metrics["unique_ratio"] == 1.0
    assert metrics["near_duplicate_similarity"] > metrics["random_pair_similarity"] + 0.1
    repeated = pl.DataFrame({"id": [f"x{i}" for i in range(40)], "text": ["The same text."] * 20 + TEXTS[:20]})
    encode_to_h5(repeated, tmp_path / "repeated.h5", model, "all-MiniLM-L6-v2")
    assert quality(tmp_path / "repeated.h5")["unique_ratio"] == pytest.approx(21 / 40)


def test_auto_precision_is_fp32_on_avx2_code_paths():
    """Torch held to AVX2 (as on a CPU without AVX512/AMX) emulates bf16, slower than fp32: auto picks fp32."""
    script = ("import torch; from tasks.embed.models import load_model, native_bf16_cpu; "
              "from tasks.embed.models import precision_of; "
              "m = load_model('all-MiniLM-L6-v2', 'cpu'); print(native_bf16_cpu(), precision_of(m).split()[0])")
    held = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"})
    assert held.stdout.split() == ["False", "fp32"]
    native = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert native.stdout.split() == (["True", "bf16"] if native_bf16_cpu() else ["False", "fp32"])


def test_model_dir_setting_is_where_models_are_found(tmp_path, monkeypatch):
    from flows.common import load_settings, preflight

    name = "paraphrase-multilingual-MiniLM-L12-v2"  # not in a package: MG_MODEL_DIR or the HF cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(EmbeddingError, match="not available offline"):
        preflight(load_settings(model=name), embed=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / name).symlink_to(model_path("all-MiniLM-L6-v2"))  # a stand-in with the same shape
    monkeypatch.setenv("MG_MODEL_DIR", str(tmp_path / "models"))
    settings = load_settings(model=name)
    assert settings.model_dir == tmp_path / "models"
    preflight(settings, embed=True)
    assert load_model(name, "cpu", settings.model_dir).encode(["a film"]).shape == (1, 384)


def test_movie_texts_read_article_last_titles_naturally(tmp_path):
    from tasks.ingest.movielens import ingest_release
    from tests.test_ingest import write_release

    ingest_release(write_release(tmp_path / "rel"), tmp_path / "processed")
    texts = dict(movie_texts(tmp_path / "processed").iter_rows())
    assert texts["ml_2"].startswith("The American President. (1995).")
    titles = pl.read_parquet(tmp_path / "processed" / "movies.parquet", columns=["movie_id", "title"]).rows()
    assert (2, "American President, The") in titles  # the data keeps MovieLens' form


def test_embed_flow(prefect_server, tmp_path, monkeypatch):
    from flows.embed import embed_flow
    from tasks.ingest.movielens import ingest_release
    from tests.test_ingest import write_release

    data = tmp_path / "data"
    ingest_release(write_release(tmp_path / "rel"), data / "processed")
    # The flow finds a model that no package carries in MG_MODEL_DIR.
    name = "paraphrase-multilingual-MiniLM-L12-v2"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / name).symlink_to(model_path("all-MiniLM-L6-v2"))
    monkeypatch.setenv("MG_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    records: list[logging.LogRecord] = []  # Prefect's loggers do not propagate to pytest's root handler
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logging.getLogger("prefect").addHandler(handler)
    try:
        written = embed_flow(str(data), model=name, device="cpu")
    finally:
        logging.getLogger("prefect").removeHandler(handler)
    with h5py.File(written["media"]) as f:
        assert f.attrs["model"] == name
    # Progress: done/total with a rate and an ETA or the end.
    assert any("8/8 texts (100%)" in r.getMessage() and "texts/s" in r.getMessage() for r in records)
    ids, media = read_h5(written["media"])
    assert len(ids) == 8 and media.shape == (8, 384)
    users, vectors = read_h5(written["users"])
    assert sorted(users) == ["1", "2"] and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    stats = json.loads((data / "embeddings" / "stats.json").read_text())
    assert stats["media"]["encoded"] == 8 and stats["users"]["users"] == 2 and stats["media"]["quality"]["nan"] == 0


# The GPU machine has torch and sentence-transformers but none of the pipeline's stack: the GPU
# benchmark must run from its bundle alone, and the bundle must fit what one device call carries.
ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_from_its_bundle_alone(tmp_path):
    from benchmarks.embed import BGE_BASE, write_bundle

    bundle = tmp_path / "gpu"
    mib = write_bundle(bundle, TEXTS)
    assert 40 < mib < 60, f"the GPU bundle is {mib:.1f} MiB: one device call carries at most 64"
    missing = tmp_path / "missing"  # shadows the stack the GPU machine lacks, in every child process too
    for name in ("polars", "prefect", "h5py", "pydantic_settings"):
        (missing / name).mkdir(parents=True)
        (missing / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')")
    command = ["benchmarks/embed.py", "--gpu-only", "--device", "cpu", "--gpu-texts", "40", "--bundle", str(bundle)]
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": str(missing), "HF_HOME": str(tmp_path / "empty-hf-home")})
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    minilm, bge = figures["gpu_all-MiniLM-L6-v2"], figures[f"gpu_{BGE_BASE}"]
    assert minilm["texts"] == bge["texts"] == 40 and minilm["weights"] == "real" and bge["weights"].startswith("random")
    assert minilm["min_cosine_vs_cpu_fp32"] > 0.999  # the fp16 weights agree with the fp32 reference
    assert minilm["non_embedding_params"] < 12_000_000 < 80_000_000 < bge["non_embedding_params"]  # L6-384, BERT-base
    assert figures["gpu_baseline_texts_per_s"] > 0 and figures["speedup"] == figures["gpu_speedup"] > 0


def test_a_query_is_embedded_without_torch_as_the_embed_stage_embeds_it(model, tmp_path):
    """Search embeds its text with numpy's BERT forward pass: the embed stage's vectors (cosine >=
    0.9999, whatever precision the stage ran in), a text longer than the model's limit cut like
    sentence-transformers cuts it, and no torch, sentence-transformers or Prefect imported."""
    from tasks.embed.query import BertQueryEncoder, supported

    path = model_path("all-MiniLM-L6-v2")
    assert supported(path) and not supported(tmp_path)
    queries = ["space adventure", "Ünïcode café: 東京の夜", " ".join(TEXTS) * 3, TEXTS[3]]
    ours = np.stack([BertQueryEncoder(path).encode(q) for q in queries])
    for reference in (model, load_model("all-MiniLM-L6-v2", "cpu", precision="fp32")):
        cosines = np.sum(ours * encode(reference, queries), axis=1)
        assert cosines.min() >= 0.9999, cosines
    code = ("import sys; from tasks.settings import Settings; from tasks.query.search import embed_query; "
            "import flows.search; v = embed_query(Settings(_env_file=None), 'space adventure'); "
            "print(len(v), sorted(m for m in ('torch', 'sentence_transformers', 'prefect', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out == ["384", "[]"]
