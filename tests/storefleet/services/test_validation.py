from __future__ import annotations

import re

import pytest

from storefleet.services.validation import (
    NOMBRE_PATTERN,
    REFUSED_RANGES,
    clean_nombre,
    nombre_key,
    refused_ranges,
)


@pytest.mark.parametrize(
    "name",
    [
        "Café Ñandú",
        "O'Brien's",
        "商店",
        "Tienda 24/7",
        "  spaced  ",
        "★★★",
        "!!!",
        "flag \U0001f3f4\U000e0067\U000e0062\U000e007f",
    ],
)
def test_legitimate_names_are_kept(name: str) -> None:
    assert clean_nombre(name) == name.strip()


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "a\nb",
        "a\x00b",
        "\x1b[31mred",
        "zero\u200bwidth",
        "rtl\u202eoverride",
        "x" * 101,
        "trailing\n",
        "lone\ud800surrogate",
        "private\ue000use",
    ],
)
def test_hostile_or_empty_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        clean_nombre(name)


def test_name_key_ignores_case_accents_and_spacing() -> None:
    assert nombre_key("Café  Ñandú") == nombre_key("CAFE nandu")
    assert nombre_key("\uff34\uff49\uff45\uff4e\uff44\uff41") == nombre_key(
        "tienda"
    )  # full-width compatibility forms
    assert nombre_key("商店") != nombre_key("商场")


def test_published_pattern_is_the_rule() -> None:
    """The schema's pattern and the server agree: the ranges are this Unicode database's."""
    assert list(REFUSED_RANGES) == refused_ranges()
    pattern = re.compile(NOMBRE_PATTERN)
    for name in ["Café", "  a  ", "a\u200bb", " ", "x\x7f", "\u2028"]:
        accepted = True
        try:
            clean_nombre(name)
        except ValueError:
            accepted = False
        assert accepted == bool(pattern.fullmatch(name)), name
