"""The authorizer over config users and the home jail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pyftpdlib.authorizers import AuthenticationFailed

from ftps_server.config.model import Config, UserConfig
from ftps_server.server.users import JailedFS, UserAuthorizer, ensure_homes


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "sub" / "deeper").mkdir(parents=True)
    (home / "file.txt").write_text("inside")
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", home / "escape.txt")
    os.symlink(tmp_path, home / "escape-dir")
    os.symlink(home / "file.txt", home / "inner-link.txt")
    return home


def fs_for(home: Path, cwd: str = "/") -> JailedFS:
    fs = JailedFS(str(home), None)
    fs.cwd = cwd
    return fs


@pytest.mark.parametrize(
    ("cwd", "path"),
    [
        ("/", ".."),
        ("/", "../secret.txt"),
        ("/sub", "../.."),
        ("/sub/deeper", "../../../x"),
        ("/", "/../secret.txt"),
        ("/", "sub/../../secret.txt"),
    ],
)
def test_climbing_above_the_home_is_refused(home: Path, cwd: str, path: str) -> None:
    fs = fs_for(home, cwd)
    assert not fs.validpath(fs.ftp2fs(path))


@pytest.mark.parametrize(
    ("cwd", "path", "real"),
    [
        ("/", "file.txt", "file.txt"),
        ("/sub", "..", ""),
        ("/sub/deeper", "../../file.txt", "file.txt"),
        ("/sub", "/file.txt", "file.txt"),
        ("/", "/", ""),
    ],
)
def test_paths_inside_are_allowed(home: Path, cwd: str, path: str, real: str) -> None:
    fs = fs_for(home, cwd)
    mapped = fs.ftp2fs(path)
    assert os.path.normpath(mapped) == os.path.normpath(home / real)
    assert fs.validpath(mapped)


def test_absolute_client_paths_stay_in_the_jail(home: Path) -> None:
    fs = fs_for(home)
    assert fs.ftp2fs("/etc/passwd") == str(home / "etc" / "passwd")


def test_symlinks_out_refused_inside_allowed(home: Path) -> None:
    fs = fs_for(home)
    assert not fs.validpath(fs.ftp2fs("escape.txt"))
    assert not fs.validpath(fs.ftp2fs("escape-dir/secret.txt"))
    assert fs.validpath(fs.ftp2fs("inner-link.txt"))
    with pytest.raises(PermissionError):
        fs.open(fs.ftp2fs("escape.txt"), "rb")
    with pytest.raises(PermissionError):
        fs.listdir(fs.ftp2fs("escape-dir"))
    with fs.open(fs.ftp2fs("inner-link.txt"), "rb") as handle:
        assert handle.read() == b"inside"


def test_a_home_repointed_during_a_session_refuses_it_everything(tmp_path: Path) -> None:
    """The home is resolved once per session: re-pointing a symlinked home does not carry a
    running session to the new target (it is refused there), and a new session follows."""
    old, new = tmp_path / "old", tmp_path / "new"
    for target in (old, new):
        target.mkdir()
        (target / "file.txt").write_text(target.name)
    link = tmp_path / "home-link"
    os.symlink(old, link)
    fs = fs_for(link)
    assert fs.validpath(fs.ftp2fs("file.txt"))
    os.unlink(link)
    os.symlink(new, link)
    assert not fs.validpath(fs.ftp2fs("file.txt"))
    with pytest.raises(PermissionError):
        fs.open(fs.ftp2fs("file.txt"), "rb")
    later = fs_for(link)
    assert later.validpath(later.ftp2fs("file.txt"))


def test_authorizer_permissions_and_home(home: Path, tmp_path: Path) -> None:
    authz = UserAuthorizer((UserConfig("ann", home, permissions="elr"),))
    assert authz.get_home_dir("ann") == str(home)
    assert authz.get_perms("ann") == "elr"
    assert authz.has_perm("ann", "r", str(home / "file.txt"))
    assert not authz.has_perm("ann", "w", str(home / "file.txt"))
    assert not authz.has_perm("ann", "r", str(tmp_path / "secret.txt"))
    assert not authz.has_perm("ann", "r", str(home / "escape.txt"))
    assert not authz.has_perm("nobody", "r")
    with pytest.raises(AuthenticationFailed):
        authz.get_home_dir("nobody")
    with pytest.raises(AuthenticationFailed):
        authz.validate_authentication("ann", "pw", None)
    authz.update(())  # reload removing the user: every permission goes at once
    assert not authz.has_perm("ann", "r")


def test_ensure_homes_creates_0750_and_reports(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    config = Config(
        path=tmp_path / "x.ini",
        users=(
            UserConfig("new", tmp_path / "srv" / "new"),
            UserConfig("bad", blocker),
            UserConfig("worse", blocker / "below"),
        ),
    )
    problems = ensure_homes(config)
    assert stat.S_IMODE((tmp_path / "srv" / "new").stat().st_mode) == 0o750
    assert set(problems) == {"bad", "worse"}
    assert "not a directory" in problems["bad"]
    assert "cannot create home directory" in problems["worse"]


# --- uploads open late; links out of the home are not described ---------------------------


@pytest.mark.parametrize("mode", ["wb", "ab"])
def test_upload_destination_changes_only_when_opened(home: Path, mode: str) -> None:
    fs = fs_for(home)
    target = home / "precious.bin"
    target.write_bytes(b"keep me")
    deferred = fs.open(str(target), mode)
    assert target.read_bytes() == b"keep me"  # nothing truncated or created yet
    deferred.close()  # a refused data connection: closed unopened
    assert target.read_bytes() == b"keep me"
    new = fs.open(str(home / "new.bin"), mode)
    assert not (home / "new.bin").exists()
    new.open()
    new.write(b"data")
    new.close()
    assert (home / "new.bin").read_bytes() == b"data"


def test_upload_destination_checks_at_command_time(home: Path) -> None:
    fs = fs_for(home)
    with pytest.raises(IsADirectoryError):
        fs.open(str(home / "sub"), "wb")
    with pytest.raises(FileNotFoundError):
        fs.open(str(home / "missing" / "f"), "wb")


def test_rest_offset_is_applied_when_opened(home: Path) -> None:
    target = home / "part.bin"
    target.write_bytes(b"0123456789")
    deferred = fs_for(home).open(str(target), "ab")
    deferred.seek(4)
    deferred.open()
    deferred.write(b"xy")
    deferred.close()
    assert target.read_bytes() == b"0123456789xy"  # "ab" appends whatever the offset


def test_stou_name_is_created_only_when_opened(home: Path) -> None:
    fs = fs_for(home)
    deferred = fs.mkstemp(prefix="up.", dir=str(home))
    assert os.path.dirname(deferred.name) == str(home)
    assert not os.path.lexists(deferred.name)
    deferred.open()
    assert os.path.exists(deferred.name)
    deferred.close()


def test_readlink_withholds_targets_outside_and_virtualizes_inside(
    home: Path, tmp_path: Path
) -> None:
    fs = fs_for(home)
    (home / "inside.txt").write_text("x")
    (home / "in").symlink_to(home / "inside.txt")
    (home / "rel").symlink_to("inside.txt")
    (home / "out").symlink_to(tmp_path)
    assert fs.readlink(str(home / "in")) == "/inside.txt"
    assert fs.readlink(str(home / "rel")) == "inside.txt"
    with pytest.raises(PermissionError):
        fs.readlink(str(home / "out"))
    with pytest.raises(PermissionError):
        fs.stat(str(home / "out"))
