"""Validation of the text a person gives us (store names). Names are data, never identifiers:
Docker objects and paths derive from server-generated ids only.

The rule is stated once, as a regular expression the OpenAPI schema publishes (`NOMBRE_PATTERN`,
valid in both Python's and ECMAScript's syntax), and `clean_nombre` enforces exactly that rule:
a client that follows the schema is never refused, and one that does not always is."""

from __future__ import annotations

import re
import unicodedata

NAME_MAX = 100
TOKENS_MAX = 10**9
# Characters a name may not hold: controls (Cc), invisible format characters such as zero-width
# spaces and bidi overrides (Cf), surrogates (Cs), private use (Co), line/paragraph separators;
# in the Basic Multilingual Plane, where every one that can hide or reorder text lives. The other
# planes' format characters are parts of legitimate text (the tag characters of flag emoji such as
# Scotland's, historic scripts' controls), and an ECMAScript pattern without the `u` flag could
# not name them anyway (it reads them as surrogate pairs).
_REFUSED_CATEGORIES = ("Cc", "Cf", "Cs", "Co")
_REFUSED_EXTRA = ("\u2028", "\u2029")


# The code point ranges of those, for this interpreter's Unicode database (a test recomputes them
# from `unicodedata`, so an upgrade that moves a character cannot go unnoticed).
REFUSED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x180E, 0x180E),
    (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xF8FF),
    (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB),
)  # fmt: skip


def refused_ranges() -> list[tuple[int, int]]:
    """The ranges computed from `unicodedata` (a scan of the BMP)."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x10000):
        ch = chr(cp)
        if unicodedata.category(ch) in _REFUSED_CATEGORIES or ch in _REFUSED_EXTRA:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    return ranges


def _class_body(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


# Surrogates (D800-DFFF) are left out of the published pattern: no UTF-8 text holds one and
# regular expression engines of other languages refuse to name them; `clean_nombre` still refuses
# one that a JSON escape (`"\\ud800"`) smuggles in.
_SURROGATES = (0xD800, 0xDFFF)
_PUBLISHED = tuple(
    part
    for a, b in REFUSED_RANGES
    for part in (
        [(a, _SURROGATES[0] - 1), (_SURROGATES[1] + 1, b)]
        if a <= _SURROGATES[0] and b >= _SURROGATES[1]
        else [(a, b)]
    )
    if part[0] <= part[1]
)
_REFUSED = _class_body(_PUBLISHED)
# One visible (non-space) character at least, nothing refused anywhere; at most NAME_MAX characters
# (the schema says so with maxLength).
NOMBRE_PATTERN = f"^[^{_REFUSED}]*[^{_REFUSED}\\s][^{_REFUSED}]*$"
_NOMBRE = re.compile(NOMBRE_PATTERN)


def clean_nombre(value: str) -> str:
    """Check a store name against the published rule, then trim and NFC-normalise it."""
    if len(value) > NAME_MAX:
        raise ValueError(f"nombre must be at most {NAME_MAX} characters")
    if not value.strip():
        raise ValueError("nombre must not be empty")
    bad = next((ch for ch in value if _SURROGATES[0] <= ord(ch) <= _SURROGATES[1]), None)
    # fullmatch: `$` as ECMAScript reads it (no final \n)
    if bad is None and not _NOMBRE.fullmatch(value):
        bad = next(ch for ch in value if not re.match(f"[^{_REFUSED}]", ch))
    if bad is not None:
        raise ValueError(
            f"nombre must not contain control or invisible characters (found U+{ord(bad):04X})"
        )
    return unicodedata.normalize("NFC", value.strip())


def nombre_key(value: str) -> str:
    """The form two names are compared in: case-, accent- and compatibility-insensitive,
    with runs of white space folded."""
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(unicodedata.normalize("NFKC", stripped).split())
