"""Masking known secrets in text, cheaply however many there are: every server's ping URL
is one, so a fleet has thousands, and every string of every log line, answer, status page
and notification is masked with all of them.

Each secret has one pattern (`secret_pattern`: every letter case, HTML entity and URL
encoding of it). Searching a text with every pattern costs a regex per secret per string,
and compiling them all again once they outnumber the cache (six seconds a string with
1,000 of them). So `Secrets` first narrows a text down to the secrets that may be in it,
soundly: a secret can only match where its last letters appear, as they are or decoded,
in the text; only those secrets' patterns are searched.
"""

from __future__ import annotations

import functools
import html
import html.entities
import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = ["Secrets", "mask", "secret_pattern"]

_FILTERED = re.compile(r"[^0-9A-Za-z_-]")
# The index's key: a secret's last letters, lower-cased (its start is often shared: the
# same service's URLs). A secret shorter than this, or holding a character whose decoding
# could merge with its neighbours, is searched in every text.
_TAIL = 8
# Up to this many secrets, searching each one's (cached) pattern costs less than narrowing.
_FEW = 32
# ASCII without `%`, `&`, `#`, `;`, `+`, space or `*` (a `***` put in place of another
# secret could complete one holding it): each letter is itself or `%HH` in any text.
_PLAIN = re.compile(r"[A-Za-z0-9!$'(),./:=?@_~-]+")
# Letters of other scripts that a case-insensitive pattern matches to an ASCII one.
_ASCII_CASES = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def filtered(secret: str) -> str | None:
    """The form VICIdial echoes after its input filter, when it differs (3+ letters)."""
    form = _FILTERED.sub("", secret)
    return form if form != secret and len(form) >= 3 else None


@functools.lru_cache(maxsize=256)  # searched for the few candidates of a text only
def secret_pattern(secret: str) -> re.Pattern[str]:
    """Every form in which a secret may come back: in any letter case (a proxy or a PHP
    page may upper-case it), each character as itself, an HTML entity (`&#97;`, `&#x61;`,
    `&amp;`) or URL-encoded (`%61`, `+`), mixed freely (VICIdial or a web page may echo
    it escaped); and the *filtered* password VICIdial echoes on a failed login (the config
    refuses such passwords, but this is the last line of defence). Whatever its length: a
    short password masks innocent text too, which `check` warns about; it never leaks."""
    forms = [secret]
    if (echoed := filtered(secret)) is not None:
        forms.append(echoed)
    alternatives = ["".join(_char_forms(char) for char in form) for form in forms]
    return re.compile("|".join(alternatives), re.IGNORECASE)


def _char_forms(char: str) -> str:
    code = ord(char)
    forms = [re.escape(char), f"&#0*{code};?", f"&#x0*{code:x};?"]
    if code in html.entities.codepoint2name:
        forms.append(f"&{html.entities.codepoint2name[code]};")
    forms.append("".join(f"%{byte:02x}" for byte in char.encode()))
    if char == " ":
        forms.append(r"\+")
    return f"(?:{'|'.join(forms)})"


class Secrets(tuple[str, ...]):
    """Known secrets, longest first (a secret inside another is masked with it), indexed by
    their last letters. A tuple: anything that takes the secrets as an iterable still does."""

    _index: dict[str, tuple[str, ...]]
    _always: frozenset[str]

    def __new__(cls, secrets: Iterable[str] = ()) -> Secrets:
        self = super().__new__(cls, sorted({s for s in secrets if s}, key=len, reverse=True))
        index: dict[str, list[str]] = {}
        always = set()
        for secret in self:
            forms = [secret, *filter(None, [filtered(secret)])]
            # Letters to spare: a `%` or `&#` just before a secret may take its first one to
            # three into an escape of its own in the decoded view, never its last letters.
            if any(len(form) < _TAIL + 3 or not _PLAIN.fullmatch(form) for form in forms):
                always.add(secret)
                continue
            for form in forms:
                index.setdefault(form[-_TAIL:].lower(), []).append(secret)
        self._index = {tail: tuple(found) for tail, found in index.items()}
        self._always = frozenset(always)
        return self

    def candidates(self, text: str) -> list[str]:
        """The secrets that may be in `text` (all that are, maybe a few that are not),
        longest first."""
        if len(self) <= _FEW or not self._index:
            return list(self)
        found = set(self._always)
        for view in _views(text):
            tails = {view[i : i + _TAIL] for i in range(len(view) - _TAIL + 1)}
            for tail in tails & self._index.keys():
                found.update(self._index[tail])
        return sorted(found, key=len, reverse=True)


# The numeric entities of the plain letters (codes 33 to 126), decimal or hex, `;` or not.
# Read longest first, which is unambiguous for them: of `&#971` only `&#97` is one (`a`,
# then `1`), and a 3-digit code (100 to 126) has no 2-digit start that is one (10 to 12).
_ENTITY = re.compile(r"&#(?:[xX]0*([2-7][0-9a-fA-F])|0*(1[01][0-9]|12[0-6]|[3-9][0-9]));?")


def _letter(found: re.Match[str]) -> str:
    hexadecimal, decimal = found.groups()
    return chr(int(hexadecimal, 16) if hexadecimal else int(decimal))


def _views(text: str) -> set[str]:
    """`text` lower-cased as the patterns compare, as it is and decoded: each letter of a
    plain secret shows as itself in the decoded view however the text wrote it (itself in
    any case, `%HH`, or a numeric entity; a plain letter has no named one)."""
    views = {text}
    if "%" in text or "&#" in text:
        views.add(_ENTITY.sub(_letter, unquote(text, errors="replace")))
    return {view.translate(_ASCII_CASES).lower() for view in views}


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret in `secrets` written as `***`."""
    if not text:
        return text
    known = secrets if isinstance(secrets, Secrets) else Secrets(secrets)
    for secret in known.candidates(text):
        text = secret_pattern(secret).sub("***", text)
    return text
