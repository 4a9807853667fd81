"""Check digits for 全国地方公共団体コード and 住民票コード (pure functions, no I/O)."""

from jukinet.codes.local_gov import local_gov_check_digit, prefecture_of, valid_local_gov_code
from jukinet.codes.resident import (
    RESIDENT_CODE_SCHEME,
    resident_check_digit,
    resident_code_from_body,
    valid_resident_code,
)

__all__ = [
    "RESIDENT_CODE_SCHEME",
    "local_gov_check_digit",
    "prefecture_of",
    "resident_check_digit",
    "resident_code_from_body",
    "valid_local_gov_code",
    "valid_resident_code",
]
