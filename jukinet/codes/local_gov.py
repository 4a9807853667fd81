"""全国地方公共団体コード (JIS X 0402): 5 digits + 1 check digit.

Verified rule (JUKINET.md §3.2): weights 6,5,4,3,2 over digits 1–5; check = (11 - S % 11) % 10.
"""

_WEIGHTS = (6, 5, 4, 3, 2)


def local_gov_check_digit(body: str) -> int:
    """The check digit for a 5-digit body; raises ValueError for anything else."""
    if len(body) != 5 or not body.isascii() or not body.isdigit():
        raise ValueError(f"local-government code body must be 5 ASCII digits, got {body!r}")
    total = sum(int(d) * w for d, w in zip(body, _WEIGHTS, strict=True))
    return (11 - total % 11) % 10


def valid_local_gov_code(code: str) -> bool:
    """True for 6 ASCII digits whose prefecture part is 01–47 and whose check digit matches."""
    if len(code) != 6 or not code.isascii() or not code.isdigit():
        return False
    if not 1 <= int(code[:2]) <= 47:
        return False
    return local_gov_check_digit(code[:5]) == int(code[5])


def prefecture_of(code: str) -> str:
    """The 2-digit prefecture code (JIS X 0401) of a local-government code."""
    return code[:2]
