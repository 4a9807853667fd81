"""Agencies and their statutory purposes (利用事務): who may receive which fields, for what."""

from collections.abc import Mapping
from dataclasses import dataclass

from jukinet.domain.errors import InvalidField, PermissionDeniedError, WrongPurpose
from jukinet.domain.identity import NodeId, Role

# What a purpose may be granted. "history" is the change history (reasons and dates).
PROVIDABLE_FIELDS = ("name", "alias", "birth_date", "sex", "address", "history")


@dataclass(frozen=True, slots=True)
class Purpose:
    id: str
    name: str
    fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class Agency:
    id: str
    name: str
    purposes: Mapping[str, Purpose]
    requests_per_second: float = 0.0  # 0 = unlimited
    items_per_day: int = 0  # 0 = unlimited


@dataclass(frozen=True, slots=True)
class AgencyRegistry:
    agencies: Mapping[str, Agency]

    def purpose_for(self, caller: NodeId, purpose_id: str) -> tuple[Agency, Purpose]:
        """The caller's grant for `purpose_id`; PermissionDeniedError naming the rule otherwise."""
        if caller.role is not Role.AGENCY:
            raise PermissionDeniedError(f"{caller.uri} is not an agency; only agencies receive 本人確認情報")
        if not purpose_id:
            raise InvalidField("purpose", "is required: name the statutory purpose (利用事務) of this request")
        agency = self.agencies.get(caller.code)
        if agency is None:
            raise PermissionDeniedError(f"agency {caller.code} is not registered at the center; no purpose is granted")
        purpose = agency.purposes.get(purpose_id)
        if purpose is None:
            granted = ", ".join(sorted(agency.purposes)) or "none"
            raise WrongPurpose(f"purpose {purpose_id[:64]!r} is not granted to agency {agency.id} (granted: {granted})")
        return agency, purpose
