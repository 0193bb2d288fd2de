"""The FTPS server: TLS contexts (`tls`), the TLS record state machine on pyftpdlib channels
(`tls_channel`), the FTP handlers (`ftp`), listeners and reload (`listeners`, `state`), the login
policy (`auth`, `users`, `bans`, `pending`) and the hand-off into the IOLoop (`wakeup`).
The only package that imports pyftpdlib (with `daemon`, which runs its loop)."""
