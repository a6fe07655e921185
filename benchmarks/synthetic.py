"""Synthetic-data benchmark: our vectorised generators against the seeds' per-row Faker approach.

    python benchmarks/synthetic.py [--users 162541] [--movies 62423] [--catalog 1000000] [--sample 50000]

Ours: 162,541 user profiles (from the 25m-scale ratings the ingest benchmark leaves in
benchmarks/.cache/out-ours, else from generated ratings of the same size), availability for 62,423
movies, and a 1,000,000-item catalog. Baseline: the seeds' per-row code (a Random seeded per user
and per pair from md5, Faker per row) on a sample of `--sample` rows of each, scaled to the full
counts. Each side runs in its own process. Last line: one JSON object.
Targets: users + availability <= 15 s; 1M catalog <= 60 s and >= 10x the per-row approach; peak RSS <= 3 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import CACHE, cpu_model, measure, run_child  # noqa: E402


def ratings_input(users: int, movies: int) -> tuple[Path, Path]:
    """movies/ratings Parquet at the asked scale: the ingest benchmark's output, or a stand-in."""
    import numpy as np
    import polars as pl

    out = CACHE / "out-ours"
    if (users, movies) == (162_541, 62_423) and (out / "ratings.parquet").exists():
        return out / "ratings.parquet", out / "movies.parquet"
    stand_in = CACHE / f"synthetic-input-{users}-{movies}"
    stand_in.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n = users * 154  # ml-25m's ratings per user
    pl.DataFrame({"user_id": rng.integers(1, users + 1, n, dtype=np.int32),
                  "movie_id": rng.integers(1, movies + 1, n, dtype=np.int32),
                  "rating": (rng.integers(1, 11, n) / 2).astype(np.float32)}).write_parquet(stand_in / "ratings.parquet")
    pl.DataFrame({"movie_id": np.arange(1, movies + 1, dtype=np.int32),
                  "media_id": [f"ml_{i}" for i in range(1, movies + 1)],
                  "genres": [["Drama", "Comedy"][: 1 + i % 2] for i in range(movies)]}).write_parquet(
        stand_in / "movies.parquet")
    return stand_in / "ratings.parquet", stand_in / "movies.parquet"


def ours_users_availability(users: int, movies: int) -> dict:
    import polars as pl

    from tasks.synthetic.datasets import availability, profiles, rating_summary, write_parquet

    ratings, movie_file = ratings_input(users, movies)
    started = time.perf_counter()
    summary = rating_summary(ratings, movie_file)
    frame = profiles(summary["user_id"].to_numpy(), 42).join(summary, on="user_id")
    write_parquet(frame, CACHE / "synthetic-out" / "users.parquet")
    media_ids = pl.read_parquet(movie_file, columns=["media_id"])["media_id"].to_list()
    listings = availability(media_ids)
    write_parquet(listings, CACHE / "synthetic-out" / "availability.parquet")
    return {"users": frame.height, "listings": listings.height, "timed_s": round(time.perf_counter() - started, 2)}


def ours_catalog(size: int) -> dict:
    from tasks.synthetic.datasets import CATALOG_TEMPLATE
    from tasks.synthetic.templates import load_template, write_dataset

    write_dataset(load_template(CATALOG_TEMPLATE), size, CACHE / "synthetic-out" / "media_catalog.parquet")
    return {"items": size}


# --- the seeds' per-row approach ---------------------------------------------------------------

ARCHETYPES = ["cinephile", "casual", "family", "young_adult", "senior", "international", "genre_specialist"]
WEIGHTS = [0.12, 0.30, 0.15, 0.20, 0.08, 0.10, 0.05]
PLATFORM_RATES = {"tv5monde": 0.15, "netflix": 0.35, "amazon_prime": 0.30, "hbo_max": 0.25, "disney_plus": 0.20,
                  "apple_tv_plus": 0.15, "mubi": 0.10, "criterion_channel": 0.08}


def _rng(key: str) -> random.Random:
    return random.Random(int(hashlib.md5(key.encode()).hexdigest(), 16))


def baseline_users(n: int) -> list[dict]:
    from faker import Faker

    fake = Faker()
    rows = []
    for user_id in range(1, n + 1):
        arche = _rng(f"{user_id}_archetype").choices(ARCHETYPES, WEIGHTS)[0]
        demo = _rng(f"{user_id}_demographics")
        fake.seed_instance(demo.randint(0, 2**31))
        prefs = _rng(f"{user_id}_preferences")
        rows.append({"user_id": user_id, "archetype": arche, "name": fake.name(), "city": fake.city(),
                     "country": fake.country_code(), "age": demo.randint(18, 80),
                     "languages": [fake.language_code() for _ in range(demo.randint(1, 3))],
                     "device_tv": min(1, max(0, 0.5 + prefs.gauss(0, 0.1))),
                     "device_mobile": min(1, max(0, 0.3 + prefs.gauss(0, 0.1))),
                     "evening": min(1, max(0, 0.4 + prefs.gauss(0, 0.1)))})
    return rows


def baseline_availability(n_movies: int) -> list[dict]:
    rows = []
    for movie in range(1, n_movies + 1):
        for platform, rate in PLATFORM_RATES.items():
            rng = _rng(f"ml_{movie}{platform}")
            if rng.random() >= rate:
                continue
            quality = rng.choice([["SD", "HD"], ["SD", "HD", "4K"], ["SD"]])
            rows.append({"media_id": f"ml_{movie}", "platform_id": platform,
                         "regions": rng.sample(["US", "CA", "GB", "FR", "DE", "ES", "IT", "BR", "JP", "IN"],
                                               rng.randint(1, 3)),
                         "subtitles": rng.sample(["en", "fr", "es", "de", "it", "pt", "ja", "ko"], rng.randint(2, 6)),
                         "audio": rng.sample(["en", "fr", "es", "de"], rng.randint(1, 3)), "quality": quality,
                         "hdr": "4K" in quality and rng.random() < 0.7, "atmos": "4K" in quality and rng.random() < 0.5,
                         "price": None if platform == "tv5monde" else round(rng.uniform(2.99, 5.99), 2)})
    return rows


def baseline_catalog(n: int) -> list[dict]:
    """seed 000's SyntheticMediaGenerator: Faker per row, content_text per row."""
    from faker import Faker

    random.seed(42)
    fake = Faker()
    Faker.seed(42)
    rows = []
    kinds = random.choices(["video", "image", "audio", "document"], [0.4, 0.3, 0.2, 0.1], k=n)
    for kind in kinds:
        row = {"id": fake.uuid4(), "type": kind, "title": fake.sentence(nb_words=6).rstrip("."),
               "description": fake.paragraph(nb_sentences=3),
               "tags": [fake.word() for _ in range(random.randint(2, 8))], "creator": fake.name(),
               "creation_date": fake.date_time_between(start_date="-5y", end_date="now").isoformat(),
               "file_size": random.randint(10, 10000) * 1024}
        if kind == "video":
            row.update(duration=random.randint(30, 7200), resolution=random.choice(["720p", "1080p", "4K", "8K"]),
                       topic=random.choice(["tutorial", "documentary", "vlog", "review"]))
        elif kind == "image":
            row.update(category=random.choice(["landscape", "portrait"]), camera_model=fake.company())
        elif kind == "audio":
            row.update(duration=random.randint(60, 3600), genre=random.choice(["podcast", "music"]))
        else:
            row.update(page_count=random.randint(1, 500), word_count=random.randint(100, 50000))
        row["content_text"] = " ".join([row["title"], row["description"], f"Type: {kind}",
                                        f"Tags: {', '.join(row['tags'])}", f"Creator: {row['creator']}"])
        rows.append(row)
    return rows


def baseline(kind: str, n: int) -> dict:
    import pandas as pd

    rows = {"users": baseline_users, "availability": baseline_availability, "catalog": baseline_catalog}[kind](n)
    out = CACHE / "synthetic-out" / f"baseline-{kind}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(out)
    return {"rows": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=162_541)
    parser.add_argument("--movies", type=int, default=62_423)
    parser.add_argument("--catalog", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=50_000, help="rows of each baseline, scaled to full counts")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "ours-users-availability":
            import tasks.synthetic.datasets  # noqa: F401 - imported before the clock starts

            measure(lambda: ours_users_availability(args.users, args.movies))
        elif args.child == "ours-catalog":
            import tasks.synthetic.templates  # noqa: F401

            measure(lambda: ours_catalog(args.catalog))
        else:
            import faker  # noqa: F401
            import pandas  # noqa: F401

            measure(lambda: baseline(args.child.removeprefix("baseline-"), args.n))
        return

    scale = ("--users", str(args.users), "--movies", str(args.movies), "--catalog", str(args.catalog))
    users_av = run_child(__file__, "ours-users-availability", *scale)
    catalog = run_child(__file__, "ours-catalog", *scale)
    sample_movies = max(1, args.sample // 8)  # 8 pairs per movie: as many md5 draws as the user sample
    base_users = run_child(__file__, "baseline-users", "--n", str(args.sample))
    base_avail = run_child(__file__, "baseline-availability", "--n", str(sample_movies))
    base_catalog = run_child(__file__, "baseline-catalog", "--n", str(args.sample))
    scaled_users_av = (base_users["seconds"] * args.users / args.sample
                       + base_avail["seconds"] * args.movies / sample_movies)
    scaled_catalog = base_catalog["seconds"] * args.catalog / args.sample
    scaled_cpu = (base_users["cpu_s"] * args.users / args.sample + base_avail["cpu_s"] * args.movies / sample_movies
                  + base_catalog["cpu_s"] * args.catalog / args.sample)
    cpu = users_av["cpu_s"] + catalog["cpu_s"]
    print(json.dumps({
        "benchmark": "synthetic", "cpu": cpu_model(), "users": args.users, "movies": args.movies,
        "catalog": args.catalog, "cpu_s": round(cpu, 2), "baseline_cpu_s": round(scaled_cpu, 1),
        "cpu_speedup": round(scaled_cpu / cpu, 1),
        "users_availability_wall_s": users_av["seconds"], "catalog_wall_s": catalog["seconds"],
        "wall_s": round(users_av["seconds"] + catalog["seconds"], 2),
        "peak_rss_mb": max(users_av["peak_rss_mb"], catalog["peak_rss_mb"]),
        "baseline": f"seeds' per-row Faker code on {args.sample:,}-row samples, scaled",
        "baseline_users_availability_s": round(scaled_users_av, 1), "baseline_catalog_s": round(scaled_catalog, 1),
        "baseline_peak_rss_mb": max(base_users["peak_rss_mb"], base_avail["peak_rss_mb"],
                                    base_catalog["peak_rss_mb"]),
        "speedup_users_availability": round(scaled_users_av / users_av["seconds"], 1),
        "speedup_catalog": round(scaled_catalog / catalog["seconds"], 1),
        "speedup": round((scaled_users_av + scaled_catalog) / (users_av["seconds"] + catalog["seconds"]), 1),
    }))


if __name__ == "__main__":
    main()
