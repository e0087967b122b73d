"""`python -m observability.dashboards [--check] [--out DIR]` (what `make dashboards` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from observability.dashboards import OUTPUT, render, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m observability.dashboards",
                                     description="Generate the Grafana dashboards of the chart.")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="target directory")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files differ from the code")
    args = parser.parse_args(argv)
    if args.check:
        stale = [name for name, text in render().items()
                 if not (args.out / name).is_file() or (args.out / name).read_text() != text]
        for name in stale:
            print(f"out of date: {args.out / name} (run `make dashboards`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
