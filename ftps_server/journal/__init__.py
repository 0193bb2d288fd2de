"""Logging: stderr or journald records with structured fields (`log`) and the fixed journal
message ids (`message_ids`). The foundation: imports nothing from the project."""
