"""Synthetic users, platform availability, the schema-template generator and the media catalog."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.synthetic.datasets import ARCHETYPES, CATALOG_TEMPLATE, COUNTRIES, PLATFORMS, availability, profiles, rating_summary
from tasks.synthetic.templates import TemplateError, generate_chunk, load_template, parse_template, write_dataset

ML_25M_USERS = np.arange(1, 162_542)


def chi_square(observed: np.ndarray, expected_shares: np.ndarray) -> float:
    expected = expected_shares / expected_shares.sum() * observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


@pytest.fixture(scope="module")
def all_users() -> pl.DataFrame:
    return profiles(ML_25M_USERS, seed=42)


def test_archetype_shares_follow_the_weights(all_users):
    names = [a.name for a in ARCHETYPES]
    counts = all_users["archetype"].value_counts().to_dict(as_series=False)
    observed = np.array([dict(zip(counts["archetype"], counts["count"]))[n] for n in names], dtype=float)
    # 6 degrees of freedom: 22.46 is the 0.1% critical value. Uniform archetypes (the old bug) give ~30,000.
    assert chi_square(observed, np.array([a.weight for a in ARCHETYPES])) < 22.46
    assert chi_square(observed, np.ones(len(names))) > 1_000


def test_profiles_depend_only_on_seed_and_user(all_users):
    some = np.array([1, 77, 5_000, 162_541])
    alone = profiles(some, seed=42)
    assert alone.equals(all_users.filter(pl.col("user_id").is_in(some.tolist())))
    assert profiles(some[::-1], seed=42).sort("user_id").equals(alone)  # order and company do not matter
    assert not profiles(some, seed=43).equals(alone)


def test_profiles_are_the_same_in_processes_with_other_hash_seeds(tmp_path):
    """Every value is a function of (seed, user id, purpose): not of PYTHONHASHSEED, which orders
    sets (Faker's it_IT cities came from one)."""
    import os
    import subprocess
    import sys

    script = ("import sys, numpy as np; from tasks.synthetic.datasets import profiles; "
              "profiles(np.arange(1, 20_001), seed=7).write_parquet(sys.argv[1])")
    frames = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"users-{hash_seed}.parquet"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd=Path(__file__).parents[1],
                       env={**os.environ, "PYTHONHASHSEED": hash_seed})
        frames.append(pl.read_parquet(out))
    first, second = frames
    assert set(first["country"]) == {c.code for c in COUNTRIES}  # every locale is in the comparison
    for country in sorted(set(first["country"])):
        a, b = (f.filter(pl.col("country") == country) for f in frames)
        for column in first.columns:
            assert a[column].equals(b[column]), f"{country}: {column} differs between hash seeds"


def test_profile_values_are_consistent(all_users):
    by_band = all_users.group_by("archetype").agg(pl.col("age_band").cast(pl.String).unique())
    bands = dict(zip(by_band["archetype"].cast(pl.String), by_band["age_band"]))
    assert set(bands["young_adult"]) <= {"18-24", "25-34"}
    assert set(bands["senior"]) <= {"55-64", "65+"}
    assert set(bands["family"]) <= {"35-44", "45-54"}
    devices = all_users.select(pl.sum_horizontal("device_tv", "device_laptop", "device_mobile"))
    assert np.allclose(devices.to_series().to_numpy(), 1.0, atol=1e-5)
    assert all_users.select(pl.col("^device_.*$|^watch_.*$").min()).min_horizontal().item() >= 0
    assert all_users["languages"].list.len().min() >= 1
    assert (all_users.filter(pl.col("archetype") == "international")["languages"].list.len() >= 2).all()
    assert all_users["name"].null_count() == 0 and all_users["city"].null_count() == 0
    # Flat columns and lists only: nothing a graph store cannot hold.
    assert not any(isinstance(dtype, pl.Struct) for dtype in all_users.schema.values())


def test_favourite_genres_come_from_own_ratings(tmp_path):
    pl.DataFrame({"movie_id": [1, 2, 3], "genres": [["Horror"], ["Comedy", "Drama"], ["Drama"]]},
                 schema={"movie_id": pl.Int32, "genres": pl.List(pl.String)}).write_parquet(tmp_path / "m.parquet")
    pl.DataFrame({"user_id": [1, 1, 1, 2, 2], "movie_id": [1, 2, 3, 2, 3], "rating": [5.0, 1.0, 1.0, 2.0, 1.0]},
                 schema={"user_id": pl.Int32, "movie_id": pl.Int32, "rating": pl.Float32}
                 ).write_parquet(tmp_path / "r.parquet")
    summary = rating_summary(tmp_path / "r.parquet", tmp_path / "m.parquet")
    rows = {r["user_id"]: r for r in summary.iter_rows(named=True)}
    assert rows[1]["favourite_genres"][0] == "Horror" and rows[1]["rating_count"] == 3
    assert rows[2]["favourite_genres"] == ["Drama", "Comedy"]  # nothing liked: the genres they rate most
    assert rows[2]["mean_rating"] == pytest.approx(1.5)


@pytest.fixture(scope="module")
def listings() -> tuple[list[str], pl.DataFrame]:
    media_ids = [f"ml_{i}" for i in range(1, 62_424)]
    return media_ids, availability(media_ids)


def test_availability_coverage_and_rates(listings):
    media_ids, frame = listings
    assert frame["media_id"].n_unique() / len(media_ids) == pytest.approx(0.837, abs=0.006)
    assert frame.height / len(media_ids) == pytest.approx(1.58, abs=0.02)
    shares = frame.group_by("platform_id").len().join(PLATFORMS, on="platform_id")
    assert np.allclose(shares["len"] / len(media_ids), shares["availability_rate"], atol=0.01)
    assert frame.select("media_id", "platform_id").is_duplicated().sum() == 0


def test_prices_and_listing_details(listings):
    _, frame = listings
    free = frame.filter(pl.col("platform_id") == "tv5monde")
    assert (free["offer_type"] == "free").all() and free["price_usd"].null_count() == free.height
    paid = frame.filter(pl.col("platform_id") != "tv5monde")
    assert paid["price_usd"].null_count() == 0 and (paid["price_usd"] > 0).all()
    assert frame["regions"].list.len().is_between(1, 3).all()
    assert frame["subtitle_languages"].list.len().is_between(2, 6).all()
    assert frame["audio_languages"].list.len().is_between(1, 3).all()
    not_4k = frame.filter(~pl.col("quality_options").list.contains("4K"))
    assert not not_4k["hdr"].any() and not not_4k["dolby_atmos"].any()
    uhd = frame.filter(pl.col("quality_options").list.contains("4K"))
    assert uhd["hdr"].mean() == pytest.approx(0.7, abs=0.03) and uhd["dolby_atmos"].mean() == pytest.approx(0.5, abs=0.03)


def test_availability_is_per_pair(listings):
    _, frame = listings
    alone = availability(["ml_4242"])
    assert alone.equals(frame.filter(pl.col("media_id") == "ml_4242"))


# --- templates and the catalog -----------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ([{"name": "x", "type": "colour"}], "field 'x': unknown type 'colour'"),
    ([{"name": "x", "type": "categorical", "values": ["a", "b"], "weights": [1]}], "field 'x': 1 weights for 2 values"),
    ([{"name": "x", "type": "integer", "min": 5, "max": 1}], "field 'x': min 5 > max 1"),
    ([{"name": "x", "type": "text", "min_words": 9, "max_words": 2}], "field 'x': min_words 9 > max_words 2"),
    ([{"name": "x", "type": "datetime", "start": "2024-01-01", "end": "2020-01-01"}], "field 'x': start"),
    ([{"name": "x", "type": "integer", "min": 1}], "field 'x': missing max"),
    ([{"name": "x", "type": "format", "template": "{nope}"}], "field 'x': template refers to {nope}"),
    ([{"name": "k", "type": "integer", "min": 1, "max": 2}, {"name": "x", "by": "k", "cases": {}}],
     "field 'x': by must name an earlier categorical field"),
    ([{"name": "k", "type": "categorical", "values": ["a"]},
      {"name": "x", "by": "k", "cases": {"b": {"type": "uuid"}}}], "field 'x': case 'b' is not a value of 'k'"),
    ([{"name": "x", "type": "uuid"}, {"name": "x", "type": "uuid"}], "field 'x': defined twice"),
])
def test_bad_templates_name_the_field(fields, message):
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_template({"name": "t", "fields": fields}, "t.yaml")


def test_bad_template_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nfields: [a: b: c]\n")
    with pytest.raises(TemplateError, match="broken.yaml: not valid YAML"):
        load_template(path)


def test_every_field_type(tmp_path):
    template = parse_template({"name": "demo", "fields": [
        {"name": "id", "type": "uuid"},
        {"name": "kind", "type": "categorical", "values": ["a", "b"], "weights": [0.9, 0.1]},
        {"name": "n", "type": "integer", "min": 3, "max": 5},
        {"name": "at", "type": "datetime", "start": "2020-01-01", "end": "2020-01-02"},
        {"name": "title", "type": "text", "min_words": 2, "max_words": 4},
        {"name": "body", "type": "paragraph", "min_sentences": 1, "max_sentences": 2},
        {"name": "tags", "type": "list", "element_type": "word", "min_length": 1, "max_length": 3},
        {"name": "who", "type": "name"},
        {"name": "only_b", "by": "kind", "cases": {"b": {"type": "integer", "min": 7, "max": 7}}},
        {"name": "text", "type": "format", "template": "{title} by {who} [{tags}] n={n}"},
    ]})
    frame = generate_chunk(template, 0, 5_000, seed=1)
    assert frame["id"].str.contains(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$").all()
    assert frame["id"].n_unique() == 5_000
    assert (frame["kind"] == "a").mean() == pytest.approx(0.9, abs=0.02)
    assert frame["n"].is_between(3, 5).all() and frame["n"].n_unique() == 3
    assert frame["at"].dt.date().cast(pl.String).unique().to_list() == ["2020-01-01"]
    assert frame["title"].str.split(" ").list.len().is_between(2, 4).all()
    assert frame["title"].str.slice(0, 1).str.contains("^[A-Z]$").all()
    assert frame["tags"].list.len().is_between(1, 3).all()
    assert (frame.filter(pl.col("kind") == "b")["only_b"] == 7).all()
    assert frame.filter(pl.col("kind") == "a")["only_b"].null_count() == (frame["kind"] == "a").sum()
    row = frame.row(0, named=True)
    assert row["text"] == f"{row['title']} by {row['who']} [{', '.join(row['tags'])}] n={row['n']}"


def test_catalog_type_mix_and_fields(tmp_path):
    out = write_dataset(load_template(CATALOG_TEMPLATE), 20_000, tmp_path / "media_catalog.parquet", seed=3)
    catalog = pl.read_parquet(out)
    shares = catalog["type"].value_counts(normalize=True)
    mix = dict(zip(shares["type"], shares["proportion"]))
    for kind, share in {"video": 0.4, "image": 0.3, "audio": 0.2, "document": 0.1}.items():
        assert mix[kind] == pytest.approx(share, abs=0.015)
    specific = {"video": ["duration", "resolution", "topic", "views", "likes"],
                "image": ["resolution", "category", "camera_model", "iso"],
                "audio": ["duration", "genre", "bitrate", "sample_rate"],
                "document": ["page_count", "word_count", "language"]}
    for kind, columns in specific.items():
        rows = catalog.filter(pl.col("type") == kind)
        for column in columns:
            assert rows[column].null_count() == 0, (kind, column)
        others = catalog.filter(pl.col("type") != kind)
        for column in set(columns) - {c for k, cs in specific.items() if k != kind for c in cs}:
            assert others[column].null_count() == others.height, column
    videos = catalog.filter(pl.col("type") == "video")
    assert videos["duration"].is_between(30, 7200).all() and videos["file_size"].min() >= 10 * 1024**2
    assert set(videos["resolution"].unique()) <= {"720p", "1080p", "4K", "8K"}
    assert (catalog.filter(pl.col("type") == "document")["language"] == "en").all()
    first = videos.row(0, named=True)
    assert first["content_text"].startswith(first["title"] + " " + first["description"])
    assert f"Video about {first['topic']} Duration: {first['duration']} seconds" in first["content_text"]
    assert catalog["id"].n_unique() == catalog.height
    assert catalog["content_text"].n_unique() == catalog.height


def test_catalog_is_identical_whatever_the_chunk_size(tmp_path):
    template = load_template(CATALOG_TEMPLATE)
    a = pl.read_parquet(write_dataset(template, 3_000, tmp_path / "a.parquet", seed=5, chunk_size=257))
    b = pl.read_parquet(write_dataset(template, 3_000, tmp_path / "b.parquet", seed=5, chunk_size=100_000))
    assert a.equals(b)
    # A prefix of a bigger catalog is the smaller catalog.
    assert generate_chunk(template, 0, 1_000, seed=5).equals(a.head(1_000))


def test_exports(tmp_path):
    out = write_dataset(load_template(CATALOG_TEMPLATE), 500, tmp_path / "media_catalog.parquet",
                        exports=("jsonl", "csv"))
    lines = (tmp_path / "media_catalog.jsonl").read_text().splitlines()
    assert len(lines) == 500 and json.loads(lines[0])["id"] == pl.read_parquet(out)["id"][0]
    csv = pl.read_csv(tmp_path / "media_catalog.csv")
    assert csv.height == 500 and "|" in csv["tags"][0]
    assert not list(tmp_path.glob(".*tmp"))


def test_synthetic_flow(prefect_server, small_release, tmp_path):
    from flows.ingest import ingest_flow
    from flows.synthetic import synthetic_flow

    data = tmp_path / "data"
    ingest_flow(str(small_release), str(data))
    written = synthetic_flow(str(data), catalog_size=1_500, seed=42, exports=["jsonl"])
    users = pl.read_parquet(written["users"][0])
    ratings = pl.read_parquet(data / "processed" / "ratings.parquet")
    assert sorted(users["user_id"]) == sorted(ratings["user_id"].unique())
    assert pl.read_parquet(written["catalog"][0]).height == 1_500
    assert Path(written["availability"][1]).with_suffix(".jsonl").exists()
    mtime = Path(written["users"][0]).stat().st_mtime_ns
    synthetic_flow(str(data), catalog_size=1_500, seed=42, exports=["jsonl"])
    assert Path(written["users"][0]).stat().st_mtime_ns == mtime  # cached: same inputs, same parameters


def test_synthetic_flow_needs_the_ingest(prefect_server, tmp_path):
    from flows.synthetic import synthetic_flow

    with pytest.raises(FileNotFoundError, match="run the ingest stage first"):
        synthetic_flow(str(tmp_path / "empty"))
