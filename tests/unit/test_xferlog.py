"""xferlog: the wu-ftpd line format, appends that survive logrotate, failures that never raise."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from ftps_server.journal import xferlog
from ftps_server.journal.xferlog import TransferLogFile, xferlog_line


def _line(**kw: object) -> str:
    base: dict[str, object] = dict(
        when=time.mktime((2026, 11, 3, 7, 11, 9, 0, 0, -1)),
        seconds=2.6,
        remote_host="192.0.2.7",
        size=5000000,
        filename="/srv/ftp/bob/x.bin",
        binary=True,
        incoming=True,
        user="bob",
        complete=True,
    )
    base.update(kw)
    return xferlog_line(**base)  # type: ignore[arg-type]


def test_line_is_the_wu_ftpd_format() -> None:
    # xferlog(5): ctime date, then 13 single-space separated fields
    assert (
        _line()
        == "Tue Nov  3 07:11:09 2026 3 192.0.2.7 5000000 /srv/ftp/bob/x.bin b _ i r bob ftp 0 * c\n"
    )
    out = _line(seconds=0.01, binary=False, incoming=False, complete=False)
    assert out.endswith(" 1 192.0.2.7 5000000 /srv/ftp/bob/x.bin a _ o r bob ftp 0 * i\n")


def test_whitespace_cannot_shift_fields() -> None:
    line = _line(filename="/srv/ftp/bob/a b\tc\nd.bin", user="")
    fields = line.rstrip("\n").split()
    assert fields[8] == "/srv/ftp/bob/a_b_c_d.bin"
    assert fields[13] == "-" and len(fields) == 18
    assert line.count("\n") == 1


def test_appends_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "xferlog"
    log = TransferLogFile(path)
    assert log.append("one\n")
    assert oct(path.stat().st_mode & 0o777) == oct(0o640 & ~_umask())
    path.rename(tmp_path / "xferlog.1")  # logrotate without copytruncate
    assert log.append("two\n")  # a new file at the path, not the rotated one
    assert (tmp_path / "xferlog.1").read_text() == "one\n"
    assert path.read_text() == "two\n"
    os.truncate(path, 0)  # copytruncate: the same file, cut to zero
    assert log.append("three\n")
    assert path.read_text() == "three\n"  # O_APPEND: no hole of NULs before it
    (tmp_path / "xferlog").unlink()
    assert log.append("four\n")
    assert path.read_text() == "four\n"
    log.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failure_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ftps_server.journal.xferlog")
    log = TransferLogFile(tmp_path / "missing-dir" / "xferlog")
    assert not log.append("x\n")
    assert not log.append("y\n")
    assert len(caplog.records) == 1 and "missing-dir" in caplog.records[0].getMessage()
    (tmp_path / "missing-dir").mkdir()
    assert log.append("z\n")  # works again once the directory is there
    log.close()


def test_one_file_per_path(tmp_path: Path) -> None:
    path = tmp_path / "xferlog"
    assert xferlog.append_line(path, "a\n") and xferlog.append_line(path, "b\n")
    xferlog.close_all()
    assert xferlog.append_line(path, "c\n")
    assert path.read_text() == "a\nb\nc\n"
    xferlog.close_all()
