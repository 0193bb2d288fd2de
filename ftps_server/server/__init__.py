"""The FTPS server: TLS contexts (`tls`, `tls_openssl`), the TLS record engine (`tls_engine`)
and the mixin that moves its bytes on pyftpdlib channels (`tls_channel`), the FTP handlers
(`ftp`, `data_channel`, `listing`, `checksum_commands`), listeners and reload (`listeners`,
`state`), the hand-over to a new process (`handover`), `[server] workers` (`workers`), PROXY
protocol headers (`proxy_protocol`, `proxied`), the login policy (`login_policy`, applied by
`auth`; `users`, `bans`, `pending`, `password_queue`), session events (`events`), Prometheus
metrics (`metrics`), the hand-off into the IOLoop (`wakeup`) and pyftpdlib's internals
(`pyftpdlib_adapter`).
The only package that imports pyftpdlib (with `daemon`, which runs its loop)."""
