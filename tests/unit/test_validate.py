"""Edge validation of register changes: every refusal names the field and the problem."""

import datetime as dt
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jukinet.domain import validate
from jukinet.domain.errors import InvalidField
from jukinet.domain.model import ChangeReason, IdentityItems, Sex
from jukinet.domain.normalize import search_key

TODAY = dt.date(2026, 11, 22)
ITEMS = IdentityItems(
    name="山田\u3000太郎", birth_date=dt.date(1980, 4, 1), sex=Sex.MALE, address="東京都調布市小島町2丁目35番1号"
)


def _items(**overrides: object) -> IdentityItems:
    values: dict[str, object] = {
        "name": "山田\u3000太郎",
        "alias": "",
        "birth_date": "1980-04-01",
        "sex_value": 1,
        "address": "東京都調布市小島町2丁目35番1号",
    }
    values.update(overrides)
    return validate.identity_items("items.", today=TODAY, **values)  # type: ignore[arg-type]


def _change(**overrides: object) -> object:
    values: dict[str, object] = {
        "request_id_value": "r-1",
        "reason_value": int(ChangeReason.INTRA_MOVE),
        "effective_date": "2026-11-01",
        "resident_code_value": "12345678903",
        "items": ITEMS,
    }
    values.update(overrides)
    return validate.register_change(today=TODAY, **values)  # type: ignore[arg-type]


def test_a_valid_change_passes() -> None:
    change = _change()
    assert change is not None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "items.name"),
        ({"name": "山田\x00太郎"}, "items.name"),
        ({"name": "山田\u200b太郎"}, "items.name"),  # zero-width space (format character)
        ({"name": " 山田"}, "items.name"),
        ({"name": "あ" * 101}, "items.name"),
        ({"name": "\ud800"}, "items.name"),
        ({"address": "東京都\n調布市"}, "items.address"),
        ({"birth_date": "0000-00-00"}, "items.birth_date"),
        ({"birth_date": "2100-02-29"}, "items.birth_date"),
        ({"birth_date": "1980-02-30"}, "items.birth_date"),
        ({"birth_date": "1980/04/01"}, "items.birth_date"),
        ({"birth_date": "2027-01-01"}, "items.birth_date"),
        ({"sex_value": 0}, "items.sex"),
        ({"sex_value": 7}, "items.sex"),
    ],
)
def test_bad_items_are_refused_naming_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        _items(**overrides)
    assert caught.value.field == field
    assert caught.value.problem


def test_names_are_normalized_to_nfc() -> None:
    decomposed = "ガ"  # カ + combining voiced mark
    assert _items(name=decomposed).name == "ガ"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"request_id_value": ""}, "request_id"),
        ({"request_id_value": "has space"}, "request_id"),
        ({"reason_value": 0}, "reason"),
        ({"reason_value": 99}, "reason"),
        ({"resident_code_value": "12345678904"}, "resident_code"),
        ({"resident_code_value": "1234567890"}, "resident_code"),
        ({"resident_code_value": ""}, "resident_code"),
        ({"effective_date": "2026-13-01"}, "effective_date"),
        ({"effective_date": "1970-01-01"}, "effective_date"),  # before the birth date
        ({"items": None}, "items"),
        ({"reason_value": int(ChangeReason.BIRTH)}, "resident_code"),
    ],
)
def test_bad_changes_are_refused_naming_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidField) as caught:
        _change(**overrides)
    assert caught.value.field == field


def test_deaths_may_omit_items_and_births_need_no_code() -> None:
    death = _change(reason_value=int(ChangeReason.DEATH), items=None)
    assert death.items is None  # type: ignore[attr-defined]
    birth_items = IdentityItems(name="山田\u3000花子", birth_date=dt.date(2026, 11, 1), sex=Sex.FEMALE, address="x")
    birth = _change(reason_value=int(ChangeReason.BIRTH), resident_code_value="", items=birth_items)
    assert birth.resident_code is None  # type: ignore[attr-defined]


_REFUSED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@given(st.text(st.characters(codec=None), min_size=1, max_size=12))
def test_text_refuses_exactly_the_control_format_private_and_unassigned_characters(value: str) -> None:
    """The fast path (str.isprintable) and the per-character check agree with the category rule."""
    normalized = unicodedata.normalize("NFC", value)
    refused = any(unicodedata.category(c) in _REFUSED for c in normalized)
    edges = normalized[:1] in (" ", "\u3000", "\t") or normalized[-1:] in (" ", "\u3000", "\t")
    try:
        accepted = validate.text("name", value, max_chars=100)
    except InvalidField:
        assert refused or edges or not normalized
    else:
        assert not refused
        assert accepted == normalized


def test_text_keeps_ideographic_and_no_break_spaces_inside_a_value() -> None:
    assert validate.text("name", "山田\u3000太郎\u00a0様", max_chars=100) == "山田\u3000太郎\u00a0様"
    with pytest.raises(InvalidField, match="U\\+200B"):
        validate.text("name", "山田\u200b太郎", max_chars=100)


@pytest.mark.parametrize(("repeat", "accepted"), [(33, True), (34, False)])
def test_a_search_key_lengthened_by_case_folding_alone_is_still_held_to_the_limit(repeat: int, accepted: bool) -> None:
    """U+0390 is NFKC-stable and case-folds to three characters: the shortcut for NFKC-stable text
    (length x 3 within the limit) and the full key computation agree at the boundary (99 vs 102 > 100)."""
    name = "\u0390" * repeat
    assert unicodedata.is_normalized("NFKC", name)
    assert len(name.casefold()) == 3 * repeat
    if accepted:
        assert validate.searchable("name", name, max_chars=100) == name
    else:
        with pytest.raises(InvalidField, match="search form"):
            validate.searchable("name", name, max_chars=100)


@given(st.text(min_size=1, max_size=60))
def test_searchable_accepts_exactly_the_text_whose_search_key_fits(value: str) -> None:
    fits = len(search_key(value)) <= 40
    try:
        validate.searchable("name", value, max_chars=40)
    except InvalidField:
        assert not fits
    else:
        assert fits
