"""Key material: X.509 certificates and keys read from disk (`certs`) and password hashes
(`passwords`, also the `hash-password` command). No sockets, no server."""
