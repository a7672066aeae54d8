"""Validation of the text a person gives us (store names). Names are data, never identifiers:
Docker objects and paths derive from server-generated ids only."""

from __future__ import annotations

import unicodedata

NAME_MAX = 100
TOKENS_MAX = 10**9


def clean_nombre(value: str) -> str:
    """Trim and NFC-normalise a store name; refuse control characters and empty names."""
    value = unicodedata.normalize("NFC", value).strip()
    if not value:
        raise ValueError("nombre must not be empty")
    if len(value) > NAME_MAX:
        raise ValueError(f"nombre must be at most {NAME_MAX} characters")
    for ch in value:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn") or ch in "\u2028\u2029":
            raise ValueError(
                f"nombre must not contain control or invisible characters (found U+{ord(ch):04X})"
            )
    if not any(unicodedata.category(ch)[0] in "LN" for ch in value):
        raise ValueError("nombre must contain at least one letter or digit")
    return value


def nombre_key(value: str) -> str:
    """The form two names are compared in: case-, accent- and compatibility-insensitive,
    with runs of white space folded."""
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(unicodedata.normalize("NFKC", stripped).split())
