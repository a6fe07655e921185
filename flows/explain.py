"""Explain from the knowledge graph: why an item suits a user, or the items most connected to an item.

    python -m flows.explain --user 42 --item ml_1 [--limit 5] [--json]
    python -m flows.explain --item ml_1 [--limit 10] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.common import cli_settings
from tasks.query.explain import as_dicts, connected, explain
from tasks.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.explain", description=__doc__.splitlines()[0])
    parser.add_argument("--user", type=int, help="a MovieLens user id: explain why --item suits this user")
    parser.add_argument("--item", required=True, help="a movie, ml_<movieId>")
    parser.add_argument("--limit", type=int, default=None, help="reasons per kind (default 5) or items (default 10)")
    parser.add_argument("--json", action="store_true", help="one JSON object per reason or item")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    if args.limit is not None and not 1 <= args.limit <= 100:
        parser.error("--limit must be between 1 and 100")
    settings = cli_settings(data_dir=args.data_dir)

    def run() -> int:
        if args.user is not None:
            rows = as_dicts(explain(settings, args.user, args.item, args.limit or 5))
            lines = [f"{r['kind']:14} {r['text']}" for r in rows]
        else:
            rows = connected(settings, args.item, args.limit or 10)
            lines = [f"{i:3}. {r['id']}  {r['title']}  liked by {r['liked_by']} of its likers, "
                     f"{r['genres']} shared genres" for i, r in enumerate(rows, 1)]
        for row, line in zip(rows, lines):
            print(json.dumps(row) if args.json else line)
        if not rows:
            print("no reasons found" if args.user is not None else "no connected items")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
