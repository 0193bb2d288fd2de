"""The client compatibility matrix behind docs/clients.md (run: `python3 -m tests.matrix`)."""
