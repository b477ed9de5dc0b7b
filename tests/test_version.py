"""One version everywhere: the installed distribution's (PEP 440, pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import httpx
from packaging.version import Version
from prometheus_client import REGISTRY

import tmws
from tmws.metrics import exposition


async def test_the_package_metrics_cli_and_api_report_the_installed_version(
        api: httpx.AsyncClient) -> None:
    installed = version("tmws")
    assert tmws.__version__ == installed
    assert str(Version(installed)) == installed  # a normalised PEP 440 version
    exposition()
    assert REGISTRY.get_sample_value("tmws_info", {"version": installed,
                                                   "pattern_service": "enabled"}) == 1.0
    done = subprocess.run([sys.executable, "-m", "tmws", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"tmws {installed}"
    assert (await api.get("/health")).json()["version"] == installed
    assert (await api.get("/openapi.json")).json()["info"]["version"] == installed
    health = (await api.get("/api/v1/health")).json()
    assert health["engine"]["version"] == installed
