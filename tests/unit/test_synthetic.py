import datetime as dt
import random
import unicodedata
from collections import Counter

import pytest
from faker.providers.person.ja_JP import Provider as JaPersonProvider

from jukinet.codes import resident_code_from_body
from jukinet.domain import validate
from jukinet.domain.model import ChangeReason, IdentityItems, RegisterChange, Sex
from jukinet.synthetic import ResidentFactory, Workload, split_name

CHOFU, FUSSA, KITAMI = "132080", "132187", "012084"
TODAY = dt.date(2026, 5, 1)
SURNAMES = frozenset(str(pair[0]) for pair in JaPersonProvider.last_name_pairs)
MALE_NAMES = frozenset(str(pair[0]) for pair in JaPersonProvider.first_name_male_pairs)
FEMALE_NAMES = frozenset(str(pair[0]) for pair in JaPersonProvider.first_name_female_pairs)


def roundtrip_items(items: IdentityItems, today: dt.date = TODAY) -> IdentityItems:
    checked = validate.identity_items(
        "",
        name=items.name,
        alias=items.alias,
        birth_date=items.birth_date.isoformat(),
        sex_value=int(items.sex),
        address=items.address,
        today=today,
    )
    assert checked == items
    return checked


def roundtrip(change: RegisterChange, today: dt.date = TODAY) -> None:
    items = roundtrip_items(change.items, today) if change.items is not None else None
    checked = validate.register_change(
        request_id_value=change.request_id,
        reason_value=int(change.reason),
        effective_date=change.effective_date.isoformat(),
        resident_code_value=change.resident_code or "",
        items=items,
        today=today,
    )
    assert checked == change


def fake_code(rng: random.Random) -> str:
    return resident_code_from_body(f"{rng.randrange(10**10):010d}")


def populate(workload: Workload, rng: random.Random, count: int) -> None:
    for municipality in workload.municipality_codes:
        for change in workload.initial_population(municipality, count):
            roundtrip(change)
            workload.record_result(change, municipality, fake_code(rng))


def confirm(workload: Workload, municipality: str, change: RegisterChange, rng: random.Random) -> str:
    if change.resident_code is None or change.reason is ChangeReason.CODE_CHANGE:
        code = fake_code(rng)
    else:
        code = change.resident_code
    workload.record_result(change, municipality, code)
    return code


@pytest.fixture(scope="module")
def chofu() -> ResidentFactory:
    return ResidentFactory(CHOFU, seed=1, today=TODAY)


def test_items_pass_the_validators(chofu: ResidentFactory) -> None:
    for _ in range(500):
        roundtrip_items(chofu.items())


def test_names_come_from_faker_pairs(chofu: ResidentFactory) -> None:
    sexes = Counter[Sex]()
    for _ in range(1000):
        items = chofu.items()
        surname, given = split_name(items.name)
        assert items.name == f"{surname}\u3000{given}"
        assert surname in SURNAMES
        assert given in (MALE_NAMES if items.sex is Sex.MALE else FEMALE_NAMES)
        assert unicodedata.normalize("NFC", items.name) == items.name
        assert items.alias == "" or "\u3000" in items.alias
        sexes[items.sex] += 1
    assert 400 < sexes[Sex.MALE] < 600


@pytest.mark.parametrize(
    ("code", "prefix"), [(CHOFU, "東京都調布市"), (KITAMI, "北海道北見市"), (FUSSA, "東京都福生市")]
)
def test_addresses_lie_in_the_municipality(code: str, prefix: str) -> None:
    factory = ResidentFactory(code, seed=3)
    for _ in range(300):
        address = factory.items().address
        assert address.startswith(prefix)
        assert len(address) > len(prefix) + 3
        assert address == address.strip(" \u3000")
        assert len(address) <= validate.MAX_ADDRESS_CHARS
        assert address.endswith(("号", "番地")) or address[-1].isdigit()
        assert "(" not in address
        assert "（" not in address


def test_birth_dates_are_in_the_past_with_a_realistic_age_mix() -> None:
    factory = ResidentFactory(CHOFU, seed=5)
    today = validate.today_jst()
    ages = Counter[str]()
    for _ in range(3000):
        born = factory.items().birth_date
        assert born <= today
        age = (today - born).days / 365.25
        assert age < 105
        ages["0-20" if age < 20 else "40-75" if 40 <= age < 75 else "other"] += 1
    assert ages["40-75"] > 1.5 * ages["0-20"]
    assert factory.items(birth_date=dt.date(1990, 4, 1)).birth_date == dt.date(1990, 4, 1)


def test_same_seed_same_output() -> None:
    first = ResidentFactory(KITAMI, seed=42, today=TODAY)
    second = ResidentFactory(KITAMI, seed=42, today=TODAY)
    assert [first.items() for _ in range(50)] == [second.items() for _ in range(50)]
    assert (
        ResidentFactory(KITAMI, seed=43, today=TODAY).items() != ResidentFactory(KITAMI, seed=42, today=TODAY).items()
    )

    def run() -> list[tuple[str, RegisterChange]]:
        rng = random.Random(9)
        workload = Workload([CHOFU, KITAMI], seed=42, today=TODAY)
        populate(workload, rng, 50)
        produced: list[tuple[str, RegisterChange]] = []
        for _ in range(5):
            batch = workload.next_changes(40)
            for municipality, change in batch:
                confirm(workload, municipality, change, rng)
            produced.extend(batch)
        return produced

    assert run() == run()


def test_new_address_and_married_name(chofu: ResidentFactory) -> None:
    for _ in range(200):
        items = chofu.items()
        moved = chofu.new_address(items.address)
        assert moved != items.address
        assert moved.startswith("東京都調布市")
        married = chofu.married_name(items)
        assert split_name(married)[1] == split_name(items.name)[1]
        assert split_name(married)[0] != split_name(items.name)[0]
        assert split_name(married)[0] in SURNAMES


def test_unknown_municipality_is_refused() -> None:
    with pytest.raises(ValueError, match="no postal data"):
        ResidentFactory("130001", seed=1)  # 東京都 itself: a valid code without postal rows
    with pytest.raises(ValueError, match="not a valid"):
        ResidentFactory("13208", seed=1)


def test_initial_population_is_first_registrations() -> None:
    workload = Workload([CHOFU], seed=1, today=TODAY, run_id="t1")
    changes = list(workload.initial_population(CHOFU, 300))
    assert len({c.request_id for c in changes}) == 300
    assert all(c.request_id.startswith("t1-132080-init-") for c in changes)
    assert {c.reason for c in changes} <= {ChangeReason.ENTRY_FROM_ABROAD, ChangeReason.EX_OFFICIO_RECORD}
    for change in changes:
        roundtrip(change)
        assert change.resident_code is None
        assert change.items is not None
        assert change.items.birth_date <= change.effective_date <= TODAY
    assert workload.residents(CHOFU) == 0  # nothing confirmed yet
    rng = random.Random(1)
    for change in changes:
        workload.record_result(change, CHOFU, fake_code(rng))
    assert workload.residents(CHOFU) == 300
    assert workload.pending() == 0


def test_move_pairs_keep_the_code_and_are_adjacent() -> None:
    rng = random.Random(2)
    workload = Workload([CHOFU, FUSSA, KITAMI], seed=2, today=TODAY)
    populate(workload, rng, 100)
    batch = workload.next_changes(300)
    moves = 0
    for position, (municipality, change) in enumerate(batch):
        roundtrip(change)
        if change.reason is ChangeReason.MOVE_OUT:
            target, move_in = batch[position + 1]
            assert move_in.reason is ChangeReason.MOVE_IN
            assert move_in.resident_code == change.resident_code
            assert target != municipality
            assert move_in.items is not None
            assert change.items is None
            factory = workload.factory(target)
            assert move_in.items.address.startswith(factory.prefecture + factory.city)
            assert move_in.effective_date >= change.effective_date
            moves += 1
        if change.reason is ChangeReason.MOVE_IN:
            assert batch[position - 1][1].reason is ChangeReason.MOVE_OUT
    assert moves > 30


def test_move_updates_both_models_on_confirmation() -> None:
    rng = random.Random(4)
    workload = Workload([CHOFU, KITAMI], seed=4, today=TODAY)
    populate(workload, rng, 30)
    for _ in range(50):
        batch = workload.next_changes(2)
        if batch and batch[0][1].reason is ChangeReason.MOVE_OUT:
            break
        for municipality, change in batch:
            confirm(workload, municipality, change, rng)
    else:
        pytest.fail("no move drawn")
    (old, move_out), (new, move_in) = batch
    before = workload.residents(old), workload.residents(new)
    confirm(workload, old, move_out, rng)
    assert (workload.residents(old), workload.residents(new)) == (before[0] - 1, before[1])
    confirm(workload, new, move_in, rng)
    assert (workload.residents(old), workload.residents(new)) == (before[0] - 1, before[1] + 1)


def test_simulated_run_never_touches_deleted_or_busy_residents() -> None:
    rng = random.Random(3)
    workload = Workload([CHOFU, FUSSA, KITAMI], seed=3, today=TODAY, run_id="sim")
    gone: set[str] = set()  # died, or retired by a code change
    last_effective: dict[str, dt.date] = {}
    for municipality in workload.municipality_codes:
        for change in workload.initial_population(municipality, 60):
            last_effective[confirm(workload, municipality, change, rng)] = change.effective_date
    request_ids: set[str] = set()
    reasons = Counter[ChangeReason]()
    held: list[tuple[str, RegisterChange]] = []
    produced = 0
    while produced < 2000:
        batch = workload.next_changes(25)
        assert batch, "the workload ran dry"
        named = [c.resident_code for _, c in batch if c.resident_code is not None]
        pairs = sum(1 for _, c in batch if c.reason is ChangeReason.MOVE_OUT)
        assert len(named) - len(set(named)) == pairs  # only a move pair names the same resident twice
        assert not set(named) & {c.resident_code for _, c in held}  # still pending from the last round
        for municipality, change in batch:
            produced += 1
            reasons[change.reason] += 1
            roundtrip(change)
            assert change.request_id not in request_ids
            request_ids.add(change.request_id)
            code = change.resident_code
            if code is not None:
                assert code not in gone
                assert change.effective_date >= last_effective[code]
            if change.items is not None:
                factory = workload.factory(municipality)
                assert change.items.address.startswith(factory.prefecture + factory.city)
        # Confirm in shuffled order (a 転入 may be confirmed before its 転出) and hold a few changes back
        # until the next round: their residents must not come up again meanwhile.
        keep = rng.randrange(3)
        confirmed = held + batch[keep:]
        held = batch[:keep]
        rng.shuffle(confirmed)
        for municipality, change in confirmed:
            new_code = confirm(workload, municipality, change, rng)
            last_effective[new_code] = change.effective_date
            if change.reason is ChangeReason.DEATH:
                gone.add(new_code)
            if change.reason is ChangeReason.CODE_CHANGE and change.resident_code is not None:
                gone.add(change.resident_code)
    for municipality, change in held:
        confirm(workload, municipality, change, rng)
    assert workload.pending() == 0
    assert set(reasons) == {
        ChangeReason.BIRTH,
        ChangeReason.DEATH,
        ChangeReason.INTRA_MOVE,
        ChangeReason.MOVE_OUT,
        ChangeReason.MOVE_IN,
        ChangeReason.NAME_CHANGE,
        ChangeReason.CODE_CHANGE,
        ChangeReason.EX_OFFICIO_CORRECTION,
    }
    assert reasons[ChangeReason.MOVE_OUT] == reasons[ChangeReason.MOVE_IN]
    assert sum(workload.residents(m) for m in workload.municipality_codes) > 100


def test_pending_residents_are_not_picked_again() -> None:
    rng = random.Random(6)
    workload = Workload([CHOFU, KITAMI], seed=6, today=TODAY)
    populate(workload, rng, 20)
    first = workload.next_changes(1000)  # nothing confirmed: every free resident gets at most one change
    named = [c.resident_code for _, c in first if c.resident_code is not None]
    pairs = sum(1 for _, c in first if c.reason is ChangeReason.MOVE_OUT)
    assert len(named) - len(set(named)) == pairs
    assert len(first) < 1000
    leftover = [c for _, c in workload.next_changes(100) if c.reason is not ChangeReason.BIRTH]
    assert leftover == []  # only births remain possible: they do not touch the parent's record
    refused = next(c for _, c in first if c.reason is ChangeReason.INTRA_MOVE)
    workload.release(refused)
    again = [c for _, c in workload.next_changes(100) if c.reason is not ChangeReason.BIRTH]
    assert again
    assert {c.resident_code for c in again} == {refused.resident_code}


def test_record_result_rejects_unknown_or_mismatched_results() -> None:
    rng = random.Random(7)
    workload = Workload([CHOFU, KITAMI], seed=7, today=TODAY)
    change = next(workload.initial_population(CHOFU, 1))
    with pytest.raises(ValueError, match="was for 132080"):
        workload.record_result(change, KITAMI, fake_code(rng))
    with pytest.raises(ValueError, match="not a valid resident code"):
        workload.record_result(change, CHOFU, "1234567890")
    workload.record_result(change, CHOFU, fake_code(rng))
    with pytest.raises(ValueError, match="not pending"):
        workload.record_result(change, CHOFU, fake_code(rng))


def test_ten_thousand_initial_residents() -> None:
    workload = Workload([CHOFU], seed=8)
    changes = list(workload.initial_population(CHOFU, 10_000))
    assert len({c.request_id for c in changes}) == 10_000
    births = [c.items.birth_date for c in changes if c.items is not None]
    assert max(births) <= validate.today_jst()
