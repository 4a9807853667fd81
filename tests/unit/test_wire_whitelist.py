"""Only 本人確認情報 crosses the tiers (relay) and reaches agencies (provision): walk the descriptors."""

from google.protobuf.descriptor import Descriptor

from jukinet.wire.v1 import provision_pb2, relay_pb2, types_pb2

ALLOWED_FIELDS = {
    "jukinet.wire.v1.PushEventsRequest": {"origin", "events"},
    "jukinet.wire.v1.PushEventsResponse": {"origin", "acked_seq"},
    "jukinet.wire.v1.GetCursorsRequest": {"origins"},
    "jukinet.wire.v1.GetCursorsResponse": {"cursors"},
    "jukinet.wire.v1.OriginCursor": {"origin", "acked_seq"},
    "jukinet.wire.v1.ChangeEvent": {
        "seq",
        "resident_code",
        "previous_code",
        "reason",
        "effective_date",
        "recorded_time",
        "items",
    },
    "jukinet.wire.v1.IdentityItems": {"name", "alias", "birth_date", "sex", "address"},
    "google.protobuf.Timestamp": {"seconds", "nanos"},
    # center -> agency
    "jukinet.wire.v1.LookupResidentRequest": {"purpose", "resident_code"},
    "jukinet.wire.v1.LookupResidentResponse": {"record"},
    "jukinet.wire.v1.ProvidedRecord": {
        "resident_code",
        "status",
        "items",
        "municipality_code",
        "history",
        "provided_fields",
    },
    "jukinet.wire.v1.SearchResidentsRequest": {"purpose", "name", "birth_date", "sex", "address"},
    "jukinet.wire.v1.SearchResidentsResponse": {"records"},
    "jukinet.wire.v1.LookupResidentsRequest": {"purpose", "resident_codes"},
    "jukinet.wire.v1.LookupResidentsResponse": {"results"},
    "jukinet.wire.v1.LookupResult": {"resident_code", "status_code", "message", "record"},
    "jukinet.wire.v1.FollowChangesRequest": {"purpose", "after_seq"},
    "jukinet.wire.v1.FollowChangesResponse": {"items"},
    "jukinet.wire.v1.FeedItem": {"seq", "change", "record"},
    "jukinet.wire.v1.ProvidedChange": {
        "resident_code",
        "previous_code",
        "reason",
        "effective_date",
        "municipality_code",
    },
}


def _reachable(descriptor: Descriptor, seen: dict[str, Descriptor]) -> None:
    if descriptor.full_name in seen:
        return
    seen[descriptor.full_name] = descriptor
    for field in descriptor.fields:
        if field.message_type is not None:
            _reachable(field.message_type, seen)


def _relay_messages() -> dict[str, Descriptor]:
    seen: dict[str, Descriptor] = {}
    services = [*relay_pb2.DESCRIPTOR.services_by_name.values(), *provision_pb2.DESCRIPTOR.services_by_name.values()]
    for service in services:
        for method in service.methods:
            _reachable(method.input_type, seen)
            _reachable(method.output_type, seen)
    return seen


def violations(seen: dict[str, Descriptor], allowed: dict[str, set[str]]) -> list[str]:
    problems = [f"message {name} is not whitelisted" for name in seen if name not in allowed]
    for name, descriptor in seen.items():
        extra = {f.name for f in descriptor.fields} - allowed.get(name, set())
        problems += [f"{name}.{field}" for field in sorted(extra)]
    return problems


def test_relay_messages_carry_only_identity_confirmation_fields() -> None:
    assert violations(_relay_messages(), ALLOWED_FIELDS) == []


def test_the_walker_reaches_nested_items_and_reports_extra_fields() -> None:
    narrower = {**ALLOWED_FIELDS, "jukinet.wire.v1.IdentityItems": {"name", "birth_date", "sex", "alias"}}
    assert violations(_relay_messages(), narrower) == ["jukinet.wire.v1.IdentityItems.address"]
    assert "jukinet.wire.v1.IdentityItems" in _relay_messages()
    assert types_pb2.IdentityItems.DESCRIPTOR.full_name == "jukinet.wire.v1.IdentityItems"
