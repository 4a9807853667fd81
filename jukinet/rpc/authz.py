"""Who may call what: (method -> roles) tables per node kind, and ownership rules."""

from jukinet.domain.errors import WrongOrigin, WrongRole
from jukinet.domain.identity import NodeId, Role

_PKG = "/jukinet.wire.v1."
PUSH_EVENTS = _PKG + "RelayService/PushEvents"
GET_CURSORS = _PKG + "RelayService/GetCursors"
RECORD_CHANGE = _PKG + "RegisterService/RecordChange"
RECORD_CHANGES = _PKG + "RegisterService/RecordChanges"
ALLOCATE_CODES = _PKG + "CodePoolService/AllocateCodes"
GET_STATUS = _PKG + "AdminService/GetStatus"
GET_DIGEST = _PKG + "AdminService/GetDigest"
LIST_ACCESS_LOG = _PKG + "AdminService/ListAccessLog"
CUT_OFF = _PKG + "AdminService/CutOff"
RESUME = _PKG + "AdminService/Resume"
LIST_CODE_ANOMALIES = _PKG + "AdminService/ListCodeAnomalies"
RESOLVE_CODE_ANOMALY = _PKG + "AdminService/ResolveCodeAnomaly"
LOOKUP_RESIDENT = _PKG + "ProvisionService/LookupResident"
SEARCH_RESIDENTS = _PKG + "ProvisionService/SearchResidents"
LOOKUP_RESIDENTS = _PKG + "ProvisionService/LookupResidents"
FOLLOW_CHANGES = _PKG + "ProvisionService/FollowChanges"
DISCLOSE_RESIDENT = _PKG + "DisclosureService/DiscloseResident"
SUBMIT_CHECKPOINT = _PKG + "AuditService/SubmitCheckpoint"
ACKNOWLEDGE_AUDIT_ALERT = _PKG + "AuditService/AcknowledgeAuditAlert"

_OPERATOR = frozenset({Role.OPERATOR})
_ADMIN = {
    GET_STATUS: _OPERATOR,
    GET_DIGEST: _OPERATOR,
    LIST_ACCESS_LOG: _OPERATOR,
    CUT_OFF: _OPERATOR,
    RESUME: _OPERATOR,
    LIST_CODE_ANOMALIES: _OPERATOR,
    RESOLVE_CODE_ANOMALY: _OPERATOR,
}

MUNICIPALITY_POLICY = {
    RECORD_CHANGE: frozenset({Role.REGISTER}),
    RECORD_CHANGES: frozenset({Role.REGISTER}),
    **_ADMIN,
}
PREFECTURE_POLICY = {
    PUSH_EVENTS: frozenset({Role.MUNICIPALITY}),
    GET_CURSORS: frozenset({Role.MUNICIPALITY}),
    ALLOCATE_CODES: frozenset({Role.MUNICIPALITY}),
    SUBMIT_CHECKPOINT: frozenset({Role.MUNICIPALITY}),
    ACKNOWLEDGE_AUDIT_ALERT: _OPERATOR,
    **_ADMIN,
}
CENTER_POLICY = {
    PUSH_EVENTS: frozenset({Role.PREFECTURE}),
    GET_CURSORS: frozenset({Role.PREFECTURE}),
    ALLOCATE_CODES: frozenset({Role.PREFECTURE}),
    LOOKUP_RESIDENT: frozenset({Role.AGENCY}),
    SEARCH_RESIDENTS: frozenset({Role.AGENCY}),
    LOOKUP_RESIDENTS: frozenset({Role.AGENCY}),
    FOLLOW_CHANGES: frozenset({Role.AGENCY}),
    DISCLOSE_RESIDENT: _OPERATOR,
    SUBMIT_CHECKPOINT: frozenset({Role.PREFECTURE}),
    ACKNOWLEDGE_AUDIT_ALERT: _OPERATOR,
    **_ADMIN,
}


def check_origin(caller: NodeId, origin: str, node: NodeId) -> None:
    """A municipality pushes only its own changes, and only to its own prefecture; a prefecture forwards
    only for municipalities whose code starts with its prefecture code. Raises PermissionDeniedError
    naming the rule."""
    if caller.role in (Role.MUNICIPALITY, Role.REGISTER):
        if origin != caller.code:
            raise WrongOrigin(f"{caller.uri} may only send changes of its own municipality {caller.code}, not {origin}")
        if node.role is Role.PREFECTURE and caller.prefecture != node.code:
            raise WrongOrigin(
                f"{caller.uri} belongs to prefecture {caller.prefecture}, not to this prefecture {node.code}"
            )
        if node.role is Role.MUNICIPALITY and origin != node.code:
            raise WrongOrigin(f"{caller.uri} is not the register system of {node.uri}")
        return
    if caller.role is Role.PREFECTURE:
        if not origin.startswith(caller.code):
            raise WrongOrigin(
                f"{caller.uri} may only forward for municipalities of prefecture {caller.code}, not {origin}"
            )
        return
    raise WrongOrigin(f"{caller.uri} may not send changes for any municipality")


def check_operator_of(caller: NodeId, node: NodeId) -> None:
    """Operators act on the node their certificate names (jukinet://operator/<node-slug>/<id>)."""
    expected = node.uri.removeprefix("jukinet://").replace("/", "-")
    if caller.role is not Role.OPERATOR or caller.node != expected:
        raise WrongRole(f"{caller.uri} is not an operator of {node.uri} (expected operator/{expected}/…)")


POLICIES = {"municipality": MUNICIPALITY_POLICY, "prefecture": PREFECTURE_POLICY, "center": CENTER_POLICY}


def crosses_links(method: str, policy: dict[str, frozenset[Role]]) -> bool:
    """Calls the emergency cut-off stops: everything but operator calls and the municipality's own
    register system (its internal side, not a network link)."""
    return method not in (RECORD_CHANGE, RECORD_CHANGES) and policy.get(method) != _OPERATOR


# Operator roles (certificate subject OU) and what each may call; every role includes the ones before it.
VIEWER, CLERK, SECURITY_ADMIN = "viewer", "clerk", "security-admin"
ROLE_ORDER = (VIEWER, CLERK, SECURITY_ADMIN)
# The standard services every node serves (jukinet.rpc.standard_services): any certificate of the network.
STANDARD_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
OPERATOR_MINIMUM_ROLE = {
    **dict.fromkeys(STANDARD_METHODS, VIEWER),
    GET_STATUS: VIEWER,
    GET_DIGEST: VIEWER,
    DISCLOSE_RESIDENT: CLERK,
    LIST_CODE_ANOMALIES: CLERK,
    RESOLVE_CODE_ANOMALY: CLERK,
    LIST_ACCESS_LOG: SECURITY_ADMIN,
    CUT_OFF: SECURITY_ADMIN,
    RESUME: SECURITY_ADMIN,
    ACKNOWLEDGE_AUDIT_ALERT: SECURITY_ADMIN,
}


def check_operator_role(caller: NodeId, role: str, method: str) -> None:
    """Raises WrongRole when the operator's role is below what the method needs (unknown roles get nothing)."""
    needed = OPERATOR_MINIMUM_ROLE.get(method, SECURITY_ADMIN)
    have = ROLE_ORDER.index(role) if role in ROLE_ORDER else -1
    if have < ROLE_ORDER.index(needed):
        short = method.rsplit("/", 1)[-1]
        raise WrongRole(f"{caller.uri} has operator role {role or 'none'!r}; {short} needs {needed}")
