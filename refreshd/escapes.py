"""Control characters made visible: the one rule for text a person reads, whether the CLI
prints it, a console log line carries it or the status page shows it.

Text from outside (VICIdial's answers, names, paths, arguments) may hold ESC sequences, CR
or BEL that would rewrite or hide what a terminal shows: `safe` writes them as Python
escapes (`\\x1b`). JSON needs nothing: json.dumps escapes them itself.
"""

from __future__ import annotations

__all__ = ["safe"]

_SPELLED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def safe(text: str) -> str:
    """`text` with every character a terminal would not simply print (C0/C1 controls, DEL,
    bidi overrides and other format characters, lone surrogates) written as an escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _SPELLED:
        return _SPELLED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
