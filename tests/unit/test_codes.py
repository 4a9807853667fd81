"""Check digits of 全国地方公共団体コード and 住民票コード."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jukinet.codes import (
    local_gov_check_digit,
    resident_check_digit,
    resident_code_from_body,
    valid_local_gov_code,
    valid_resident_code,
)

VECTORS = ["132080", "132187", "012084", "133621", "011011", "130001"]
WEIGHTS = (6, 5, 4, 3, 2)


@pytest.mark.parametrize("code", VECTORS)
def test_published_local_gov_codes_are_accepted(code: str) -> None:
    assert valid_local_gov_code(code)


def _remainder(body: str) -> int:
    return sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11


@pytest.mark.parametrize("code", VECTORS)
def test_single_digit_changes_are_rejected_unless_the_formula_is_blind_to_them(code: str) -> None:
    accepted_changes = []
    for position in range(6):
        for digit in "0123456789":
            if digit == code[position]:
                continue
            changed = code[:position] + digit + code[position + 1 :]
            if valid_local_gov_code(changed):
                accepted_changes.append(changed)
    # The only blind spot of (11 - S % 11) % 10: remainders 0 and 10 both give check digit 1.
    for changed in accepted_changes:
        assert {_remainder(code[:5]), _remainder(changed[:5])} == {0, 10}, changed
        assert changed[5] == code[5]
        assert 1 <= int(changed[:2]) <= 47


def test_local_gov_worked_examples() -> None:
    assert local_gov_check_digit("13208") == 0
    assert local_gov_check_digit("13218") == 7
    assert local_gov_check_digit("01208") == 4
    assert local_gov_check_digit("13362") == 1  # r = 0 gives 1, unlike the My Number rule


@pytest.mark.parametrize("bad", ["", "13208", "1320800", "13208a", "１３２０８０", "482080", "002080", "132081"])
def test_malformed_local_gov_codes_are_rejected(bad: str) -> None:
    assert not valid_local_gov_code(bad)


def test_resident_code_worked_example() -> None:
    assert resident_check_digit("1234567890") == 3
    assert resident_code_from_body("1234567890") == "12345678903"
    assert valid_resident_code("12345678903")
    assert not valid_resident_code("12345678904")


@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_every_body_yields_a_valid_code(body: str) -> None:
    code = resident_code_from_body(body)
    assert len(code) == 11
    assert valid_resident_code(code)


@given(
    st.text(alphabet="0123456789", min_size=10, max_size=10),
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=1, max_value=9),
)
def test_single_digit_change_of_a_resident_code_is_caught_or_maps_to_the_shared_zero(
    body: str, position: int, delta: int
) -> None:
    code = resident_code_from_body(body)
    changed = code[:position] + str((int(code[position]) + delta) % 10) + code[position + 1 :]
    if valid_resident_code(changed):
        # Only possible where remainders 0 and 1 both map to check digit 0.
        assert changed[10] == "0"
        assert position < 10


@pytest.mark.parametrize("bad", ["", "1234567890", "123456789034", "1234567890a", "１２３４５６７８９０３"])
def test_malformed_resident_codes_are_rejected(bad: str) -> None:
    assert not valid_resident_code(bad)
