"""safe_text: the one escaper of client text, for log lines, session events, check and pending."""

from __future__ import annotations

import random
import re
import sys

import pytest

from ftps_server.safe_text import before_controls, escape_controls, has_controls, is_control

# every class that is escaped, with its one spelling (the code point in hex)
ESCAPED = [
    ("\x00", "\\x00"),  # C0
    ("\t", "\\x09"),
    ("\n", "\\x0a"),
    ("\x0b", "\\x0b"),  # VT, FF and FS/GS/RS: line breaks to str.splitlines
    ("\x0c", "\\x0c"),
    ("\r", "\\x0d"),
    ("\x1b", "\\x1b"),
    ("\x1e", "\\x1e"),
    ("\x7f", "\\x7f"),  # DEL
    ("\x85", "\\x85"),  # C1: NEL
    ("\x9b", "\\x9b"),  # C1: CSI, ESC [ in one byte
    ("\u2028", "\\u2028"),  # line separator
    ("\u2029", "\\u2029"),  # paragraph separator
    ("\u202e", "\\u202e"),  # bidi override
    ("\u2066", "\\u2066"),  # bidi isolate
    ("\u200f", "\\u200f"),  # right-to-left mark
    ("\u200b", "\\u200b"),  # zero-width space
    ("\ufeff", "\\ufeff"),  # BOM
    ("\udcff", "\\udcff"),  # a byte that was not UTF-8 (surrogateescape)
    ("\U000e0001", "\\U000e0001"),  # language tag, a format character above the BMP
]

PLAIN = ["plain", "Jürgen", "日本", "björn@example.com", "CN=a\\, b", "C:\\Users\\bob", "\\", "é"]


@pytest.mark.parametrize(("char", "escaped"), ESCAPED)
def test_every_control_class_is_escaped(char: str, escaped: str) -> None:
    assert is_control(char) and has_controls(f"a{char}b")
    assert escape_controls(f"a{char}b") == f"a{escaped}b"


@pytest.mark.parametrize("text", PLAIN)
def test_text_of_any_script_is_left_alone(text: str) -> None:
    assert not has_controls(text)
    assert escape_controls(text) == text
    assert before_controls(text) == text


def test_a_log_line_stays_one_line() -> None:
    line = escape_controls("127.0.0.1:1-[a\nb] USER 'root' logged in.\r\x1b]0;x\x07\u2028")
    assert line == "127.0.0.1:1-[a\\x0ab] USER 'root' logged in.\\x0d\\x1b]0;x\\x07\\u2028"
    assert line.isprintable() and len(line.splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a\\x0ab", "a\\\\x0ab"),  # would read as an escaped line break
        ("a\\u2028", "a\\\\u2028"),
        ("a\\U0001f600", "a\\\\U0001f600"),
        ("a\\\\x0a", "a\\\\\\\\x0a"),
        ("a\\\n", "a\\\\\\x0a"),  # a backslash before an escaped character
        ("a\\\\b", "a\\\\\\b"),  # the first backslash precedes another
        ("a\\xg0 \\u12 \\U1234", "a\\xg0 \\u12 \\U1234"),  # too few hex digits: no escape
    ],
)
def test_a_backslash_cannot_forge_an_escape(text: str, escaped: str) -> None:
    assert escape_controls(text) == escaped
    assert _unescape(escaped) == text


def test_a_literal_escape_differs_from_the_character() -> None:
    assert escape_controls("a\\x0ab") != escape_controls("a\nb")


def test_escaping_reads_back_to_the_input() -> None:
    # injective: random strings over the characters that matter all read back unchanged
    alphabet = "\\xuU0aF9g\n\r\x85\u2028\u202e\udcffü日 "
    rng = random.Random(20261130)
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        escaped = escape_controls(text)
        assert not has_controls(escaped), repr(text)
        assert _unescape(escaped) == text, repr(text)


def test_before_controls_cuts_at_the_first() -> None:
    assert before_controls("NOOP\nPASS secret") == "NOOP"
    assert before_controls("CWD\x85x") == "CWD"
    assert before_controls("\u2028") == ""


_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")


def _unescape(text: str) -> str:
    """What a reader of the log takes `text` for: each escape one character."""
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(int(m[1][1:], 16)), text)


def test_every_escaped_character_is_one_isprintable_refuses() -> None:
    """`has_controls` clears printable text without looking at each character: that holds
    only while no escaped code point is printable (checked over all of Unicode here, for
    this Python's Unicode tables)."""
    printable = [
        f"U+{ord(c):04X}"
        for c in map(chr, range(sys.maxunicode + 1))
        if is_control(c) and c.isprintable()
    ]
    assert printable == []
    assert has_controls("plain text\u00a0with a no-break space\u2028")  # NBSP alone is not
    assert not has_controls("plain text\u00a0with a no-break space")
