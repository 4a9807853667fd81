"""Node TOML files: the shipped examples load, and mistakes are reported with where and how to fix them."""

from pathlib import Path

import pytest

from jukinet.config import ConfigError, load_agencies, load_config
from jukinet.domain.errors import PermissionDeniedError
from jukinet.domain.identity import NodeId, Role

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


@pytest.mark.parametrize("name", ["center", "prefecture-13", "municipality-132080"])
def test_shipped_examples_load(name: str) -> None:
    config = load_config(EXAMPLES / f"{name}.toml")
    assert config.identity.uri in {"jukinet://center", "jukinet://prefecture/13", "jukinet://municipality/132080"}
    assert config.pki_dir.is_absolute()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[node]\nkind = "town"\n', "kind"),
        ('[node]\nkind = "municipality"\ncode = "132081"\nlisten="x"\ndatabase="y"\npki_dir="p"\n', "code"),
        ('[node]\nkind = "prefecture"\ncode = "13"\nlisten="x"\ndatabase="y"\npki_dir="p"\n', "upstream"),
        ("not toml [", "not valid TOML"),
        ('[node]\nkind = "center"\nlisten="x"\ndatabase="sqlite:///:memory:"\npki_dir="p"\n', "in-memory SQLite"),
        ('[node]\nkind = "center"\nlisten="x"\ndatabase="sqlite://"\npki_dir="p"\n', "in-memory SQLite"),
        ('[node]\nkind = "center"\nlisten="x"\ndatabase="mysql://h/db"\npki_dir="p"\n', "mysql is not supported"),
        ('[node]\nkind = "center"\nlisten="x"\ndatabase="center.db"\npki_dir="p"\n', "not a database URL"),
        (
            '[node]\nkind = "center"\nlisten="x"\ndatabase="sqlite:///file:m?mode=memory&uri=true"\npki_dir="p"\n',
            "in-memory SQLite",
        ),
        ('[node]\nkind = "center"\nlisten="x"\ndatabase="postgres://u:secret@h/db"\npki_dir="p"\n', "postgresql"),
    ],
)
def test_mistakes_are_reported_clearly(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(path)
    assert "secret" not in str(caught.value)  # a password in the URL is never repeated


def test_the_shipped_agency_registry_grants_purposes_with_their_fields() -> None:
    registry = load_agencies(EXAMPLES.parent / "agencies.toml")
    agency, purpose = registry.purpose_for(NodeId(Role.AGENCY, "pension"), "pension-proof-of-life")
    assert agency.id == "pension"
    assert purpose.fields == {"name", "birth_date", "address"}
    with pytest.raises(PermissionDeniedError, match="not granted"):
        registry.purpose_for(NodeId(Role.AGENCY, "pension"), "passport-issue")
    with pytest.raises(PermissionDeniedError, match="not registered"):
        registry.purpose_for(NodeId(Role.AGENCY, "unknown"), "pension-benefit")


def test_an_agency_registry_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agencies.toml"
    path.write_text('[agencies.a]\nname = "A"\n[[agencies.a.purposes]]\nid = "p"\nfields = ["household"]\n')
    with pytest.raises(ConfigError, match="unknown"):
        load_agencies(path)
