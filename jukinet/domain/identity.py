"""Who is calling: network identities as carried in certificate URI SANs (jukinet://…)."""

from dataclasses import dataclass
from enum import StrEnum

from jukinet.codes import prefecture_of, valid_local_gov_code
from jukinet.domain.errors import UnauthenticatedError

_SCHEME = "jukinet://"


class Role(StrEnum):
    CENTER = "center"
    PREFECTURE = "prefecture"
    MUNICIPALITY = "municipality"
    REGISTER = "register"
    AGENCY = "agency"
    OPERATOR = "operator"


def _is_prefecture_code(value: str) -> bool:
    return len(value) == 2 and value.isascii() and value.isdigit() and 1 <= int(value) <= 47


def _is_simple_id(value: str) -> bool:
    return 0 < len(value) <= 64 and value.isascii() and all(c.isalnum() or c in "-_." for c in value)


@dataclass(frozen=True, slots=True)
class NodeId:
    """A parsed identity. `code` is the prefecture (2 digits), municipality (6 digits) or agency id;
    operators also carry the node they operate (`node`) and their own id (`code`)."""

    role: Role
    code: str = ""
    node: str = ""

    @classmethod
    def parse(cls, uri: str) -> "NodeId":
        if not uri.startswith(_SCHEME):
            raise UnauthenticatedError(f"certificate URI {uri!r} is not a jukinet:// identity")
        parts = uri[len(_SCHEME) :].split("/")
        try:
            role = Role(parts[0])
        except ValueError:
            raise UnauthenticatedError(f"certificate URI {uri!r} names an unknown role") from None
        args = parts[1:]
        if role is Role.CENTER and not args:
            return cls(role)
        if role is Role.PREFECTURE and len(args) == 1 and _is_prefecture_code(args[0]):
            return cls(role, args[0])
        if role in (Role.MUNICIPALITY, Role.REGISTER) and len(args) == 1 and valid_local_gov_code(args[0]):
            return cls(role, args[0])
        if role is Role.AGENCY and len(args) == 1 and _is_simple_id(args[0]):
            return cls(role, args[0])
        if role is Role.OPERATOR and len(args) >= 2 and all(_is_simple_id(a) for a in args):
            return cls(role, args[-1], "/".join(args[:-1]))
        raise UnauthenticatedError(f"certificate URI {uri!r} is malformed for role {role.value}")

    @property
    def uri(self) -> str:
        if self.role is Role.CENTER:
            return f"{_SCHEME}center"
        if self.role is Role.OPERATOR:
            return f"{_SCHEME}operator/{self.node}/{self.code}"
        return f"{_SCHEME}{self.role.value}/{self.code}"

    @property
    def prefecture(self) -> str:
        """The prefecture a prefecture, municipality or register identity belongs to."""
        if self.role is Role.PREFECTURE:
            return self.code
        if self.role in (Role.MUNICIPALITY, Role.REGISTER):
            return prefecture_of(self.code)
        raise ValueError(f"{self.uri} belongs to no prefecture")

    @property
    def upstream(self) -> "NodeId | None":
        """The tier this node relays to: a municipality's prefecture, a prefecture's center."""
        if self.role is Role.MUNICIPALITY:
            return NodeId(Role.PREFECTURE, prefecture_of(self.code))
        if self.role is Role.PREFECTURE:
            return NodeId(Role.CENTER)
        return None

    @property
    def serves(self) -> bool:
        """Whether this identity runs a node server (and so needs a server name in its certificate)."""
        return self.role in (Role.CENTER, Role.PREFECTURE, Role.MUNICIPALITY)

    def __str__(self) -> str:
        return self.uri


def server_for(caller: NodeId) -> NodeId | None:
    """The node a client identity calls: an agency the center, a register system its municipality, an
    operator the node it operates, a municipality its prefecture, a prefecture the center."""
    if caller.role is Role.AGENCY:
        return NodeId(Role.CENTER)
    if caller.role is Role.REGISTER:
        return NodeId(Role.MUNICIPALITY, caller.code)
    if caller.role is Role.OPERATOR:
        return _node_named(caller.node)
    return caller.upstream


def _node_named(name: str) -> NodeId | None:
    """The node an operator identity names by its file stem ("center", "prefecture-13", …), if any."""
    role, _, code = name.partition("-")
    try:
        return NodeId.parse(f"{_SCHEME}{role}/{code}" if code else f"{_SCHEME}{role}")
    except UnauthenticatedError:
        return None
