"""住民票コード: 10 random digits + 1 check digit.

The official formula (MIC Notice No. 436 of 2002) could not be verified (JUKINET.md §2.2). This module
is the one replaceable place for it; the working hypothesis is the My-Number-style modulus 11 rule:
weights 2,3,4,5,6,7,2,3,4,5 from the right, r = S mod 11, check = 0 if r <= 1 else 11 - r.
"""

from typing import Final

RESIDENT_CODE_SCHEME: Final = "mod11-w2-7-unverified"
_WEIGHTS_FROM_RIGHT: Final = (2, 3, 4, 5, 6, 7, 2, 3, 4, 5)  # unrolled below, leftmost digit first


def resident_check_digit(body: str) -> int:
    """The check digit for a 10-digit body; raises ValueError for anything else."""
    if len(body) != 10 or not body.isascii() or not body.isdigit():
        raise ValueError(f"resident code body must be 10 ASCII digits, got {body!r}")
    d = body.encode()  # ASCII digit bytes (48-57): on every relay edge and agency call, keep it cheap
    total = 5 * d[0] + 4 * d[1] + 3 * d[2] + 2 * d[3] + 7 * d[4] + 6 * d[5] + 5 * d[6] + 4 * d[7] + 3 * d[8] + 2 * d[9]
    remainder = (total - 48 * 41) % 11  # 41: the sum of the weights, each byte counted 48 too high
    return 0 if remainder <= 1 else 11 - remainder


def resident_code_from_body(body: str) -> str:
    """The full 11-digit code for a 10-digit body."""
    return body + str(resident_check_digit(body))


def valid_resident_code(code: str) -> bool:
    """True for exactly 11 ASCII digits with a matching check digit."""
    if len(code) != 11 or not code.isascii() or not code.isdigit():
        return False
    return resident_check_digit(code[:10]) == int(code[10])
