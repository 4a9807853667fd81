"""The README's demo, run small as a newcomer would: separate node processes, ends with every tier in agreement."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_ends_with_every_tier_in_agreement(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "jukinet.cli.main", "demo", "--residents", "60", "--changes", "240", "--dir", str(run)],
        capture_output=True,
        text=True,
        timeout=240,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", "GRPC_VERBOSITY": "ERROR"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "every tier agrees" in result.stdout
    assert result.stdout.count("in sync") == 3
    assert "every code was issued by the center; no retired code in use" in result.stdout
    assert (run / "data" / "center.db").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(run)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "node processes were left behind"
