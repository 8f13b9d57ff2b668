"""`make bench`: cnnlab's figures on real CIFAR-10, printed and written to reports/bench-<name>.md.

    python -m tests.bench                  # every quick benchmark
    python -m tests.bench train            # one section
    python -m tests.bench train --accuracy # also the long accuracy runs (minutes to an hour)
"""

from __future__ import annotations

import argparse
import sys

def main(argv=None) -> int:
    from . import sections
    from .common import Report

    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"among: {', '.join(sections.ALL)} (default: all)")
    parser.add_argument("--accuracy", action="store_true", help="also the long accuracy runs on real data")
    parser.add_argument("--load", action="store_true", help="train and budget: with a CPU-heavy process beside "
                                                            "cnnlab (from the start, or from the middle of a run)")
    args = parser.parse_args(argv)
    if args.load:
        import os

        os.environ["CNNLAB_BENCH_LOAD"] = "1"
    unknown = set(args.sections) - set(sections.ALL)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; valid: {', '.join(sections.ALL)}")
    from cnnlab.data import cache_info

    chosen = args.sections or list(sections.ALL)
    if set(chosen) - sections.SYNTHETIC and cache_info() is None:
        print("bench needs real CIFAR-10 in the cache: `cnnlab data import PATH` (or `make bench DATA=PATH`)",
              file=sys.stderr)
        return 2
    from .gpu import Skipped

    for name in chosen:
        report = Report(f"{name}-accuracy" if args.accuracy else f"{name}-load" if args.load else name)
        try:
            sections.ALL[name](report, accuracy=args.accuracy)
        except Skipped as exc:
            print(exc)
            continue
        print(f"-> {report.write()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
