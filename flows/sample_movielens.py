"""Write a synthetic MovieLens-format release.

    python -m flows.sample_movielens --scale {small,25m} --out DIR [--seed N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tasks.errors import run_cli
from tasks.ingest.sample import SCALES, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sample_movielens", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--out", type=Path, required=True, help="release folder to write (replaced)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    def run() -> int:
        started = time.perf_counter()
        out = generate(args.scale, args.out, seed=args.seed)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(out.glob("*.csv")))
        print(f"wrote {out} ({args.scale} scale, seed {args.seed}) in {time.perf_counter() - started:.1f} s: {sizes}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    raise SystemExit(main())
