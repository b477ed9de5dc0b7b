"""The release wheel installs and runs where users take it: a fresh virtual environment of
each supported CPython, no Rust toolchain on PATH, the embedded default database.

Run by ``make test-install`` after ``make dist``; the CPython versions come from pyenv (a
missing one fails the run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.loopback import base_url, free_port

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
PYTHONS = ("3.11", "3.12", "3.13")
# No cargo, rustc or rustup: only the system's own directories.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def wheel() -> Path:
    wheels = sorted(DIST.glob("tmws-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {DIST} (make dist): {wheels}"
    return wheels[0]


def interpreter(version: str) -> Path:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob(f"{version}.*"), key=lambda p: [int(x) for x in
                                                             re.findall(r"\d+", p.name)])
    assert found, f"CPython {version} is not installed under {root} (pyenv install {version})"
    return found[-1] / "bin" / "python3"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run(command: list[str], env: dict[str, str], timeout: float = 600,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_is_abi3_manylinux_and_carries_the_migrations() -> None:
    built = wheel()
    assert re.fullmatch(r"tmws-[\d.]+-cp311-abi3-manylinux_2_2[0-8]_x86_64\.whl", built.name)
    names = zipfile.ZipFile(built).namelist()
    assert "tmws/_tmws_core.abi3.so" in names
    assert any(n.startswith("tmws/_migrations/versions/0004") for n in names)
    assert "tmws/data/default_patterns.yaml" in names and "tmws/py.typed" in names
    assert len(list(DIST.glob("tmws-*.tar.gz"))) == 1  # and the sdist beside it


@pytest.fixture(params=PYTHONS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, dict[
        str, str]]]:
    version: str = request.param
    venv = tmp_path / f"venv-{version}"
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    (tmp_path / "home").mkdir()
    run([str(interpreter(version)), "-m", "venv", str(venv)], env)
    yield version, venv, {**env, "PATH": f"{venv / 'bin'}:{BARE_PATH}"}
    shutil.rmtree(venv, ignore_errors=True)


def test_install_import_snippet_and_serve(fresh: tuple[str, Path, dict[str, str]],
                                          tmp_path: Path) -> None:
    version, venv, env = fresh
    python = str(venv / "bin" / "python")
    assert shutil.which("cargo", path=env["PATH"]) is None
    assert shutil.which("rustc", path=env["PATH"]) is None
    started = time.monotonic()
    run([python, "-m", "pip", "install", "--quiet", "--only-binary=:all:",
         f"{wheel()}[embedded]"], env, timeout=900)
    install_seconds = time.monotonic() - started
    imported = run([python, "-X", "importtime", "-c", "import tmws"], env, cwd=tmp_path)
    total_us = int(imported.stderr.strip().splitlines()[-1].split("|")[1])

    data = tmp_path / "data"
    snippet_env = {**env, "TMWS_DATA_DIR": str(data), "TMWS_LOG_LEVEL": "WARNING"}
    snippet = run([python, "-c", readme_snippet()], snippet_env, cwd=tmp_path)
    first = snippet.stdout.splitlines()[0]
    assert first == "True ok", snippet.stdout

    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    started = time.monotonic()
    server = subprocess.Popen([str(venv / "bin" / "tmws"), "serve"], cwd=tmp_path,
                              env={**snippet_env, "TMWS_API_PORT": str(port)},
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                answer = httpx.post(f"{base_url(port)}/api/v1/execute",
                                    json={"query": "check health"}, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "tmws serve did not answer"
                time.sleep(0.3)
        serve_seconds = time.monotonic() - started
        assert answer.status_code == 200 and answer.json()["success"], answer.text
        assert answer.json()["result"]["database"]["status"] == "ok"
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    print(json.dumps({"python": version, "wheel_bytes": wheel().stat().st_size,
                      "install_s": round(install_seconds, 1),
                      "import_tmws_ms": round(total_us / 1000, 1),
                      "first_answer_s": round(serve_seconds, 1)}))
