"""Node configuration: a TOML file parsed once into a frozen dataclass and passed down.

Example (municipality):

    [node]
    kind = "municipality"          # municipality | prefecture | center
    code = "132080"                # municipality code, prefecture code ("13"), or "" for the center
    listen = "127.0.0.1:50061"
    database = "sqlite:///run/municipality-132080.db"
    pki_dir = "run/pki"
    metrics_listen = "127.0.0.1:9161"

    [upstream]                     # prefecture for a municipality, center for a prefecture
    address = "127.0.0.1:50041"

    [codepool]                     # municipality only
    refill_below = 2000
    block_size = 5000
"""

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jukinet.codes import valid_local_gov_code
from jukinet.domain.agency import PROVIDABLE_FIELDS, Agency, AgencyRegistry, Purpose
from jukinet.domain.identity import NodeId, Role
from jukinet.storage.engine import check_database_url

# Relay defaults: events per message (at most the wire limit, 10,000) and messages in flight. bench/relay.py
# measures its one-hop ceiling with the same batch, so the ratio it reports does not move with this setting.
RELAY_BATCH = 10_000
RELAY_WINDOW = 4
KINDS = {"municipality": Role.MUNICIPALITY, "prefecture": Role.PREFECTURE, "center": Role.CENTER}


class ConfigError(ValueError):
    """The configuration file is wrong; the message says where and how to fix it."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    kind: str
    code: str
    listen: str
    database: str
    pki_dir: Path
    metrics_listen: str = "127.0.0.1:0"
    upstream: str = ""
    refill_below: int = 2000
    block_size: int = 5000
    batch_size: int = RELAY_BATCH
    window: int = RELAY_WINDOW
    log_level: str = "info"
    agencies: Path | None = None  # center only: the agency registry (TOML)

    @property
    def identity(self) -> NodeId:
        return NodeId(KINDS[self.kind], self.code)


def _get(table: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    if key not in table:
        if default is None:
            raise ConfigError(f"{where}: missing required key {key!r}")
        return default
    value = table[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def load_config(path: Path) -> NodeConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass --config with a node TOML file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    node = data.get("node")
    if not isinstance(node, dict):
        raise ConfigError(f"{path}: missing [node] table")
    where = f"{path}[node]"
    kind = _get(node, "kind", str, where)
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {sorted(KINDS)}")
    code = _get(node, "code", str, where, "")
    if kind == "municipality" and not valid_local_gov_code(code):
        raise ConfigError(f"{where}.code: {code!r} is not a valid 6-digit municipality code")
    if kind == "prefecture" and not (len(code) == 2 and code.isdigit() and 1 <= int(code) <= 47):
        raise ConfigError(f"{where}.code: {code!r} is not a 2-digit prefecture code 01–47")
    if kind == "center" and code:
        raise ConfigError(f"{where}.code: the center has no code; remove it")
    base = path.parent
    pki_dir = Path(_get(node, "pki_dir", str, where))
    upstream_table = data.get("upstream", {})
    upstream = _get(upstream_table, "address", str, f"{path}[upstream]", "") if upstream_table else ""
    if kind != "center" and not upstream:
        raise ConfigError(f'{path}: a {kind} node needs [upstream] address = "host:port"')
    pool = data.get("codepool", {})
    relay = data.get("relay", {})
    batch_size = _get(relay, "batch_size", int, f"{path}[relay]", RELAY_BATCH)
    window = _get(relay, "window", int, f"{path}[relay]", RELAY_WINDOW)
    if not 1 <= batch_size <= 10_000 or not 1 <= window <= 64:
        raise ConfigError(f"{path}[relay]: batch_size must be 1–10000 and window 1–64")
    return NodeConfig(
        kind=kind,
        code=code,
        listen=_get(node, "listen", str, where),
        database=_database(_get(node, "database", str, where), where),
        pki_dir=pki_dir if pki_dir.is_absolute() else base / pki_dir,
        metrics_listen=_get(node, "metrics_listen", str, where, "127.0.0.1:0"),
        upstream=upstream,
        refill_below=_get(pool, "refill_below", int, f"{path}[codepool]", 2000),
        block_size=_get(pool, "block_size", int, f"{path}[codepool]", 5000),
        batch_size=batch_size,
        window=window,
        log_level=_get(node, "log_level", str, where, "info"),
        agencies=_relative(base, _get(node, "agencies", str, where, "")),
    )


def _database(url: str, where: str) -> str:
    try:
        check_database_url(url)
    except ValueError as error:
        raise ConfigError(f"{where}.database: {error}") from None
    return url


def _relative(base: Path, value: str) -> Path | None:
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def load_agencies(path: Path | None) -> AgencyRegistry:
    """The center's agency registry; an empty registry (nobody granted anything) without a file."""
    if path is None:
        return AgencyRegistry({})
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such agency registry file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    agencies: dict[str, Agency] = {}
    for agency_id, table in data.get("agencies", {}).items():
        where = f"{path}[agencies.{agency_id}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        purposes: dict[str, Purpose] = {}
        for entry in table.get("purposes", []):
            purpose_id = _get(entry, "id", str, f"{where}.purposes")
            fields = _get(entry, "fields", list, f"{where}.purposes[{purpose_id}]")
            unknown = set(fields) - set(PROVIDABLE_FIELDS)
            if unknown:
                raise ConfigError(
                    f"{where}.purposes[{purpose_id}].fields: unknown {sorted(unknown)}; use {list(PROVIDABLE_FIELDS)}"
                )
            purposes[purpose_id] = Purpose(purpose_id, _get(entry, "name", str, where, purpose_id), frozenset(fields))
        rate = table.get("requests_per_second", 0)
        items = table.get("items_per_day", 0)
        if not isinstance(rate, int | float) or rate < 0 or not isinstance(items, int) or items < 0:
            raise ConfigError(f"{where}: requests_per_second and items_per_day must be numbers >= 0")
        agencies[agency_id] = Agency(
            agency_id, _get(table, "name", str, where, agency_id), purposes, float(rate), int(items)
        )
    return AgencyRegistry(agencies)
