from __future__ import annotations

import pytest

from storefleet.services.validation import clean_nombre, nombre_key


@pytest.mark.parametrize("name", ["Café Ñandú", "O'Brien's", "商店", "Tienda 24/7", "  spaced  "])
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
        "!!!",
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
