"""ftps-server: a production FTPS server with per-address certificates and reminders."""

__version__ = "0.1.0"
