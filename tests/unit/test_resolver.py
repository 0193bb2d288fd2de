"""The certificate resolver: address, `*`, default section and SNI name -> section."""

from __future__ import annotations

from pathlib import Path

from ftps_server.config.model import CertificateEntry
from ftps_server.config.resolver import CertificateResolver, is_default


def _entry(
    name: str, *addresses: str, default: bool = False, names: tuple[str, ...] = ()
) -> CertificateEntry:
    return CertificateEntry(
        name, Path(f"/x/{name}.pem"), Path(f"/x/{name}.key"), addresses, default, names
    )


def test_named_address_wins_over_the_default() -> None:
    main, partner = _entry("main", default=True), _entry("partner", "192.0.2.11")
    r = CertificateResolver([main, partner])
    assert r.for_address("192.0.2.11") is partner
    assert r.for_address("192.0.2.99") is main
    assert r.for_address("*") is main
    assert r.names("192.0.2.11") and not r.names("192.0.2.99")
    assert r.named_addresses() == ["192.0.2.11"]


def test_star_address_is_the_default() -> None:
    star, other = _entry("star", "*"), _entry("other", "::1")
    assert is_default(star) and not is_default(other)
    r = CertificateResolver([other, star])
    assert r.default is star
    assert r.for_address("127.0.0.5") is star
    assert r.for_address("::1") is other
    assert "*" not in r.named_addresses()


def test_without_default_an_unnamed_address_has_a_reason() -> None:
    r = CertificateResolver([_entry("one", "192.0.2.10")])
    assert r.for_address("192.0.2.20") is None
    assert r.problem_for("192.0.2.20") == (
        "no certificate is assigned to 192.0.2.20 and none is the default"
    )
    assert r.problem_for("192.0.2.10") is None


def test_sni_names_are_case_and_dot_insensitive() -> None:
    sni = _entry("sni", names=("ftp.example.com",))
    r = CertificateResolver([_entry("main", default=True), sni])
    assert r.for_name("FTP.Example.com.") is sni
    assert r.for_name("other.example.com") is None


def test_a_section_that_cannot_be_served_gives_its_reason() -> None:
    r = CertificateResolver(
        [_entry("main", default=True), _entry("ok", "192.0.2.1")], {"main": "expired"}
    )
    assert r.problem_for("192.0.2.9") == "certificate [main]: expired"
    assert r.problem_for("192.0.2.1") is None
