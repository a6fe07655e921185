"""The synthetic stage's Prefect tasks: thin wrappers over tasks.synthetic.datasets and templates."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import get_run_logger, task

from tasks.caching import key_from_inputs
from tasks.synthetic.datasets import availability, build_platforms, profiles, rating_summary, write_parquet
from tasks.synthetic.templates import export, load_template, write_dataset

SYNTHETIC_VERSION = "synthetic-2"  # bump when an output's layout or values change


@task(name="synthetic-users", cache_key_fn=key_from_inputs(SYNTHETIC_VERSION, ("ratings", "movies")),
      persist_result=True)
def users_task(ratings: str, movies: str, out: str, seed: int = 42, exports: tuple[str, ...] = ()) -> str:
    summary = rating_summary(Path(ratings), Path(movies))
    users = profiles(summary["user_id"].to_numpy(), seed).join(summary, on="user_id")
    path = write_parquet(users, Path(out))
    export(path, exports)
    get_run_logger().info("%s user profiles -> %s", f"{users.height:,}", path)
    return str(path)


@task(name="synthetic-availability", cache_key_fn=key_from_inputs(SYNTHETIC_VERSION, ("movies",)),
      persist_result=True)
def availability_task(movies: str, out_dir: str, exports: tuple[str, ...] = ()) -> list[str]:
    out = Path(out_dir)
    platforms = build_platforms(out / "platforms.parquet")
    media_ids = pl.read_parquet(movies, columns=["media_id"])["media_id"].to_list()
    listings = availability(media_ids)
    path = write_parquet(listings, out / "availability.parquet")
    for written in (platforms, path):
        export(written, exports)
    covered = listings["media_id"].n_unique() / max(len(media_ids), 1)
    get_run_logger().info("%s listings; %.1f%% of movies on at least one platform, %.2f platforms per movie",
                          f"{listings.height:,}", 100 * covered, listings.height / max(len(media_ids), 1))
    return [str(platforms), str(path)]


@task(name="synthetic-catalog", cache_key_fn=key_from_inputs(SYNTHETIC_VERSION, ("template",)), persist_result=True)
def catalog_task(template: str, size: int, out: str, seed: int = 42, exports: tuple[str, ...] = ()) -> str:
    path = write_dataset(load_template(Path(template)), size, Path(out), seed, exports=exports)
    get_run_logger().info("%s catalog items -> %s", f"{size:,}", path)
    return str(path)
