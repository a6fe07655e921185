"""python -m tasks.services start|stop|status [postgres|neo4j|milvus|prefect ...]"""

from __future__ import annotations

import argparse
import sys

from tasks.errors import run_cli
from tasks.services import SERVICES, start, status, stop
from tasks.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.services",
                                     description="Start, stop or show the local servers (loopback only).")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("names", nargs="*", metavar="SERVICE",
                        help=f"any of {', '.join(SERVICES)} (default: all the settings need)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SERVICES))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")

    def run() -> int:
        settings = Settings()
        action = {"start": start, "stop": stop, "status": status}[args.action]
        result = action(settings, args.names or None)
        for name, state in result.items():
            print(f"{name:9} {state:8}  {SERVICES[name].address(settings)}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
