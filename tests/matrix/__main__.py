"""Run the client matrix and write docs/clients.md.

    python3 -m tests.matrix                     # all clients, writes docs/clients.md
    python3 -m tests.matrix --clients curl,lftp --output /tmp/clients.md

Clients needed (Debian 12/13): curl, lftp, rclone, default-jdk-headless, libcommons-net-java,
nodejs, npm; and `npm install basic-ftp --prefix /var/cache/ftps-server-matrix/node` (or set
FTPS_MATRIX_NODE_MODULES). A missing client gives a "not run" row, not a failure of the run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from .clients import CLIENTS
from .run import render, run_matrix

ROOT = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.matrix", description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "clients.md")
    parser.add_argument(
        "--clients", default="", help="comma-separated row names (prefix match), default all"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep files and logs here")
    args = parser.parse_args(argv)
    wanted = [w.strip().lower() for w in args.clients.split(",") if w.strip()]
    clients = tuple(
        c for c in CLIENTS if not wanted or any(c.name.lower().startswith(w) for w in wanted)
    )
    if not clients:
        parser.error(f"no client matches {args.clients!r}")
    start = time.monotonic()
    if args.workdir is not None:
        results = run_matrix(clients, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="ftps-matrix-") as workdir:
            results = run_matrix(clients, Path(workdir))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, time.monotonic() - start))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
