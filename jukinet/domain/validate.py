"""Edge validation: raw field values in, domain objects out, InvalidField naming the field otherwise.

Every node validates at its edge (register intake, relay receive): nothing is auto-corrected except
Unicode NFC normalization of names and addresses, which the design mandates.
"""

import datetime as dt
import re
import time
import unicodedata
from zoneinfo import ZoneInfo

from jukinet.codes import valid_local_gov_code, valid_resident_code
from jukinet.domain.errors import InvalidField
from jukinet.domain.model import (
    ASSIGNING_REASONS,
    CREATE_REASONS,
    ChangeReason,
    Effect,
    EventRow,
    IdentityItems,
    RegisterChange,
    Sex,
    effect_of,
)
from jukinet.domain.normalize import search_key

JST = ZoneInfo("Asia/Tokyo")
_ONE_DAY = dt.timedelta(days=1)
MAX_NAME_CHARS = 100
MAX_ADDRESS_CHARS = 200
MAX_REQUEST_ID_CHARS = 64
EARLIEST_DATE = dt.date(1850, 1, 1)
_ISO_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_EDGE_SPACES = " \u3000\t"
_MAX_KEY_EXPANSION = 18  # characters one character can become: U+FDFA under NFKC
_MAX_CASEFOLD_EXPANSION = 3  # characters one character can become under full case folding (U+0390)
_REASONS = {int(member): member for member in ChangeReason}
_SEXES = {int(member): member for member in Sex}


_today_cache: tuple[float, dt.date] = (0.0, dt.date.min)


def today_jst() -> dt.date:
    """Today in Japan (cached for a second: it sits on the per-record validation path)."""
    global _today_cache
    now = time.monotonic()
    if now >= _today_cache[0]:
        _today_cache = (now + 1.0, dt.datetime.now(JST).date())
    return _today_cache[1]


def text(field: str, value: str, *, max_chars: int, required: bool = True) -> str:
    """NFC-normalized text without control, format, private-use or unassigned characters."""
    if not isinstance(value, str):
        raise InvalidField(field, "must be a string")
    normalized = value if unicodedata.is_normalized("NFC", value) else unicodedata.normalize("NFC", value)
    if not normalized:
        if required:
            raise InvalidField(field, "is required")
        return ""
    if len(normalized) > max_chars:
        raise InvalidField(field, f"is {len(normalized)} characters long; the limit is {max_chars}")
    if normalized[0] in _EDGE_SPACES or normalized[-1] in _EDGE_SPACES:
        raise InvalidField(field, "has leading or trailing spaces; send the value as registered")
    # The refused categories are all non-printable (Unicode "Other" or "Separator"), so a printable value
    # passes at C speed; so does one whose only other separators are ideographic spaces (山田\u3000太郎).
    if normalized.isprintable() or normalized.replace("\u3000", " ").isprintable():
        return normalized
    for position, char in enumerate(normalized):  # other spaces (NBSP ...) are not printable but allowed
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidField(
                field,
                f"character U+{ord(char):04X} at position {position} is not allowed (control or unassigned)",
            )
    return normalized


def searchable(field: str, value: str, *, max_chars: int) -> str:
    """A name or address whose search key (NFKC, folded: the center stores and indexes it with the same
    limit) still fits: a few characters expand (ß -> ss, ㍻ -> 平成, U+FDFA -> 18 characters)."""
    if value.isascii() or len(value) * _MAX_KEY_EXPANSION <= max_chars:
        return value  # cannot expand past the limit (ASCII never does): skip the key on the hot path
    if len(value) * _MAX_CASEFOLD_EXPANSION <= max_chars and unicodedata.is_normalized("NFKC", value):
        return value  # NFKC leaves it as it is, the kana and space folding never lengthen: only casefold can
    length = len(search_key(value))
    if length > max_chars:
        raise InvalidField(
            field,
            f"its search form (NFKC, case-folded) is {length} characters long; the limit is {max_chars} "
            "(compatibility characters such as ligatures or squared signs expand; send the plain form)",
        )
    return value


def iso_date(field: str, value: str, *, today: dt.date | None = None) -> dt.date:
    """A real calendar date written YYYY-MM-DD, not before 1850 and not after today (JST)."""
    if not isinstance(value, str) or not value:
        raise InvalidField(field, "is required (YYYY-MM-DD)")
    if not _ISO_DATE.match(value):
        raise InvalidField(field, f"{value[:20]!r} is not a date in the form YYYY-MM-DD")
    try:
        parsed = dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidField(field, f"{value!r} is not a real calendar date") from None
    if parsed < EARLIEST_DATE:
        raise InvalidField(field, f"{value} is before {EARLIEST_DATE.isoformat()}")
    limit = today or today_jst()
    if parsed > limit:
        raise InvalidField(field, f"{value} is in the future (today is {limit.isoformat()} JST)")
    return parsed


def resident_code(field: str, value: str) -> str:
    if not isinstance(value, str) or len(value) != 11 or not value.isascii() or not value.isdigit():
        raise InvalidField(field, "must be exactly 11 ASCII digits (住民票コード)")
    if not valid_resident_code(value):
        raise InvalidField(field, "check digit does not match; re-check the code as written on the record")
    return value


def local_gov_code(field: str, value: str) -> str:
    if not isinstance(value, str) or len(value) != 6 or not value.isascii() or not value.isdigit():
        raise InvalidField(field, "must be exactly 6 ASCII digits (全国地方公共団体コード)")
    if not valid_local_gov_code(value):
        raise InvalidField(field, "is not a valid local-government code (prefecture 01–47 and check digit)")
    return value


def reason(field: str, value: int) -> ChangeReason:
    found = _REASONS.get(value)  # a dict, not ChangeReason(value): several times cheaper, per record
    if found is None:
        if value == 0:
            raise InvalidField(field, "is unspecified; send one of the 異動事由 values")
        raise InvalidField(field, f"{value} is not a known 異動事由")
    return found


def sex(field: str, value: int) -> Sex:
    found = _SEXES.get(value)
    if found is None:
        if value == 0:
            raise InvalidField(field, "is unspecified; send SEX_MALE or SEX_FEMALE")
        raise InvalidField(field, f"{value} is not a known sex value")
    return found


def request_id(field: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidField(field, "is required: a unique id the caller reuses on every retry")
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidField(field, f"is longer than {MAX_REQUEST_ID_CHARS} characters")
    if not value.isascii() or not value.isprintable() or " " in value:  # ASCII printable is 32-126
        raise InvalidField(field, "must be printable ASCII without spaces")
    return value


def identity_items(
    prefix: str,
    *,
    name: str,
    alias: str,
    birth_date: str,
    sex_value: int,
    address: str,
    today: dt.date | None = None,
) -> IdentityItems:
    """The four items and 通称; a refusal names the field under `prefix` ("items.name")."""
    try:
        name, alias, address = _item_texts(name, alias, address)
        # Positional, in field order: keywords cost about twice as much per record.
        return IdentityItems(
            name, iso_date("birth_date", birth_date, today=today), sex("sex", sex_value), address, alias
        )
    except InvalidField as error:  # the prefixed name is built only for a refusal: this runs per record
        raise InvalidField(prefix + error.field, error.problem) from None


def _item_texts(name: str, alias: str, address: str) -> tuple[str, str, str]:
    """Name, 通称 and address as stored (NFC), for identity_items and relayed_event alike."""
    return (
        searchable("name", text("name", name, max_chars=MAX_NAME_CHARS), max_chars=MAX_NAME_CHARS),
        text("alias", alias, max_chars=MAX_NAME_CHARS, required=False),
        searchable("address", text("address", address, max_chars=MAX_ADDRESS_CHARS), max_chars=MAX_ADDRESS_CHARS),
    )


def register_change(
    *,
    request_id_value: str,
    reason_value: int,
    effective_date: str,
    resident_code_value: str,
    items: IdentityItems | None,
    today: dt.date | None = None,
) -> RegisterChange:
    """Cross-field rules for a change from the register system (items are validated by the caller)."""
    rid = request_id("request_id", request_id_value)
    why = reason("reason", reason_value)
    when = iso_date("effective_date", effective_date, today=today)
    code: str | None = None
    if why is ChangeReason.BIRTH:
        if resident_code_value:
            raise InvalidField("resident_code", "must be empty for a birth: the node assigns the code")
    elif resident_code_value:
        code = resident_code("resident_code", resident_code_value)
    elif why not in ASSIGNING_REASONS:
        raise InvalidField("resident_code", f"is required for {why.name}")
    needs_items = why in CREATE_REASONS or (effect_of(why) is Effect.CORRECT and why is not ChangeReason.CODE_CHANGE)
    if needs_items and items is None:
        raise InvalidField("items", f"name, birth_date, sex and address are required for {why.name}")
    if items is not None and when < items.birth_date:
        raise InvalidField("effective_date", "is before the birth date")
    if why is ChangeReason.BIRTH and items is not None and items.birth_date != when:
        raise InvalidField("effective_date", "must equal the birth date for a birth")
    return RegisterChange(rid, why, when, code, items)  # positional, in field order (per record)


_CODE_CHANGE = int(ChangeReason.CODE_CHANGE)


def relayed_event(
    *,
    origin: str,
    seq: int,
    resident_code_value: str,
    previous_code: str,
    reason_value: int,
    effective_date: str,
    recorded_us: int,
    name: str,
    alias: str,
    birth_date: str,
    sex_value: int,
    address: str,
    latest_effective: dt.date,
) -> EventRow:
    """A relayed event, checked again at the receiving edge, in flat form (the same rules as a register
    change's fields: identity_items, resident_code, reason, iso_date). `origin` must already be validated
    (local_gov_code), once per batch, and `recorded_us` range-checked by the caller; dates after
    `latest_effective` are refused (the sender's clock may run ahead of ours). The caller names the event
    in a refusal; item fields are refused as "items.<field>"."""
    if seq < 1:
        raise InvalidField("seq", "must be 1 or more")
    reason("reason", reason_value)
    if reason_value == _CODE_CHANGE:
        resident_code("previous_code", previous_code)
    elif previous_code:
        raise InvalidField("previous_code", "is only allowed on a code change")
    resident_code("resident_code", resident_code_value)
    iso_date("effective_date", effective_date, today=latest_effective)
    try:
        name, alias, address = _item_texts(name, alias, address)
        iso_date("birth_date", birth_date, today=latest_effective)
        sex("sex", sex_value)
    except InvalidField as error:  # the prefixed name is built only for a refusal
        raise InvalidField("items." + error.field, error.problem) from None
    return EventRow(
        origin,
        seq,
        resident_code_value,
        previous_code,
        reason_value,
        effective_date,
        recorded_us,
        name,
        alias,
        birth_date,
        sex_value,
        address,
    )


def page_token(field: str, value: str) -> int | None:
    """A page token this node issued: a positive 64-bit row id written in ASCII digits; None when empty."""
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) >= 2**63:
        raise InvalidField(field, "is not a token this node issued; start again without one")
    return int(value)
