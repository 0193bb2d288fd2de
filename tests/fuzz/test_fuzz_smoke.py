"""A bounded fuzzing run in the suite: a few thousand inputs, then the server must be whole."""

from __future__ import annotations

import os
from pathlib import Path

from fuzzer import fuzz

INPUTS = int(os.environ.get("FTPS_FUZZ_INPUTS", "3000"))


def test_fuzz_smoke(tmp_path: Path) -> None:
    report, log = fuzz(INPUTS, workdir=tmp_path, max_seconds=50)
    print("\n".join(report.lines()))  # the seed, to reproduce with tests/fuzz/run.py --seed
    assert report.crashes == 0, "\n".join(report.lines())
    assert report.tracebacks == 0, log[-6000:]
    assert report.batches > 0 and report.client_checks_ok == report.batches, log[-3000:]
    assert report.inputs >= min(INPUTS, 1000)
