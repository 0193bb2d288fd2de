"""The FTPS server: TLS contexts (`tls`), the TLS record engine (`tls_engine`) and the mixin
that moves its bytes on pyftpdlib channels (`tls_channel`), the FTP handlers (`ftp`,
`data_channel`, `listing`), listeners and reload (`listeners`, `state`), the login policy
(`login_policy`, applied by `auth`; `users`, `bans`, `pending`), the hand-off into the IOLoop
(`wakeup`) and pyftpdlib's internals (`pyftpdlib_adapter`).
The only package that imports pyftpdlib (with `daemon`, which runs its loop)."""
