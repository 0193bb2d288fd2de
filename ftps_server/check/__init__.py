"""`ftps-server check`: probe every listener with real TLS handshakes (`probe`), judge what
was seen against the config (`verdict`), print it (`report`); `run` ties them and is the command.
It reads the config and certificates; it never imports the server."""
