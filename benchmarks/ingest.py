"""Ingest benchmark: our Polars ingest against the seed's pandas-chunked way, on a 25m-scale release.

    python benchmarks/ingest.py [--scale 25m|small] [--seed 42]

Generates the release once (cached in benchmarks/.cache/), then runs each path in its own process
so each peak RSS is its own. Last line: one JSON object with the figures.
Targets (25m, this 2-core machine): ours <= 20 s and <= 1.5 GB; >= 2x faster and >= 4x less memory
than the pandas way; generation <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, compare, cpu_model, measure, run_child  # noqa: E402


def ours(release: Path, out: Path) -> None:
    from tasks.ingest.movielens import ingest_release

    ingest_release(release, out)


def baseline(release: Path, out: Path, chunksize: int | None = 1_000_000) -> None:
    """The seed's approach: pandas, 1M-row chunks, time context per chunk, written to Parquet.
    With chunksize=None: pandas reading each file whole (pyarrow engine), the usual quick rewrite."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    movies = pd.read_csv(release / "movies.csv")
    links = pd.read_csv(release / "links.csv", dtype={"imdbId": str})
    title = movies["title"].str.strip()
    parts = title.str.extract(r"^(.*?)\s*\((\d{4})(?:\s*[\u2013-]\s*(\d{4})?)?\)$")
    movies["year"] = pd.to_numeric(parts[1], errors="coerce").astype("Int16")
    movies["title"] = parts[0].fillna(title)
    movies["genres"] = movies["genres"].apply(lambda g: [] if g == "(no genres listed)" else g.split("|"))
    movies = movies.merge(links, on="movieId", how="left")
    movies["media_id"] = "ml_" + movies["movieId"].astype(str)
    movies["imdb_id"] = "tt" + movies["imdbId"].str.zfill(7)
    movies[["media_id", "movieId", "title", "year", "genres", "imdb_id", "tmdbId"]].to_parquet(out / "movies.parquet")
    known = set(movies["movieId"])

    def context(chunk: pd.DataFrame) -> pd.DataFrame:
        moment = pd.to_datetime(chunk["timestamp"], unit="s", utc=True)
        hour = moment.dt.hour
        chunk["rated_at"] = moment
        chunk["time_of_day"] = np.select(
            [(hour >= 6) & (hour < 12), (hour >= 12) & (hour < 17), (hour >= 17) & (hour < 21), hour >= 21],
            ["morning", "afternoon", "evening", "night"], "late_night")
        chunk["day_of_week"] = moment.dt.day_name()
        return chunk

    for name, csv_name, extra in (("ratings", "ratings.csv", context), ("tags", "tags.csv", None)):
        writer = None
        chunks = (pd.read_csv(release / csv_name, chunksize=chunksize) if chunksize
                  else [pd.read_csv(release / csv_name, engine="pyarrow")])
        for chunk in chunks:
            chunk = chunk[chunk["movieId"].isin(known)]
            if extra is not None:
                chunk = chunk[chunk["rating"].isin([x / 2 for x in range(1, 11)])]
                chunk = extra(chunk)
            else:
                chunk = chunk.assign(tagged_at=pd.to_datetime(chunk["timestamp"], unit="s", utc=True))
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            writer = writer or pq.ParquetWriter(out / f"{name}.parquet", table.schema, compression="zstd")
            writer.write_table(table)
        writer.close()
    if (release / "genome-scores.csv").exists():
        tags = pd.read_csv(release / "genome-tags.csv")
        scores = (pd.read_csv(release / "genome-scores.csv", chunksize=chunksize) if chunksize
                  else [pd.read_csv(release / "genome-scores.csv", engine="pyarrow")])
        strong = pd.concat(c[c["relevance"] > 0.5] for c in scores)
        strong = strong.merge(tags, on="tagId").sort_values(["movieId", "relevance"], ascending=[True, False])
        strong["rank"] = strong.groupby("movieId").cumcount() + 1
        strong[strong["rank"] <= 10].to_parquet(out / "genome_scores.parquet")


def child(path: str, release: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    # Imports happen before the clock starts: the figure is the work, not Python's start-up.
    if path == "ours":
        import tasks.ingest.movielens  # noqa: F401
    else:
        import pandas  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    paths = {"ours": ours, "pandas-chunked": baseline,
             "pandas-whole": lambda r, o: baseline(r, o, chunksize=None)}
    measure(lambda: paths[path](release, out))


def run(path: str, release: Path, out: Path) -> dict:
    return run_child(__file__, path, "--release", str(release), "--out", str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="25m", choices=["small", "25m"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--child", choices=["ours", "pandas-chunked", "pandas-whole"])
    parser.add_argument("--release", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.release, args.out)
        return

    from tasks.ingest.sample import generate

    release = CACHE / f"ml-{args.scale}-seed{args.seed}"
    generate_s = None
    if not (release / "README.txt").exists():
        started = time.perf_counter()
        generate(args.scale, release, seed=args.seed)
        generate_s = round(time.perf_counter() - started, 1)
        print(f"generated {release} in {generate_s} s", flush=True)
    # .cache/out-ours is the 25m ingest the other benchmarks read: a smaller scale never overwrites it.
    ours_fig = run("ours", release, CACHE / ("out-ours" if args.scale == "25m" else f"out-ours-{args.scale}-ingest"))
    base_fig = run("pandas-chunked", release, CACHE / "out-baseline")
    whole_fig = run("pandas-whole", release, CACHE / "out-baseline")
    shutil.rmtree(CACHE / "out-baseline", ignore_errors=True)
    print(json.dumps({
        "benchmark": "ingest", "scale": args.scale, "cpu": cpu_model(),
        "baseline": "pandas, 1M-row chunks (the seed's way)", **compare(ours_fig, base_fig),
        "memory_ratio": round(base_fig["peak_rss_mb"] / ours_fig["peak_rss_mb"], 2),
        "whole_file_pandas_wall_s": whole_fig["seconds"], "whole_file_pandas_cpu_s": whole_fig["cpu_s"],
        "whole_file_pandas_peak_rss_mb": whole_fig["peak_rss_mb"],
        "speedup_vs_whole_file": round(whole_fig["seconds"] / ours_fig["seconds"], 2),
        "memory_ratio_vs_whole_file": round(whole_fig["peak_rss_mb"] / ours_fig["peak_rss_mb"], 2),
        "generate_s": generate_s,
    }))


if __name__ == "__main__":
    main()
