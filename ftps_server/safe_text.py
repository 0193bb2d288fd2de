"""Text that came from the network or from a client certificate, made safe for a terminal.

A client chooses its certificate's subject and a listener chooses its banner: printed raw,
ESC sequences retitle or repaint the administrator's terminal and line breaks forge output
(a fake `config:` block, a fake status line). Control characters are shown as escapes.
"""

from __future__ import annotations

import unicodedata

__all__ = ["escape_controls", "has_controls"]

# Cc: C0/C1 controls and DEL; Cf: format characters such as bidi overrides (U+202E) that
# reorder what is shown; Zl/Zp: Unicode line and paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE


def has_controls(text: str) -> bool:
    """True when `text` holds a character `escape_controls` would escape."""
    return any(_unsafe(c) for c in text)


def escape_controls(text: str) -> str:
    """`text` with every control or format character written as \\xNN, \\uNNNN or \\UNNNNNNNN."""
    if not has_controls(text):
        return text
    out = []
    for char in text:
        if not _unsafe(char):
            out.append(char)
        elif ord(char) <= 0xFF:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)
