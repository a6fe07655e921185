"""Search the loaded stores: a text or an item, with metadata filters.

    python -m flows.search "space adventure" [--like ml_1] [--store milvus|postgres] [--type video]
        [--genre Comedy] [--year-from 1990] [--year-to 2000] [--on-platform netflix] [-k 10] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from flows.common import cli_settings
from tasks.query.search import SEARCHABLE, search
from tasks.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.search", description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="?", help="what to look for (embedded with the stored vectors' model)")
    parser.add_argument("--like", metavar="ITEM", help="items like this one (ml_<movieId> or a catalog id)")
    parser.add_argument("--store", choices=SEARCHABLE, default="milvus")
    parser.add_argument("--type", choices=["video", "image", "audio", "document"], help="catalog items of this type")
    parser.add_argument("--genre", help="movies of this genre")
    parser.add_argument("--year-from", type=int)
    parser.add_argument("--year-to", type=int)
    parser.add_argument("--on-platform", metavar="PLATFORM", help="movies on this platform (netflix, mubi, ...)")
    parser.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    parser.add_argument("--json", action="store_true", help="one JSON object per result")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    if args.text is None and args.like is None:
        parser.error("give a query text or --like ITEM")
    if not 1 <= args.k <= 1000:
        parser.error("-k must be between 1 and 1000")
    settings = cli_settings(data_dir=args.data_dir)

    def run() -> int:
        hits = search(settings, args.text, args.like, args.store, type=args.type, genre=args.genre,
                      year_from=args.year_from, year_to=args.year_to, platform=args.on_platform, k=args.k)
        for rank, hit in enumerate(hits, 1):
            if args.json:
                print(json.dumps(asdict(hit)))
            else:
                fields = "  ".join(f"{k}={v}" for k, v in hit.fields.items())
                print(f"{rank:3}. {hit.score:.4f}  {hit.id}  {hit.title}  {fields}")
        if not hits:
            print("no results")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
