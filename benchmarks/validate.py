"""Validation benchmark: our suites on the 25m-scale processed data, against GX checking the
ratings row by row on a pandas frame (the direct way), each in its own process.

    python benchmarks/validate.py [--baseline-rows 5000000] [--scale 25m|small]

Needs benchmarks/.cache/out-ours (run benchmarks/ingest.py first). The baseline validates the first
--baseline-rows ratings and is scaled to the full count. Last line: one JSON object. Target: 25M
ratings validate without running out of memory and in no more time than the ingest itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, SCALES, cpu_model, ingested, measure, run_child  # noqa: E402


def data_dir(scale: str) -> Path:
    processed = ingested(scale)
    data = CACHE / f"validate-data-{scale}"
    if not (data / "processed").exists():
        data.mkdir(parents=True, exist_ok=True)
        (data / "processed").symlink_to(processed)
    return data


def ours(scale: str) -> dict:
    from tasks.validate.suites import load_suites, validate

    suites = [s for s in load_suites() if s["meta"]["dataset"].startswith("processed/")]
    report = validate(data_dir(scale), suites, missing_ok=True)
    shutil.rmtree(data_dir(scale) / "reports", ignore_errors=True)
    return {"suites": {s["suite"]: s["status"] for s in report["suites"]}}


def baseline(rows: int, scale: str) -> dict:
    import great_expectations as gx
    import polars as pl

    data = data_dir(scale)
    frame = pl.read_parquet(data / "processed" / "ratings.parquet", n_rows=rows).to_pandas()
    movies = pl.read_parquet(data / "processed" / "movies.parquet", columns=["movie_id"])["movie_id"].to_list()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    suite = context.suites.add(gx.ExpectationSuite(name="ratings_rows", expectations=[
        gx.expectations.ExpectColumnValuesToNotBeNull(column="rating"),
        gx.expectations.ExpectColumnValuesToBeInSet(column="rating", value_set=[x / 2 for x in range(1, 11)]),
        gx.expectations.ExpectColumnValuesToBeBetween(column="timestamp", min_value=788918400, max_value=4102444800),
        gx.expectations.ExpectColumnValuesToBeInSet(column="movie_id", value_set=movies),
        gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "movie_id"]),
    ]))
    batch = context.data_sources.add_pandas("p").add_dataframe_asset("r").add_batch_definition_whole_dataframe(
        "all").get_batch(batch_parameters={"dataframe": frame})
    return {"success": bool(batch.validate(suite).success), "rows": len(frame)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rows", type=int, default=5_000_000)
    parser.add_argument("--scale", default="25m", choices=SCALES)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child == "ours":
        import great_expectations  # noqa: F401 - imported before the clock starts
        import tasks.validate.suites  # noqa: F401

        measure(lambda: ours(args.scale))
        return
    if args.child == "baseline":
        import great_expectations  # noqa: F401

        measure(lambda: baseline(args.baseline_rows, args.scale))
        return
    print(f"CPU: {cpu_model()}", flush=True)
    data_dir(args.scale)  # made before the clocks start
    ours_fig = run_child(__file__, "ours", "--scale", args.scale)
    base_fig = run_child(__file__, "baseline", "--baseline-rows", str(args.baseline_rows), "--scale", args.scale)
    import polars as pl

    total = pl.scan_parquet(data_dir(args.scale) / "processed" / "ratings.parquet").select(pl.len()).collect().item()
    scaled = base_fig["seconds"] * total / base_fig["rows"]
    scaled_cpu = base_fig["cpu_s"] * total / base_fig["rows"]
    print(json.dumps({"benchmark": "validate", "cpu": cpu_model(), "ratings": total, "wall_s": ours_fig["seconds"],
                      "cpu_s": ours_fig["cpu_s"], "baseline_cpu_s": round(scaled_cpu, 1),
                      "cpu_speedup": round(scaled_cpu / ours_fig["cpu_s"], 1),
                      "peak_rss_mb": ours_fig["peak_rss_mb"], "suites": ours_fig["suites"],
                      "baseline": f"GX row by row on a pandas frame of {base_fig['rows']:,} ratings, scaled",
                      "baseline_wall_s": round(scaled, 1), "baseline_peak_rss_mb_at_sample": base_fig["peak_rss_mb"],
                      "speedup": round(scaled / ours_fig["seconds"], 1)}))


if __name__ == "__main__":
    main()
