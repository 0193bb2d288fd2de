"""Long fuzzing run by hand: `python3 -m tests.fuzz.run --inputs 100000 [--seed N]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzer import fuzz


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    report, log = fuzz(args.inputs, args.seed, max_seconds=args.max_seconds, verbose=True)
    print("\n".join(report.lines()))
    if report.tracebacks:
        tail = [line for line in log.splitlines() if line.strip()][-60:]
        print("\n".join(tail), file=sys.stderr)
    bad = report.crashes or report.tracebacks or report.client_checks_ok != report.batches
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
