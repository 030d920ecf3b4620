"""Packaging: the unit passes systemd-analyze, the default config loads, scripts parse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from logly.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze missing in CI (Debian package systemd)")
        pytest.skip("systemd-analyze not installed")
    unit = (REPO / "packaging" / "logly.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's logly
    logly = Path(sys.executable).with_name("logly")
    assert "ExecStart=/opt/logly/venv/bin/logly daemon" in unit
    (tmp_path / "logly.service").write_text(
        unit.replace("/opt/logly/venv/bin/logly", str(logly)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "logly.service")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "logly.service" not in r.stderr, r.stderr  # no warnings about our unit
    for key in ("Type=notify", "ProtectSystem=strict", "ReadWritePaths=/var/lib/logly",
                "NoNewPrivileges=yes", "CapabilityBoundingSet=", "WatchdogSec="):
        assert key in unit


def test_default_config_loads_and_matches_the_defaults() -> None:
    cfg = load_config(REPO / "packaging" / "logly.toml", env={})
    assert cfg.batch_lines == 20000 and cfg.daemon.batch_seconds == 0.1
    assert [(s.path, s.type) for s in cfg.sources] == [
        ("/var/log/auth.log", "auth"), ("/var/log/fail2ban.log", "fail2ban")]


@pytest.mark.parametrize("script", ["packaging/install.sh", "scripts/test.sh",
                                    "scripts/demo.sh", ".ci/run"])
def test_shell_scripts_parse(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0
    assert os.access(REPO / script, os.X_OK)
