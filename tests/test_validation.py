"""Great Expectations suites: every suite passes on good generated data and fails, with the right
message, on data with one planted defect of each kind; the gate stops a flow before the loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from tasks.synthetic import datasets as synthetic
from tasks.ingest.movielens import ingest_release
from tasks.synthetic.templates import load_template, write_dataset
from tasks.validate.suites import first_failure, load_suites, validate


def write_h5(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=vectors.astype(np.float32))
        f.attrs.update(model="test", dim=vectors.shape[1], normalized=True)


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    from tasks.ingest.sample import generate

    base = tmp_path_factory.mktemp("validation")
    data = base / "data"
    release = generate("small", base / "release", seed=11)
    # Small releases have no genome; give this one a little, so the genome suites run too.
    movie_ids = pl.read_csv(release / "movies.csv")["movieId"].head(300).to_list()
    rng = np.random.default_rng(1)
    pl.DataFrame({"tagId": range(1, 41), "tag": [f"tag {i}" for i in range(1, 41)]}).write_csv(
        release / "genome-tags.csv")
    pl.DataFrame({"movieId": np.repeat(movie_ids, 40), "tagId": np.tile(np.arange(1, 41), len(movie_ids)),
                  "relevance": rng.beta(0.6, 3.0, 40 * len(movie_ids))}).write_csv(release / "genome-scores.csv")
    ingest_release(release, data / "processed")
    out = data / "synthetic"
    summary = synthetic.rating_summary(data / "processed" / "ratings.parquet", data / "processed" / "movies.parquet")
    synthetic.write_parquet(synthetic.profiles(summary["user_id"].to_numpy(), 42).join(summary, on="user_id"),
                     out / "users.parquet")
    synthetic.build_platforms(out / "platforms.parquet")
    media_ids = pl.read_parquet(data / "processed" / "movies.parquet")["media_id"].to_list()
    synthetic.write_parquet(synthetic.availability(media_ids), out / "availability.parquet")
    write_dataset(load_template(synthetic.CATALOG_TEMPLATE), 3_000, out / "media_catalog.parquet")
    (data / "embeddings").mkdir()
    vectors = np.random.default_rng(0).normal(size=(len(media_ids), 16))
    write_h5(data / "embeddings" / "media.h5", media_ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return data


@pytest.fixture()
def data(good_data, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(good_data, copy)
    return copy


def status(report: dict, suite: str) -> str:
    return next(s["status"] for s in report["suites"] if s["suite"] == suite)


def test_every_suite_passes_on_good_data(good_data):
    report = validate(good_data)
    # Store suites check loaded stores (tests/test_load_flow.py); on a data dir without loads they are absent.
    assert {s["suite"]: s["status"] for s in report["suites"]} == {
        s["name"]: "skipped (no dataset)" if s["meta"]["dataset"].startswith("stores/") else "pass" for s in load_suites()}
    assert report["critical_failures"] == 0 and first_failure(report) is None
    assert "movies" in (good_data / "reports" / "data_docs" / "index.html").read_text()
    on_disk = json.loads((good_data / "reports" / "validation_report.json").read_text())
    assert on_disk["suites"][0]["expectations"] and all("severity" in e for s in on_disk["suites"]
                                                         for e in s["expectations"])


def rewrite(path: Path, change) -> None:
    change(pl.read_parquet(path)).write_parquet(path)


DEFECTS = {
    "types": ("ratings", "expect_column_values_to_be_in_set(schema_problems) failed on 1 rows; "
                         "sample: ['rating: Float64, expected Float32']",
              lambda d: rewrite(d / "processed/ratings.parquet", lambda f: f.with_columns(pl.col("rating").cast(pl.Float64)))),
    "schema": ("movies", "sample: ['imdb_id: missing, expected String']",
               lambda d: rewrite(d / "processed/movies.parquet", lambda f: f.drop("imdb_id"))),
    "null": ("movies", "expect_column_values_to_not_be_null(title) failed on 1 rows",
             lambda d: rewrite(d / "processed/movies.parquet",
                               lambda f: f.with_columns(title=pl.when(pl.int_range(pl.len()) == 3).then(None)
                                                        .otherwise("title")))),
    "uniqueness": ("movies", "expect_column_values_to_be_unique(movie_id)",
                   lambda d: rewrite(d / "processed/movies.parquet", lambda f: pl.concat([f, f.head(1)]))),
    "half-star grid": ("ratings", "expect_column_values_to_be_between(off_grid)",
                       lambda d: rewrite(d / "processed/ratings.parquet",
                                         lambda f: f.with_columns(rating=pl.when(pl.int_range(pl.len()) == 5)
                                                                  .then(4.3).otherwise("rating").cast(pl.Float32)))),
    "plausible timestamps": ("ratings", "expect_column_values_to_be_between(min_timestamp)",
                             lambda d: rewrite(d / "processed/ratings.parquet",
                                               lambda f: f.with_columns(timestamp=pl.when(pl.int_range(pl.len()) == 0)
                                                                        .then(315532800).otherwise("timestamp")))),
    "referential integrity": ("ratings", "expect_column_values_to_be_between(unknown_movie)",
                              lambda d: rewrite(d / "processed/ratings.parquet",
                                                lambda f: f.with_columns(movie_id=pl.when(pl.int_range(pl.len()) == 0)
                                                                         .then(999_999_9).otherwise("movie_id")))),
    "row count against stats.json": ("ratings", "expect_column_values_to_be_between(rows_vs_stats)",
                                     lambda d: rewrite(d / "processed/ratings.parquet", lambda f: f.head(-10))),
    "empty tag": ("tags", "expect_column_values_to_be_between(empty_tags)",
                  lambda d: rewrite(d / "processed/tags.parquet",
                                    lambda f: f.with_columns(tag=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(" "))
                                                             .otherwise("tag")))),
    "genome rank": ("genome", "expect_column_values_to_be_between(rank) failed on 1 rows; sample: [11]",
                    lambda d: rewrite(d / "processed/genome_scores.parquet",
                                      lambda f: f.with_columns(rank=pl.when(pl.int_range(pl.len()) == 0).then(11)
                                                               .otherwise("rank").cast(pl.Int16)))),
    "genome movie": ("genome_integrity", "expect_column_values_to_be_between(unknown_movie)",
                     lambda d: rewrite(d / "processed/genome_scores.parquet",
                                       lambda f: f.with_columns(movie_id=pl.when(pl.int_range(pl.len()) == 0)
                                                                .then(9_999_999).otherwise("movie_id")))),
    "user key": ("users", "expect_column_values_to_be_unique(user_id)",
                 lambda d: rewrite(d / "synthetic/users.parquet",
                                   lambda f: f.with_columns(user_id=pl.when(pl.int_range(pl.len()) == 1)
                                                            .then(f["user_id"][0]).otherwise("user_id")))),
    "platform count": ("platforms", "expect_table_row_count_to_equal",
                       lambda d: rewrite(d / "synthetic/platforms.parquet", lambda f: f.head(7))),
    "free listing with a price": ("availability", "expect_column_values_to_be_between(priced_free_listings)",
                                  lambda d: rewrite(d / "synthetic/availability.parquet",
                                                    lambda f: f.with_columns(price_usd=pl.col("price_usd").fill_null(1.0)))),
    "catalog key": ("catalog", "expect_column_values_to_be_between(duplicate_ids)",
                    lambda d: rewrite(d / "synthetic/media_catalog.parquet",
                                      lambda f: f.with_columns(id=pl.when(pl.int_range(pl.len()) == 2)
                                                               .then(pl.lit(f["id"][0])).otherwise("id")))),
    "embedding NaN": ("embeddings", "expect_column_values_to_be_between(nan_or_inf)",
                      lambda d: _edit_h5(d, lambda v: v.__setitem__((0, 0), np.nan))),
    "embedding norm": ("embeddings", "expect_column_values_to_be_between(not_unit_norm)",
                       lambda d: _edit_h5(d, lambda v: v.__setitem__(1, v[1] * 3))),
    "profile per rated user": ("users_distribution", "expect_column_values_to_be_between(users_vs_ratings)",
                               lambda d: rewrite(d / "synthetic/users.parquet", lambda f: f.head(-1))),
}


def _edit_h5(data: Path, change) -> None:
    with h5py.File(data / "embeddings/media.h5", "r+") as f:
        vectors = f["embeddings"][:]
        change(vectors)
        f["embeddings"][:] = vectors


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_planted_defect_fails_its_suite_with_a_clear_message(data, defect):
    suite, message, plant = DEFECTS[defect]
    plant(data)
    report = validate(data)
    assert status(report, suite) == "fail"
    failure = first_failure(report)
    assert failure.startswith(f"suite {suite} (") and message in failure
    assert sum(s["status"] == "fail" for s in report["suites"]) == 1  # only the planted defect's suite fails


DRIFTS = {
    "archetype shares": ("users_distribution", lambda d: rewrite(
        d / "synthetic/users.parquet", lambda f: f.with_columns(archetype=pl.lit("casual").cast(f.schema["archetype"])))),
    "catalog type mix": ("catalog", lambda d: rewrite(
        d / "synthetic/media_catalog.parquet", lambda f: f.with_columns(type=pl.lit("video")))),
    "platform coverage": ("availability", lambda d: rewrite(
        d / "synthetic/availability.parquet", lambda f: f.filter(pl.col("platform_id").is_in(["netflix", "mubi"])))),
}


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_distribution_drift_is_a_warning_not_a_stop(data, drift):
    suite, plant = DRIFTS[drift]
    plant(data)
    report = validate(data)
    assert status(report, suite) == "warn" and report["warnings"] >= 1
    assert report["critical_failures"] == 0 and first_failure(report) is None


def test_gate_stops_the_flow_before_the_loads(prefect_server, store_env, data):
    from flows.full import full_flow
    from tasks.validate.suites import ValidationFailed

    DEFECTS["referential integrity"][2](data)
    with pytest.raises(ValidationFailed, match=r"suite ratings .*unknown_movie"):
        full_flow(data_dir=str(data), skip_ingest=True, skip_synthetic=True, skip_embed=True)
    assert not (data / "stores").exists()  # the flow never reached the load stages


def test_artifact_on_the_prefect_server(prefect_server, data):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter

    from flows.validate import validate_flow

    state = validate_flow(str(data), "synthetic", return_state=True)  # a fresh copy: validated now, not cached
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(  # this run's: other tests' runs wrote theirs too
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validation-synthetic"])),
            flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
    assert artifacts and "| users | pass |" in artifacts[0].data and "| movies |" not in artifacts[0].data


def test_validate_without_a_stage_lists_absent_datasets(prefect_server, data, capsys):
    """After an ingest-only run: the datasets present are validated, the others listed as absent;
    with --stage the stage's datasets stay required."""
    from flows.validate import main

    shutil.rmtree(data / "synthetic")
    shutil.rmtree(data / "embeddings", ignore_errors=True)
    assert main(["--data-dir", str(data)]) == 0
    lines = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["ratings"] == "pass" and lines["movies"] == "pass"
    assert lines["users"] == "absent" and lines["catalog"] == "absent"
    assert main(["--data-dir", str(data), "--stage", "synthetic"]) == 1
    assert "error: validation failed" in capsys.readouterr().err


def test_unchanged_data_is_not_validated_twice(prefect_server, data):
    from flows.validate import validate_flow

    report = Path(validate_flow(str(data), "ingest"))
    first = report.stat().st_mtime_ns
    assert Path(validate_flow(str(data), "ingest")) == report and report.stat().st_mtime_ns == first  # cached
    DEFECTS["referential integrity"][2](data)  # a changed file: validated again, and the defect found
    with pytest.raises(Exception, match="unknown_movie"):
        validate_flow(str(data), "ingest")


def test_a_cached_synthetic_validation_sees_a_changed_ingest(prefect_server, data):
    """The synthetic suites check users against the ratings: a change under processed/ alone must
    validate them again, not return the cached pass."""
    from flows.validate import validate_flow

    validate_flow(str(data), "synthetic")
    last_user = pl.read_parquet(data / "processed/ratings.parquet", columns=["user_id"])["user_id"].max()
    rewrite(data / "processed/ratings.parquet", lambda f: f.filter(pl.col("user_id") != last_user))
    with pytest.raises(Exception, match="users_vs_ratings"):
        validate_flow(str(data), "synthetic")
