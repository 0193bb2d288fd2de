#!/usr/bin/env python3
"""A download client that costs the server's machine almost nothing (benches only).

    echo PASSWORD | python3 bench/sink_client.py --port P --user U --cafile CA \
        --source 127.0.0.2 --file file.bin --size BYTES

On a machine with few cores, curl's decryption takes the CPU a multi-process server would
need to show that it uses more than one core (4 curl downloads at 1.1 GB/s take ~0.7 of this
VM's 2 cores). This client logs in over explicit FTPS with PROT P, completes the data
connection's TLS handshake (resuming the control connection's session, as servers that
require reuse demand), then lets the kernel drop the encrypted records undecrypted and uncopied
(`MSG_TRUNC`): only TCP's own receive work remains on the client's side. The server does all
of its usual work. It checks what it can without decrypting: the server's `226`, and at
least `--size` bytes of records (TLS adds ~0.1 %).

Prints the record bytes received; exits 1 with a message on any failure.
"""

from __future__ import annotations

import argparse
import ftplib
import socket
import ssl
import sys

HOST = "127.0.0.1"
TIMEOUT = 120.0


def _handshake(
    sock: socket.socket, tls: ssl.SSLObject, outgoing: ssl.MemoryBIO, incoming: ssl.MemoryBIO
) -> None:
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("data connection closed in the TLS handshake") from None
            incoming.write(data)
    pending = outgoing.read()
    if pending:
        sock.sendall(pending)  # the client's Finished


def download(port: int, user: str, password: str, cafile: str, source: str, name: str) -> int:
    """Record bytes of one PROT P download of `name`, read and discarded undecrypted."""
    context = ssl.create_default_context(cafile=cafile)
    ftp = ftplib.FTP_TLS(context=context, timeout=TIMEOUT, source_address=(source, 0))
    ftp.connect(HOST, port)
    ftp.auth()
    ftp.login(user, password)
    ftp.prot_p()
    ftp.voidcmd("TYPE I")
    _, data_port = ftplib.parse229(ftp.sendcmd("EPSV"), HOST)
    sock = socket.create_connection((HOST, data_port), TIMEOUT, source_address=(source, 0))
    reply = ftp.sendcmd(f"RETR {name}")
    if not reply.startswith("1"):
        raise ftplib.error_reply(reply)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    control = ftp.sock
    assert isinstance(control, ssl.SSLSocket)
    tls = context.wrap_bio(incoming, outgoing, server_hostname=HOST, session=control.session)
    _handshake(sock, tls, outgoing, incoming)
    received = incoming.pending
    # MSG_TRUNC: Linux drops TCP data without copying it out (tcp(7)); the buffer is never
    # written, so its pages are never touched
    buffer = bytearray(1 << 22)
    # wake up once per 1 MiB queued, not for every segment: fewer client wake-ups to compete
    # with the server for the CPU (EOF still ends the wait)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1 << 20)
    while n := sock.recv_into(buffer, len(buffer), socket.MSG_TRUNC):
        received += n
    sock.close()
    ftp.voidresp()  # 226, or an error reply raises
    ftp.quit()
    return received


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--source", default=HOST)
    parser.add_argument("--file", required=True)
    parser.add_argument("--size", type=int, required=True, help="the file's size in bytes")
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")
    try:
        received = download(args.port, args.user, password, args.cafile, args.source, args.file)
    except (OSError, ssl.SSLError, ftplib.Error, EOFError) as exc:
        print(f"sink_client: {args.source}: {exc}", file=sys.stderr)
        return 1
    if received < args.size:
        print(f"sink_client: {args.source}: {received} bytes < {args.size}", file=sys.stderr)
        return 1
    print(received)
    return 0


if __name__ == "__main__":
    sys.exit(main())
