"""Domain types of the resident registry network: frozen dataclasses and errors, stdlib only."""

from jukinet.domain.errors import (
    AlreadyRegistered,
    CodePoolExhausted,
    InvalidField,
    JukinetError,
    NotRegistered,
    PermissionDeniedError,
    SequenceGap,
    UnauthenticatedError,
    UpstreamUnavailable,
)
from jukinet.domain.identity import NodeId, Role
from jukinet.domain.model import (
    CREATE_REASONS,
    DELETE_REASONS,
    ChangeEvent,
    ChangeReason,
    Effect,
    IdentityItems,
    RegisterChange,
    Registration,
    Sex,
    effect_of,
)

__all__ = [
    "CREATE_REASONS",
    "DELETE_REASONS",
    "AlreadyRegistered",
    "ChangeEvent",
    "ChangeReason",
    "CodePoolExhausted",
    "Effect",
    "IdentityItems",
    "InvalidField",
    "JukinetError",
    "NodeId",
    "NotRegistered",
    "PermissionDeniedError",
    "RegisterChange",
    "Registration",
    "Role",
    "SequenceGap",
    "Sex",
    "UnauthenticatedError",
    "UpstreamUnavailable",
    "effect_of",
]
