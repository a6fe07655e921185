"""Great Expectations validation of every dataset, with a gate before the loads.

Suites are files in expectations/<suite>.json (GX's suite JSON plus `meta`): `meta.dataset` names
the file under the data dir, `meta.batch` says how GX sees it:
- "rows": the Parquet file itself (only the columns the expectations name), every row checked;
- "aggregates": one row of figures that Polars computes over the whole file (AGGREGATES below), for
  data too large to hand to pandas (25M ratings) or checks that span files (referential integrity,
  distributions, row counts against stats.json); GX checks those figures.
Results go to DIR/reports/validation_report.json and GX Data Docs (DIR/reports/data_docs/index.html).
Every expectation has `meta.severity`: a failed "critical" one stops the flow before any load, with
the suite, the expectation and sample offending values; a failed "warning" is reported and the run
goes on. A suite whose dataset is absent is skipped unless it is required (`meta.optional` false).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from tasks.errors import PipelineError
from tasks.files import atomic_output
from tasks.ingest.movielens import HALF_STARS
from tasks.stores import STORES
from tasks.synthetic.datasets import ARCHETYPES, CATALOG_TEMPLATE
from tasks.synthetic.templates import load_template

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
ARCHETYPE_WEIGHTS = {a.name: a.weight for a in ARCHETYPES}


def _type_mix() -> dict[str, float]:
    """The catalog template's own type weights: the distribution the catalog must show."""
    kind = next(f for f in load_template(CATALOG_TEMPLATE).fields if f["name"] == "type")
    weights = kind.get("weights") or [1] * len(kind["values"])
    return {value: w / sum(weights) for value, w in zip(kind["values"], weights)}


class ValidationFailed(PipelineError, RuntimeError):
    """A critical expectation failed; nothing may be loaded."""


def _against_stats(row: dict, data: Path, key: str) -> dict:
    """Adds rows_vs_stats: the file's row count minus what the ingest's stats.json says it wrote."""
    stats = data / "processed" / "stats.json"
    expected = json.loads(stats.read_text())["files"].get(key, {}).get("rows_written") if stats.exists() else None
    return {**row, "rows_vs_stats": 0 if expected is None else row["rows"] - expected}


def _movie_ids(data: Path) -> pl.Series:
    return pl.read_parquet(data / "processed" / "movies.parquet", columns=["movie_id"])["movie_id"]


def _ratings(data: Path) -> dict:
    lf = pl.scan_parquet(data / "processed" / "ratings.parquet")
    known = _movie_ids(data).implode()
    row = lf.select(
        rows=pl.len(),
        null_keys=pl.any_horizontal(pl.col("user_id", "movie_id", "rating", "timestamp").is_null()).sum(),
        off_grid=(~pl.col("rating").is_in(HALF_STARS)).sum(),
        unknown_movie=(~pl.col("movie_id").is_in(known)).sum(),
        # One int64 key per pair: far cheaper to count distinct than a struct column.
        duplicate_pairs=pl.len() - (pl.col("user_id").cast(pl.Int64) * 2**32 + pl.col("movie_id")).n_unique(),
        min_timestamp=pl.col("timestamp").min(), max_timestamp=pl.col("timestamp").max(),
    ).collect(engine="streaming").row(0, named=True)
    return _against_stats(row, data, "ratings")


def _tags(data: Path) -> dict:
    lf = pl.scan_parquet(data / "processed" / "tags.parquet")
    row = lf.select(
        rows=pl.len(),
        null_keys=pl.any_horizontal(pl.col("user_id", "movie_id", "timestamp").is_null()).sum(),
        empty_tags=(pl.col("tag").is_null() | (pl.col("tag").str.strip_chars() == "")).sum(),
        unknown_movie=(~pl.col("movie_id").is_in(_movie_ids(data).implode())).sum(),
    ).collect(engine="streaming").row(0, named=True)
    return _against_stats(row, data, "tags")


def _genome_integrity(data: Path) -> dict:
    lf = pl.scan_parquet(data / "processed" / "genome_scores.parquet")
    return lf.select(unknown_movie=(~pl.col("movie_id").is_in(_movie_ids(data).implode())).sum()).collect().row(
        0, named=True)


def _share_error(shares: dict[str, float], expected: dict[str, float], n: int) -> int:
    """How many categories miss their share by more than 0.02 plus four standard errors."""
    misses = 0
    for key, p in expected.items():
        tolerance = 0.02 + 4 * np.sqrt(p * (1 - p) / max(n, 1))
        misses += abs(shares.get(key, 0.0) - p) > tolerance
    return int(misses)


def _users_distribution(data: Path) -> dict:
    users = pl.read_parquet(data / "synthetic" / "users.parquet", columns=["user_id", "archetype"])
    shares = users["archetype"].cast(pl.String).value_counts(normalize=True)
    rated = pl.scan_parquet(data / "processed" / "ratings.parquet").select(pl.col("user_id").n_unique()).collect()
    return {"archetype_share_error_over_tolerance":
            _share_error(dict(zip(shares["archetype"], shares["proportion"])), ARCHETYPE_WEIGHTS, users.height),
            "users_vs_ratings": users.height - rated.item()}


def _availability(data: Path) -> dict:
    listings = pl.read_parquet(data / "synthetic" / "availability.parquet",
                               columns=["media_id", "platform_id", "offer_type", "price_usd"])
    media = pl.read_parquet(data / "processed" / "movies.parquet", columns=["media_id"])["media_id"]
    return {
        "priced_free_listings": listings.filter((pl.col("offer_type") == "free") & pl.col("price_usd").is_not_null()).height,
        "unpriced_paid_listings": listings.filter((pl.col("offer_type") != "free") & pl.col("price_usd").is_null()).height,
        "duplicate_pairs": listings.height - listings.select("media_id", "platform_id").n_unique(),
        "unknown_media": listings.filter(~pl.col("media_id").is_in(media.implode())).height,
        "coverage": listings["media_id"].n_unique() / max(len(media), 1),
        "platforms_per_movie": listings.height / max(len(media), 1),
    }


def _catalog(data: Path) -> dict:
    lf = pl.scan_parquet(data / "synthetic" / "media_catalog.parquet")
    mix = _type_mix()
    row = lf.select(rows=pl.len(), duplicate_ids=pl.len() - pl.col("id").n_unique(),
                    empty_content_text=(pl.col("content_text").is_null() | (pl.col("content_text") == "")).sum(),
                    unknown_types=(~pl.col("type").is_in(list(mix))).sum()).collect().row(0, named=True)
    shares = lf.select("type").collect()["type"].value_counts(normalize=True)
    row["type_share_error_over_tolerance"] = _share_error(dict(zip(shares["type"], shares["proportion"])), mix,
                                                         row["rows"])
    return row


def _embeddings(data: Path) -> dict:
    from tasks.embed.embeddings import open_vectors

    folder = data / "embeddings"
    stats = json.loads((folder / "stats.json").read_text()) if (folder / "stats.json").exists() else {}
    row = {"nan_or_inf": 0, "not_unit_norm": 0, "dim_mismatch": 0, "ids_vs_rows": 0, "unique_ratio": 1.0,
           "similar_not_closer": 0}
    for path in sorted(folder.glob("*.h5")):
        with open_vectors(path) as f:  # a set's index: every part present and as its manifest says
            vectors, ids = f["embeddings"][:], f["ids"].shape[0]
            row["dim_mismatch"] += int(vectors.shape[1] != int(f.attrs.get("dim", vectors.shape[1])))
        row["nan_or_inf"] += int((~np.isfinite(vectors)).sum())
        row["not_unit_norm"] += int((np.abs(np.linalg.norm(vectors, axis=1) - 1) > 1e-3).sum())
        row["ids_vs_rows"] += ids - len(vectors)
        if len(vectors):
            sample = vectors[np.random.default_rng(0).choice(len(vectors), min(5000, len(vectors)), replace=False)]
            row["unique_ratio"] = min(row["unique_ratio"],
                                      len(np.unique(np.round(sample, 4), axis=0)) / len(sample))
        quality = stats.get(path.stem, {}).get("quality", {})
        if "near_duplicate_similarity" in quality:
            row["similar_not_closer"] += int(quality["near_duplicate_similarity"] <= quality["random_pair_similarity"])
    return row


def _store(name: str) -> Callable[[Path], dict]:
    """The figures a store's check wrote after its load (tasks.stores.loading.check_store): every
    whole-number figure, which the store's suite names."""

    def figures(data: Path) -> dict:
        written = json.loads((data / "stores" / f"{name}.json").read_text())
        return {key: value for key, value in written.items() if isinstance(value, int) and not isinstance(value, bool)}

    return figures


AGGREGATES: dict[str, Callable[[Path], dict]] = {
    "ratings": _ratings, "tags": _tags, "genome_integrity": _genome_integrity,
    "users_distribution": _users_distribution, "availability": _availability, "catalog": _catalog,
    "embeddings": _embeddings, **{f"store_{name}": _store(name) for name in STORES},
}


def load_suites(folder: Path = EXPECTATIONS_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _columns(suite: dict) -> list[str]:
    names = []
    for e in suite["expectations"]:
        kwargs = e["kwargs"]
        names += [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
        names += kwargs.get("column_list", [])
    return list(dict.fromkeys(names))


def _batch(suite: dict, data: Path):
    """The pandas frame GX validates for this suite, or None when its dataset is absent."""
    import pandas as pd

    target = data / suite["meta"]["dataset"]
    if not target.exists():
        return None
    if suite["meta"]["batch"] == "aggregates":
        frame = pd.DataFrame([AGGREGATES[suite["name"]](data)])
    else:
        present = pl.scan_parquet(target).collect_schema()
        # A missing column is the schema check's to report; its other expectations then fail too.
        frame = pl.read_parquet(target, columns=[c for c in _columns(suite) if c in present]).to_pandas()
    if "schema" in suite["meta"]:
        frame["schema_problems"] = schema_problems(target, suite["meta"]["schema"], suite["meta"].get("schema_exact"))
    return frame


def schema_problems(path: Path, expected: dict[str, str], exact: bool = False) -> str:
    """"" when the Parquet file's columns have the expected Polars types (and, when exact, no
    others), else what differs."""
    actual = pl.scan_parquet(path).collect_schema()
    problems = [f"{column}: {'missing' if column not in actual else actual[column]}, expected {dtype}"
                for column, dtype in expected.items() if column not in actual or str(actual[column]) != dtype]
    if exact:
        problems += [f"{column}: not expected" for column in actual if column not in expected]
    return "; ".join(problems)


def validate(data_dir: Path, suites: list[dict] | None = None, missing_ok: bool = False,
             report_name: str = "validation_report.json") -> dict:
    """Run every suite on the data dir; returns the report (also written to reports/<report_name>).
    missing_ok: a missing dataset is skipped even when its suite is not optional."""
    import great_expectations as gx

    data = Path(data_dir)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    docs = data / "reports" / "data_docs"
    context.add_data_docs_site(site_name="reports", site_config={
        "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())}})
    source = context.data_sources.add_pandas("media_gateway")
    report: dict = {"data_dir": str(data), "suites": [], "critical_failures": 0, "warnings": 0}
    for spec in suites or load_suites():
        started = time.perf_counter()
        entry = {"suite": spec["name"], "dataset": spec["meta"]["dataset"], "batch": spec["meta"]["batch"],
                 "expectations": []}
        frame = _batch(spec, data)
        if frame is None:
            optional = spec["meta"].get("optional") or missing_ok
            entry["status"] = "skipped (no dataset)" if optional else "fail"
            if not optional:
                report["critical_failures"] += 1
                entry["error"] = f"{data / spec['meta']['dataset']} is missing"
            report["suites"].append(entry)
            continue
        suite = context.suites.add(gx.ExpectationSuite(name=spec["name"], expectations=spec["expectations"]))
        batches = source.add_dataframe_asset(spec["name"]).add_batch_definition_whole_dataframe("all")
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=spec["name"], data=batches,
                                                                                suite=suite))
        # A checkpoint, so that the result also lands in the Data Docs under reports/data_docs/.
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=spec["name"], validation_definitions=[definition], result_format="SUMMARY",
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=["reports"])]))
        result = next(iter(checkpoint.run(batch_parameters={"dataframe": frame}).run_results.values()))
        for r in result.results:
            severity = r.expectation_config.meta.get("severity", "critical")
            details = r.result or {}
            entry["expectations"].append({
                "expectation": r.expectation_config.type, "kwargs": dict(r.expectation_config.kwargs),
                "severity": severity, "success": bool(r.success),
                "unexpected_count": details.get("unexpected_count"), "observed_value": _plain(details.get("observed_value")),
                "sample": _distinct(_plain(details.get("partial_unexpected_list", [])))[:5],
                "error": str(r.exception_info.get("exception_message")) if r.exception_info.get("raised_exception") else None,
            })
        failed = [e for e in entry["expectations"] if not e["success"]]
        critical = [e for e in failed if e["severity"] == "critical"]
        report["critical_failures"] += len(critical)
        report["warnings"] += len(failed) - len(critical)
        entry["status"] = "fail" if critical else "warn" if failed else "pass"
        entry["rows"] = len(frame)
        entry["seconds"] = round(time.perf_counter() - started, 2)
        report["suites"].append(entry)
    with atomic_output(data / "reports" / report_name) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    return report


def _distinct(values: list) -> list:
    seen: dict[str, object] = {}
    for value in values:
        seen.setdefault(repr(value), value)
    return list(seen.values())


def _plain(value):
    """JSON-friendly values out of numpy and pandas."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def first_failure(report: dict) -> str | None:
    """A message naming the suite, the expectation and sample offending values, for the gate."""
    for suite in report["suites"]:
        if suite["status"] != "fail":
            continue
        if "error" in suite and not suite["expectations"]:
            return f"suite {suite['suite']}: {suite['error']}"
        for e in suite["expectations"]:
            if not e["success"] and e["severity"] == "critical":
                column = e["kwargs"].get("column") or e["kwargs"].get("column_list") or ""
                found = e["sample"] or e["observed_value"] or e["error"]
                rows = f" on {e['unexpected_count']} rows" if e["unexpected_count"] else ""
                return (f"suite {suite['suite']} ({suite['dataset']}): {e['expectation']}({column}) failed{rows}; "
                        f"sample: {found}")
    return None


def markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {s['suite']} | {s['status']} | {sum(e['success'] for e in s['expectations'])}/{len(s['expectations'])} "
        f"| {s.get('rows', '')} | {s['batch']} |" for s in report["suites"])
    return (f"# Validation\n\n{report['critical_failures']} critical failure(s), {report['warnings']} warning(s)\n\n"
            f"| suite | status | passed | rows | batch |\n|---|---|---|---|---|\n{rows}\n")


STAGE_DATASETS = {"ingest": "processed/", "synthetic": "synthetic/", "embed": "embeddings", "load": "stores/"}


def report_name(stage: str | None) -> str:
    return f"validation_{stage}.json" if stage else "validation_report.json"
