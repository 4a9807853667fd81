"""Node TOML files: the shipped examples load, and mistakes are reported with where and how to fix them."""

from pathlib import Path

import pytest

from jukinet.config import ConfigError, load_config

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
    ],
)
def test_mistakes_are_reported_clearly(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=problem):
        load_config(path)
