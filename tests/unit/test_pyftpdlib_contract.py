"""What the server assumes of pyftpdlib's internals, checked on the installed pyftpdlib.

Each test names the `pyftpdlib_adapter` function whose assumption it checks and drives a real
pyftpdlib server, handler and data channel on loopback: an upgrade that renames, moves or
changes one of them fails here (run it against each supported version: 1.5.7, 2.0.1, 2.2.0).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from ftps_server.server import pyftpdlib_adapter as pyftpd

log = logging.getLogger(__name__)


class Handler(pyftpd.PassiveHook, FTPHandler):
    """A plain FTP handler with the adapter's PASV hook, recording what it is asked."""

    passive_calls: list[bool]

    def make_passive(self, extmode: bool, open_listener: Callable[[], None]) -> None:
        self.passive_calls = [*getattr(self, "passive_calls", []), extmode]
        open_listener()


class Client:
    """A raw control connection; the loop runs while it waits for replies."""

    def __init__(self, loop: IOLoop, address: tuple[str, int]) -> None:
        self.loop = loop
        self.sock = socket.create_connection(address[:2], timeout=5)
        self.sock.setblocking(False)
        self.buffer = b""

    def reply(self, timeout: float = 5.0) -> str:
        """The next complete reply (the last line of a multi-line one included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.buffer.split(b"\r\n")
            for n, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
                    self.buffer = b"\r\n".join(lines[n + 1 :])
                    return b"\r\n".join(lines[: n + 1]).decode()
            self.loop.loop(timeout=0.01, blocking=False)
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        raise TimeoutError(self.buffer)

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def spin(loop: IOLoop, until: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out waiting on the IOLoop"
        loop.loop(timeout=0.01, blocking=False)


class Site:
    def __init__(self, tmp_path: Path) -> None:
        self.loop = IOLoop()
        self.home = tmp_path / "home"
        self.home.mkdir()
        authorizer = DummyAuthorizer()
        authorizer.add_user("u", "p", str(self.home), perm="elradfmw")
        Handler.authorizer = authorizer
        self.server = FTPServer(("127.0.0.1", 0), Handler, ioloop=self.loop)
        self.clients: list[Client] = []

    def connect(self) -> tuple[Client, Handler]:
        before = set(self._handlers())
        client = Client(self.loop, self.server.socket.getsockname())
        self.clients.append(client)
        spin(self.loop, lambda: bool(set(self._handlers()) - before))
        (handler,) = set(self._handlers()) - before
        return client, handler

    def login(self) -> tuple[Client, Handler]:
        client, handler = self.connect()
        assert client.reply().startswith("220")
        assert client.cmd("USER u").startswith("331")
        assert client.cmd("PASS p").startswith("230")
        return client, handler

    def _handlers(self) -> Iterator[Handler]:
        return (o for o in list(self.loop.socket_map.values()) if isinstance(o, Handler))

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.loop.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    yield s
    s.close()


def test_disconnect_errnos() -> None:
    # ERRNOS_DISCONNECTED: the errnos a reset or a dead peer gives
    assert {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN} <= (
        pyftpd.ERRNOS_DISCONNECTED
    )


def test_retry_error_from_recv_means_nothing_to_read(site: Site) -> None:
    client, handler = site.connect()
    client.reply()

    def nothing(size: int) -> bytes:
        raise pyftpd.RetryError

    handler.recv = nothing  # type: ignore[method-assign]
    client.sock.sendall(b"NOOP\r\n")
    for _ in range(20):
        site.loop.loop(timeout=0.01, blocking=False)
    assert handler.connected and not pyftpd.is_closed(handler)
    del handler.recv
    assert client.reply().startswith("200")


def test_is_closed_follows_close(site: Site) -> None:
    _client, handler = site.connect()
    assert not pyftpd.is_closed(handler)
    handler.close()
    assert pyftpd.is_closed(handler)


def test_call_soon_errback_gets_the_failure(site: Site) -> None:
    seen: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    pyftpd.call_soon(site.loop, boom, errback=lambda: seen.append("errback"))
    pyftpd.call_soon(site.loop, seen.append, "later", errback=None, delay=0.01)
    spin(site.loop, lambda: "later" in seen)
    assert seen == ["errback", "later"]


def test_io_event_records(site: Site) -> None:
    _client, handler = site.connect()
    both = site.loop.READ | site.loop.WRITE
    pyftpd.set_io_events(handler, both)
    assert pyftpd.wanted_io_events(handler) == both
    assert handler._current_io_events == both  # the record modify_ioloop_events keeps
    handler.modify_ioloop_events(site.loop.READ)
    assert handler._current_io_events == site.loop.READ
    assert pyftpd.wanted_io_events(handler) == both  # ... and initiate_send compares this one
    handler.producer_fifo.clear()
    handler.initiate_send()
    assert pyftpd.wanted_io_events(handler) == site.loop.READ


def test_producer_fifo_drain(site: Site) -> None:
    _client, handler = site.login()
    ours, theirs = socket.socketpair()
    dtp = DTPHandler(ours, handler)
    dtp.initiate_send = lambda: None  # type: ignore[method-assign]  # keep the queue
    dtp.push(b"ab")
    dtp.push_with_producer(pyftpd.BufferedIteratorProducer(iter([b"c\r\n", b"d\r\n"])))
    dtp.close_when_done()
    fifo = dtp.producer_fifo
    assert pyftpd.next_chunk(fifo) == b"ab"
    assert pyftpd.next_chunk(fifo) == b"c\r\nd\r\n"  # the producer joins its lines
    assert pyftpd.next_chunk(fifo) is None and fifo[0] is None and len(fifo) == 1
    theirs.close()


@pytest.mark.parametrize("mode", ["I", "A"])
def test_retr_producer_read_into_a_buffer(site: Site, mode: str) -> None:
    # binary_file and next_chunk(read_file=): a binary RETR's producer hands its file over
    content = b"line one\r\nline two\n" * 100
    (site.home / "f.bin").write_bytes(content)
    client, handler = site.login()
    assert client.cmd(f"TYPE {mode}").startswith("200")
    assert pyftpd.transfer_type(handler) == mode.lower()
    ours, theirs = socket.socketpair()
    dtp = DTPHandler(ours, handler)
    dtp.initiate_send = lambda: None  # type: ignore[method-assign]  # keep the queue
    dtp.use_sendfile = lambda: False  # type: ignore[method-assign]  # as on a TLS connection
    handler.data_channel = dtp
    assert client.cmd("RETR f.bin").startswith("125")
    files: list[Any] = []
    buffer = memoryview(bytearray(len(content) + 10))

    def read(file: Any) -> memoryview:
        files.append(file)
        return buffer[: file.readinto(buffer)]

    sent = b""
    while (chunk := pyftpd.next_chunk(dtp.producer_fifo, read)) is not None:
        assert isinstance(chunk, memoryview) == (mode == "I")
        sent += bytes(chunk)
    assert dtp.producer_fifo[0] is None  # the close marker behind the exhausted producer
    if mode == "I":
        assert sent == content and files and files[0].name.endswith("f.bin")
    else:  # ASCII: pyftpdlib's more() converts line endings; the file is not handed over
        assert files == [] and sent.count(b"\r\n") == 200
    dtp.close()
    theirs.close()


def test_transfer_type_default(site: Site) -> None:
    _client, handler = site.connect()
    assert pyftpd.transfer_type(handler) == "a"  # RFC 959's default until TYPE I


def test_listing_producer_is_the_one_pyftpdlib_uses() -> None:
    # ftp.py tells a listing from a file by this class
    control = sys.modules[FTPHandler.__module__]
    assert vars(control)["BufferedIteratorProducer"] is pyftpd.BufferedIteratorProducer


def test_pasv_and_epsv_go_through_the_hook(site: Site) -> None:
    client, handler = site.login()
    assert not pyftpd.data_path_open(handler) and pyftpd.own_passive_listener(handler) is None
    assert client.cmd("PASV").startswith("227")
    assert client.cmd("EPSV").startswith("229")
    assert handler.passive_calls == [False, True]
    listener = pyftpd.own_passive_listener(handler)
    assert isinstance(listener, pyftpd.PassiveDTP) and pyftpd.data_path_open(handler)
    pyftpd.close_data_path(handler)
    assert not pyftpd.data_path_open(handler) and pyftpd.is_closed(listener)


def test_forget_data_path_closes_the_listener(site: Site) -> None:
    client, handler = site.login()
    assert client.cmd("PASV").startswith("227")
    listener = pyftpd.own_passive_listener(handler)
    pyftpd.forget_data_path(handler)
    assert pyftpd.is_closed(listener) and not pyftpd.data_path_open(handler)
    pyftpd.drop_passive_listener(handler)
    assert pyftpd.own_passive_listener(handler) is None


@pytest.mark.parametrize(("command", "receive"), [("NLST", False), ("STOR up.bin", True)])
def test_transfer_waiting_for_its_data_connection(site: Site, command: str, receive: bool) -> None:
    client, handler = site.login()
    assert client.cmd("PASV").startswith("227")
    assert client.cmd(command).startswith("150")
    queued = pyftpd.take_queued_transfer(handler)
    assert queued is not None
    file, cmd, received = queued
    assert (cmd, received) == (command.split()[0], receive)
    assert (file is not None) == receive
    if file is not None:
        file.close()
    assert pyftpd.take_queued_transfer(handler) is None


def test_extra_features_appear_in_feat(site: Site) -> None:
    client, handler = site.connect()
    client.reply()
    assert isinstance(pyftpd.extra_features(handler), list)
    pyftpd.set_extra_features(handler, ["AUTH TLS", "XCONTRACT"])
    assert pyftpd.extra_features(handler) == ["AUTH TLS", "XCONTRACT"]
    feat = client.cmd("FEAT")
    assert " AUTH TLS\r\n" in feat and " XCONTRACT\r\n" in feat


def test_session_flags(site: Site) -> None:
    _client, handler = site.connect()
    assert isinstance(pyftpd.debug_lines(handler), bool)
    assert "type" in pyftpd.mlst_facts(handler)


def test_data_channel_state_and_final_reply(site: Site) -> None:
    client, handler = site.login()
    ours, theirs = socket.socketpair()
    dtp = DTPHandler(ours, handler)
    handler.data_channel = dtp
    assert not pyftpd.dtp_initialized(dtp) and pyftpd.data_wrapper(dtp) is None
    assert not pyftpd.transfer_reply_set(dtp) and pyftpd.transfer_reply(dtp) == ""
    dtp.enable_receiving("a", "STOR")  # ASCII: line endings converted on the way in
    assert pyftpd.dtp_initialized(dtp)
    if pyftpd.data_wrapper(dtp) is not None:  # None where the OS line ending is CRLF
        assert pyftpd.data_wrapper(dtp)(b"x\r\ny") == b"x\ny"  # type: ignore[misc]
    pyftpd.set_transfer_reply(dtp, "522 contract reply.", log.warning)
    assert pyftpd.transfer_reply_set(dtp)
    assert pyftpd.transfer_reply(dtp) == "522 contract reply."
    dtp.close()  # the final reply goes out on the control connection, once
    assert client.reply() == "522 contract reply."
    assert handler.data_channel is None
    assert client.cmd("NOOP").startswith("200")
    theirs.close()


def test_set_transfer_reply_empty_sends_none(site: Site) -> None:
    client, handler = site.login()
    ours, theirs = socket.socketpair()
    dtp = DTPHandler(ours, handler)
    handler.data_channel = dtp
    pyftpd.set_transfer_reply(dtp, "", log.warning)
    dtp.close()
    assert client.cmd("NOOP").startswith("200")  # nothing came before it
    theirs.close()


def test_complete_login_does_what_handle_auth_success_does(site: Site) -> None:
    def run(login: Callable[[Handler, str], None]) -> dict[str, Any]:
        client, handler = site.connect()
        client.reply()
        handler.username, handler.password, handler.attempted_logins = "u", "secret", 2
        said: list[str] = []
        handler.respond = lambda line, logfun=None: said.append(line)  # type: ignore[method-assign]
        handler.log = lambda msg, logfun=None: None  # type: ignore[method-assign]
        handler.on_login = lambda name: said.append(f"on_login {name}")  # type: ignore[method-assign]
        before = dict(vars(handler))
        login(handler, str(site.home))
        after = {k: v for k, v in vars(handler).items() if before.get(k, ...) is not v}
        fs = after.pop("fs")
        assert fs.root == str(site.home)
        return {**after, "said": said[1:]}  # the reply itself differs: 230 vs 232

    theirs = run(lambda h, home: FTPHandler.handle_auth_success(h, home, "", "ok"))
    ours = run(lambda h, home: pyftpd.complete_login(h, home, "232 ok", "u"))
    assert (
        ours
        == theirs
        == {
            "authenticated": True,
            "password": "",
            "attempted_logins": 0,
            "said": ["on_login u"],
        }
    )


def test_clear_scheduled_drops_pending_calls(site: Site) -> None:
    ran: list[int] = []
    site.loop.call_later(0, ran.append, 1)
    pyftpd.clear_scheduled(site.loop)
    for _ in range(5):
        site.loop.loop(timeout=0.01, blocking=False)
    assert ran == []


def test_shared_ip_map_limits_across_servers(site: Site) -> None:
    other = FTPServer(("127.0.0.1", 0), Handler, ioloop=site.loop)
    shared: list[str] = []
    pyftpd.share_ip_map(site.server, shared)
    pyftpd.share_ip_map(other, shared)
    site.server.max_cons_per_ip = other.max_cons_per_ip = 1
    first, _ = site.connect()
    assert first.reply().startswith("220")
    assert shared == ["127.0.0.1"]
    second = Client(site.loop, other.socket.getsockname())
    site.clients.append(second)
    assert second.reply().startswith("421")  # counted with the first server's session


# pyftpdlib's private names the adapter wraps: none may appear anywhere else in the package
_PRIVATE = re.compile(
    r"\b(?:_ERRNOS_DISCONNECTED|_RetryError|_errback)\b"
    r"|\.(?:_wanted_io_events|_current_io_events|_resp|_initialized|_closed|_data_wrapper"
    r"|_extra_feats|_dtp_acceptor|_dtp_connector|_in_dtp_queue|_out_dtp_queue|_tasks"
    r"|_log_debug|_current_facts|_shutdown_connecting_dtp|_make_epasv|_fileno|ip_map"
    r"|passive_dtp|_current_type)\b"
    r"|pyftpdlib\.handlers\.ftp"
)


def test_no_private_pyftpdlib_name_outside_the_adapter() -> None:
    package = Path(pyftpd.__file__).parents[1]
    found = [
        f"{path.relative_to(package)}:{n}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "pyftpdlib_adapter.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _PRIVATE.search(line)
    ]
    assert found == []
