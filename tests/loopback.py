"""Servers on this machine's loopback: a free port, a server's base URL, waiting for it to
answer, stopping it.

Shared by the tests and the bench scripts (which run from a checkout, where ``tests`` is
importable), so neither keeps a copy. No pytest here: a bench script imports it too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

__all__ = ["base_url", "free_port", "process_tree", "stop", "wait_healthy"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def wait_healthy(base: str, process: subprocess.Popen[bytes], *, path: str = "/health/ready",
                 within: float = 120) -> None:
    """Until ``GET base+path`` answers 200; RuntimeError if ``process`` exits first or
    ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base}{path} did not answer 200 within {within:g} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, as an orchestrator stops a server; SIGKILL if it is still running after
    ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (from /proc), root first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out
