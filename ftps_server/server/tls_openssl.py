"""What Python's ssl module does not expose, from the OpenSSL it is linked with (ctypes).

The one place that reaches past Python's ssl module. Two things:

`set_groups`: the key-exchange groups a server context offers, X25519, P-256 and P-384.
Python before 3.15 sets one group only
(`set_ecdh_curve`), and OpenSSL's default list includes secp521r1 and X448, which the Mozilla
"intermediate" profile rejects. Offering only P-256 sends every TLS 1.3 client that opens with
an X25519 key share (Go, browsers, curl) through a HelloRetryRequest, and Go's resumption after
one fails ("binder does not verify"), so clients need X25519 as well.

How, in order:
1. `SSLContext.set_groups` where Python has it (3.15+).
2. OpenSSL's `SSL_CTX_set1_groups_list` through ctypes, on the libssl this process already
   loaded (read from /proc/self/maps, so never a second copy). The SSL_CTX pointer is the
   first field after the object header of Python's context object (unchanged from 3.7 to
   3.14); it is trusted only after `SSL_CTX_get_options` through it returns the context's
   own options.
3. Otherwise P-256 alone, as before, with one warning in the journal.

`new_session_ticket`: one more TLS 1.3 ticket on a connection, sent with its next write
(SSL_new_session_ticket). The control connection gets one for each data connection that spent
one without getting one back (uploads: see ftp.py), so clients that use a ticket once (Java)
never run out. Python's SSLObject wraps an _ssl._SSLSocket whose SSL pointer follows the
object header and one object pointer (3.7 to 3.14); trusted only when SSL_get_SSL_CTX of it is
the pointer of the connection's context, checked as above.

An OpenSSL configuration file for the process (OPENSSL_CONF) was not used: it must be set
before libssl initialises, replaces Debian's system settings, and applies to the SMTP client.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
from functools import cache

__all__ = ["GROUPS", "new_session_ticket", "set_groups"]

log = logging.getLogger(__name__)

GROUPS = "X25519:P-256:P-384"
_FALLBACK_CURVE = "prime256v1"
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl


@cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl Python's _ssl module is linked with, as loaded in this process."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "/libssl.so" in line}
    except OSError:
        return None
    if len(paths) != 1:
        return None  # none, or two copies: no way to tell which one _ssl uses
    lib = ctypes.CDLL(paths.pop())
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
    lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
    if hasattr(lib, "SSL_new_session_ticket"):  # OpenSSL >= 1.1.1
        lib.SSL_new_session_ticket.restype = ctypes.c_int
        lib.SSL_new_session_ticket.argtypes = [ctypes.c_void_p]
    return lib


def _ssl_ctx_pointer(lib: ctypes.CDLL, ctx: ssl.SSLContext) -> int | None:
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        return None
    return int(pointer)


def _set_with_openssl(ctx: ssl.SSLContext) -> bool:
    try:
        lib = _libssl()
        if lib is None:
            return False
        pointer = _ssl_ctx_pointer(lib, ctx)
        if pointer is None:
            return False
        return bool(lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS.encode()))
    except (OSError, AttributeError, ValueError):
        return False


@cache
def _warn_fallback() -> None:
    log.warning("cannot set the TLS groups %s; offering P-256 only", GROUPS)


def set_groups(ctx: ssl.SSLContext) -> str:
    """Offer `GROUPS` on `ctx`; returns the groups actually set."""
    setter = getattr(ctx, "set_groups", None)
    if setter is not None:
        setter(GROUPS)
        return GROUPS
    if _set_with_openssl(ctx):
        return GROUPS
    _warn_fallback()
    ctx.set_ecdh_curve(_FALLBACK_CURVE)
    return _FALLBACK_CURVE


def _ssl_pointer(lib: ctypes.CDLL, conn: ssl.SSLObject) -> int | None:
    inner = getattr(conn, "_sslobj", None)
    ctx_pointer = _ssl_ctx_pointer(lib, conn.context)
    if inner is None or ctx_pointer is None:
        return None
    address = id(inner) + object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(address).value
    if not pointer or lib.SSL_get_SSL_CTX(pointer) != ctx_pointer:
        return None
    return int(pointer)


def new_session_ticket(conn: ssl.SSLObject) -> bool:
    """Queue one more TLS 1.3 session ticket on `conn`, sent with its next write.

    False when it cannot be done here (not TLS 1.3, no such function, pointer not proven)."""
    if conn.version() != "TLSv1.3":
        return False
    try:
        lib = _libssl()
        if lib is None or not hasattr(lib, "SSL_new_session_ticket"):
            return False
        pointer = _ssl_pointer(lib, conn)
        return pointer is not None and lib.SSL_new_session_ticket(pointer) == 1
    except (OSError, AttributeError, ValueError):
        return False
