"""Embedding flow: movie texts, catalog texts and user vectors into DATA_DIR/embeddings/.

    python -m flows.embed --data-dir DIR [--model NAME] [--device auto|cpu|cuda] [--batch-size N]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from prefect import flow

from flows.common import cli_settings, load_settings, prefect_api, preflight
from tasks.caching import result_storage
from tasks.embed.tasks import embed_catalog_task, embed_media_task, user_vectors_task
from tasks.errors import MissingInput, run_cli
from tasks.embed.models import MODELS


@flow(name="embed", log_prints=True)
def embed_flow(data_dir: str | None = None, model: str | None = None,
               device: Literal["auto", "cpu", "cuda"] | None = None, batch_size: int | None = None,
               catalog: bool = True) -> dict[str, str]:
    """Returns the written HDF5 files by name. Empty parameters take the settings (environment or
    .env). Models not in a package are looked up in MG_MODEL_DIR before the Hugging Face cache;
    MG_EMBED_PRECISION=fp32 keeps full precision."""
    settings = load_settings(data_dir=data_dir, model=model, device=device, embed_batch_size=batch_size)
    data, model, device, batch_size = settings.data_dir, settings.model, settings.device, settings.embed_batch_size
    model_dir = str(settings.model_dir) if settings.model_dir else None
    processed, out = data / "processed", data / "embeddings"
    if not (processed / "movies.parquet").exists():
        raise MissingInput(f"{processed / 'movies.parquet'} is missing: run the ingest stage first")
    out.mkdir(parents=True, exist_ok=True)
    storage = result_storage(data)
    genome = processed / "genome_scores.parquet"
    media = embed_media_task.with_options(result_storage=storage)(
        str(processed / "movies.parquet"), str(genome) if genome.exists() else None, str(out / "media.h5"),
        model, device, batch_size, model_dir, settings.embed_precision)
    written = {"media": media}
    written["users"] = user_vectors_task.with_options(result_storage=storage)(
        str(processed / "ratings.parquet"), media, str(out / "users.h5"))
    catalog_file = data / "synthetic" / "media_catalog.parquet"
    if catalog and catalog_file.exists():
        written["catalog"] = embed_catalog_task.with_options(result_storage=storage)(
            str(catalog_file), str(out / "catalog.h5"), model, device, batch_size, model_dir, settings.embed_precision)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.embed", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--model", help=f"one of {', '.join(MODELS)}, or a local model folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, help="texts per encode call (default 256, MG_EMBED_BATCH_SIZE)")
    parser.add_argument("--no-catalog", action="store_true", help="do not embed the synthetic catalog")
    args = parser.parse_args(argv)
    settings = cli_settings(data_dir=args.data_dir, model=args.model, device=args.device,
                            embed_batch_size=args.batch_size)

    def run() -> int:
        preflight(settings, embed=True)
        with prefect_api(settings):
            written = embed_flow(str(settings.data_dir), settings.model, settings.device, settings.embed_batch_size,
                                 not args.no_catalog)
        for name, path in written.items():
            print(f"{name:8} {path}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
