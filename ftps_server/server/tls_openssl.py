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

`ParsedChain` / `use_chain`: a certificate chain and key parsed once per reload and shared by
the contexts of every control connection (OpenSSL counts references; SSL_CTX_use_certificate,
SSL_CTX_add1_chain_cert, SSL_CTX_use_PrivateKey, SSL_CTX_check_private_key). Each control
connection still gets a context of its own (own session cache, own ticket keys: tls.py);
only the immutable certificate and key objects are shared. `load_cert_chain` decodes the PEM
file again for every context, ~0.5 ms with OpenSSL 3.0's decoders, a twentieth of a short
session's CPU; attaching the parsed objects takes ~15 us. Anything unproven falls back to
`load_cert_chain`.

`bind_session` / `CachedSession`: control connections share one context per certificate
(tls.py) and each gets a random session ID context of its own (SSL_set_session_id_context),
which its data connections get too. OpenSSL resumes a session only on a connection with the
session ID context the session was made with (TLS 1.2 session IDs and tickets, TLS 1.3
tickets): any other session is a cache miss and a full handshake. TLS 1.2 full handshakes
leave their session in the shared context's cache; `CachedSession` takes it out when the
connection closes, so the cache holds the sessions of open connections only and a storm of
handshakes cannot push a live session out of it.

`FTPS_SERVER_OPENSSL_CTYPES=0` in the environment turns all of this off (diagnostics, and
the tests of the fallbacks): P-256 only, `load_cert_chain`, a context per control connection.

An OpenSSL configuration file for the process (OPENSSL_CONF) was not used: it must be set
before libssl initialises, replaces Debian's system settings, and applies to the SMTP client.
"""

from __future__ import annotations

import ctypes
import logging
import os
import ssl
import weakref
from functools import cache
from typing import Any

__all__ = [
    "GROUPS",
    "CachedSession",
    "ParsedChain",
    "bind_session",
    "binding_supported",
    "cached_session",
    "new_session_ticket",
    "parse_chain",
    "set_cache_size",
    "set_groups",
    "use_chain",
]

log = logging.getLogger(__name__)

GROUPS = "X25519:P-256:P-384"
_FALLBACK_CURVE = "prime256v1"
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl
_SSL_CTRL_CHAIN_CERT = 89  # SSL_CTX_add1_chain_cert: SSL_CTX_ctrl(ctx, 89, 1, x509)
_SSL_CTRL_SET_SESS_CACHE_SIZE = 42  # SSL_CTX_sess_set_cache_size
BINDING_SIZE = 32  # SSL_MAX_SID_CTX_LENGTH


@cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl Python's _ssl module is linked with, as loaded in this process."""
    if os.environ.get("FTPS_SERVER_OPENSSL_CTYPES") == "0":
        return None
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
    _declare_chain_functions(lib)
    if hasattr(lib, "SSL_new_session_ticket"):  # OpenSSL >= 1.1.1
        lib.SSL_new_session_ticket.restype = ctypes.c_int
        lib.SSL_new_session_ticket.argtypes = [ctypes.c_void_p]
    return lib


def _declare_chain_functions(lib: ctypes.CDLL) -> None:
    """Signatures of the libcrypto/libssl functions ParsedChain uses (libcrypto's symbols
    resolve through libssl's handle: it depends on it)."""
    void_p, char_p, c_int = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "BIO_new_mem_buf": (void_p, [char_p, c_int]),
        "BIO_free": (c_int, [void_p]),
        "PEM_read_bio_X509_AUX": (void_p, [void_p, void_p, void_p, char_p]),
        "PEM_read_bio_X509": (void_p, [void_p, void_p, void_p, char_p]),
        "PEM_read_bio_PrivateKey": (void_p, [void_p, void_p, void_p, char_p]),
        "X509_free": (None, [void_p]),
        "EVP_PKEY_free": (None, [void_p]),
        "ERR_clear_error": (None, []),
        "SSL_CTX_use_certificate": (c_int, [void_p, void_p]),
        "SSL_CTX_use_PrivateKey": (c_int, [void_p, void_p]),
        "SSL_CTX_check_private_key": (c_int, [void_p]),
        "SSL_set_session_id_context": (c_int, [void_p, char_p, ctypes.c_uint]),
        "SSL_get1_session": (void_p, [void_p]),
        "SSL_SESSION_free": (None, [void_p]),
        "SSL_CTX_remove_session": (c_int, [void_p, void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes


def _ssl_ctx_pointer(lib: ctypes.CDLL, ctx: ssl.SSLContext) -> int | None:
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
        return None
    return int(pointer)


def _reach_context(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int] | None:
    """libssl and the proven SSL_CTX pointer of `ctx`, or None."""
    try:
        lib = _libssl()
        pointer = _ssl_ctx_pointer(lib, ctx) if lib is not None else None
    except (OSError, AttributeError, ValueError):
        return None
    return (lib, pointer) if lib is not None and pointer is not None else None


def _reach_connection(conn: ssl.SSLObject) -> tuple[ctypes.CDLL, int] | None:
    """libssl and the proven SSL pointer of `conn`, or None."""
    try:
        lib = _libssl()
        pointer = _ssl_pointer(lib, conn) if lib is not None else None
    except (OSError, AttributeError, ValueError):
        return None
    return (lib, pointer) if lib is not None and pointer is not None else None


def _set_with_openssl(ctx: ssl.SSLContext) -> bool:
    reached = _reach_context(ctx)
    if reached is None:
        return False
    lib, pointer = reached
    return bool(lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS.encode()))


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
    reached = _reach_connection(conn)
    if reached is None or not hasattr(reached[0], "SSL_new_session_ticket"):
        return False
    lib, pointer = reached
    return bool(lib.SSL_new_session_ticket(pointer) == 1)


class ParsedChain:
    """A certificate chain and private key parsed once by this process's OpenSSL.

    Holds one reference to each object; contexts take their own (`use_chain`), so a context
    outlives a reload that drops this one."""

    def __init__(self, lib: ctypes.CDLL, certs: list[int], key: int) -> None:
        self._lib, self.certs, self.key = lib, certs, key
        weakref.finalize(self, _free_chain, lib, list(certs), key)


def _free_chain(lib: ctypes.CDLL, certs: list[int], key: int) -> None:
    for cert in certs:
        lib.X509_free(cert)
    if key:
        lib.EVP_PKEY_free(key)


def _read_pem(lib: ctypes.CDLL, pem: bytes, first: Any, rest: Any) -> list[int]:
    """Every object the readers find in `pem`, in order (they skip other PEM blocks)."""
    found: list[int] = []
    bio = lib.BIO_new_mem_buf(pem, len(pem))
    if not bio:
        return found
    try:
        reader = first
        while True:
            # an empty password, never OpenSSL's default callback (a prompt on the terminal):
            # an encrypted key is not parsed here and load_cert_chain reports it
            item = reader(bio, None, None, b"")
            if not item:
                return found
            found.append(int(item))
            reader = rest
    finally:
        lib.BIO_free(bio)
        lib.ERR_clear_error()  # "no start line" at the end: no stale error for Python's ssl


def parse_chain(pem: bytes) -> ParsedChain | None:
    """Parse a PEM holding one private key and a certificate chain (leaf first); None when
    it cannot be done here (no libssl reached, no key, no certificate)."""
    try:
        lib = _libssl()
        if lib is None:
            return None
        # the leaf as SSL_CTX_use_certificate_chain_file reads it (with trust settings)
        certs = _read_pem(lib, pem, lib.PEM_read_bio_X509_AUX, lib.PEM_read_bio_X509)
        keys = _read_pem(lib, pem, lib.PEM_read_bio_PrivateKey, lib.PEM_read_bio_PrivateKey)
    except (OSError, AttributeError, ValueError):
        return None
    chain = ParsedChain(lib, certs, keys[0] if keys else 0)
    for extra in keys[1:]:
        lib.EVP_PKEY_free(extra)
    return chain if certs and chain.key else None


def use_chain(ctx: ssl.SSLContext, chain: ParsedChain) -> bool:
    """Give `ctx` the parsed chain and key (as load_cert_chain would); False when it cannot
    be proven safe or OpenSSL refuses: then call load_cert_chain, which replaces whatever
    was set."""
    lib = chain._lib
    try:
        pointer = _ssl_ctx_pointer(lib, ctx)
        if pointer is None:
            return False
        ok = lib.SSL_CTX_use_certificate(pointer, chain.certs[0]) == 1
        for cert in chain.certs[1:]:
            ok = ok and lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_CHAIN_CERT, 1, cert) == 1
        ok = ok and lib.SSL_CTX_use_PrivateKey(pointer, chain.key) == 1
        ok = ok and lib.SSL_CTX_check_private_key(pointer) == 1
    except (OSError, AttributeError, ValueError):
        ok = False
    if not ok:
        lib.ERR_clear_error()
    return ok


def binding_supported() -> bool:
    """True when `bind_session` can work here: libssl reached and a probe connection's
    pointer proven (tls.py then shares contexts; otherwise a context per control connection)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    conn = probe.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    return bind_session(conn, os.urandom(BINDING_SIZE))


def bind_session(conn: ssl.SSLObject, binding: bytes) -> bool:
    """Give `conn` the session ID context `binding` before its handshake: it then resumes
    only sessions made under the same binding. False when it could not be set."""
    if len(binding) != BINDING_SIZE:
        raise ValueError("a session binding is 32 bytes")
    reached = _reach_connection(conn)
    if reached is None:
        return False
    lib, pointer = reached
    return bool(lib.SSL_set_session_id_context(pointer, binding, len(binding)) == 1)


def set_cache_size(ctx: ssl.SSLContext, size: int) -> bool:
    """SSL_CTX_sess_set_cache_size: how many TLS 1.2 sessions the server keeps."""
    reached = _reach_context(ctx)
    if reached is None:
        return False
    lib, pointer = reached
    lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)
    return True


class CachedSession:
    """The session a TLS 1.2 full handshake left in its context's cache (see the module
    text). `forget()` takes it out; dropped without `forget()`, it is taken out then."""

    __slots__ = ("__weakref__", "_finalizer")

    def __init__(self, lib: ctypes.CDLL, context: ssl.SSLContext, ctx: int, session: int) -> None:
        # the finalizer holds the context: its SSL_CTX outlives the session taken out of it
        self._finalizer = weakref.finalize(self, _remove_session, lib, context, ctx, session)

    def forget(self) -> None:
        self._finalizer()


def _remove_session(lib: ctypes.CDLL, context: ssl.SSLContext, ctx: int, session: int) -> None:
    lib.SSL_CTX_remove_session(ctx, session)
    lib.SSL_SESSION_free(session)


def cached_session(conn: ssl.SSLObject, context: ssl.SSLContext) -> CachedSession | None:
    """The cache entry of `conn`'s session in `context` (the context its handshake started
    with, where OpenSSL caches), for a TLS 1.2 full handshake; None otherwise."""
    if conn.version() == "TLSv1.3" or conn.session_reused:
        return None  # TLS 1.3 tickets are not cached by the server; a resumed one is not new
    ctx, reached = _reach_context(context), _reach_connection(conn)
    if ctx is None or reached is None:
        return None
    lib, pointer = reached
    session = lib.SSL_get1_session(pointer)
    return CachedSession(lib, context, ctx[1], int(session)) if session else None
