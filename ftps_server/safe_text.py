"""Text a client or a peer chose, made safe for a log line or a terminal: the one escaper.

A client chooses its user name, its paths and its certificate's subject, and a listener
chooses its banner: written raw, a line break forges a log entry or a fake `config:` block,
ESC sequences retitle or repaint the administrator's terminal, and bidi overrides reorder
what is shown. Every place that logs or prints such text (pyftpdlib's log lines, session
events, `check`, `pending-certs`) escapes it here, and the `USER` check refuses a name
holding what is escaped here.

What is escaped (`is_control`), by Unicode category:
  Cc  C0 controls (CR, LF, TAB, ESC, also VT, FF and FS/GS/RS, which `str.splitlines`
      and some viewers take as line breaks), DEL and C1 controls (NEL U+0085, CSI U+009B);
  Cf  format characters: bidi overrides and isolates (U+202A-U+202E, U+2066-U+2069),
      marks (U+200E, U+200F, U+061C), zero-width characters, soft hyphen, BOM;
  Cs  lone surrogates: bytes that were not UTF-8, decoded with surrogateescape; they
      cannot even be encoded for the journal or a terminal;
  Zl, Zp  U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR.
Letters, marks and symbols of any script ("Jürgen", "日本") are left alone.

One spelling everywhere: the code point in hex, `\\xNN` up to U+00FF, `\\uNNNN` up to U+FFFF,
`\\UNNNNNNNN` above (LF is `\\x0a`, never `\\n`, so one rule reads every escape). A backslash
the text already holds is doubled where it would otherwise read as an escape (before another
backslash, an escaped character, or `x`/`u`/`U` and enough hex digits), so no client can
write a `\\x0a` that looks like an escaped line break; every other backslash (a Windows path,
an RFC 4514 `\\,`) stays as it is. Every escape in the output thus stands for one character
of the input, and the output reads back to exactly the input.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["before_controls", "escape_controls", "has_controls", "is_control"]

_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# what, after a backslash, would read as an escape (or as an escaped backslash)
_READS_AS_ESCAPE = re.compile(r"\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}")


def is_control(char: str) -> bool:
    """True for a character that is escaped (see the module docstring for which)."""
    return unicodedata.category(char) in _UNSAFE


def has_controls(text: str) -> bool:
    """True when `text` holds a control character (`is_control`)."""
    # every escaped character is one `str.isprintable` refuses (categories C* and Z* but
    # the space): printable text, nearly all of it, is cleared in C without a loop
    return not text.isprintable() and any(is_control(c) for c in text)


def before_controls(text: str) -> str:
    """`text` up to (without) its first control character."""
    if text.isprintable():
        return text
    for i, char in enumerate(text):
        if is_control(char):
            return text[:i]
    return text


def escape_controls(text: str) -> str:
    """`text` with every control character written as \\xNN, \\uNNNN or \\UNNNNNNNN.

    A backslash that would read as the start of an escape is written as two.
    """
    if "\\" not in text and not has_controls(text):
        return text
    out = []
    for i, char in enumerate(text):
        if is_control(char):
            out.append(_escape(char))
        elif char == "\\" and _escape_follows(text, i + 1):
            out.append("\\\\")
        else:
            out.append(char)
    return "".join(out)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_follows(text: str, i: int) -> bool:
    """True when a backslash written before `text[i:]` (escaped) would read as an escape."""
    if i == len(text):
        return False
    # an escaped character starts with a backslash; hex digits are never escaped
    return is_control(text[i]) or _READS_AS_ESCAPE.match(text, i) is not None
