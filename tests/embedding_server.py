"""An OpenAI-compatible ``/v1/embeddings`` server on loopback, for tests and calibration.

Models, by the request's ``model`` field:

- ``wordllama``: WordLlama ``l2_supercat`` (256 dimensions), a real static embedding
  model whose weights ship inside the ``wordllama`` wheel, so it runs offline;
- ``broken`` answers HTTP 500, ``slow`` sleeps a second first, ``none`` embeds nothing
  (zero vectors);
- anything else: tmws's hash embedder, at the dimension given by a ``/dimN/`` path prefix
  (default 32).

Run it by hand to calibrate stage-2 routing against a real model::

    .venv/bin/python -m tests.embedding_server --port 8765
    TMWS_EMBEDDING_PROVIDER=openai TMWS_EMBEDDING_URL=http://127.0.0.1:8765 \\
    TMWS_EMBEDDING_MODEL=wordllama TMWS_EMBEDDING_DIM=256 \\
        tmws patterns eval tests/data/paraphrases.tsv
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from tests.loopback import base_url
from tmws._native import HashEmbedder

__all__ = ["WORDLLAMA_DIM", "EmbeddingServer", "running_server"]

WORDLLAMA_DIM = 256


@functools.cache
def _wordllama() -> Any:
    import wordllama
    from wordllama import WordLlama

    # The wheel ships weights and tokenizer; pointing the cache at the package finds both
    # without a download.
    return WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)


def embed(model: str, texts: list[str], dim: int) -> list[list[float]]:
    if model == "wordllama":
        return [[float(x) for x in row] for row in _wordllama().embed(texts, norm=True)]
    if model == "none":
        return [[0.0] * dim for _ in texts]
    embedder = HashEmbedder(dim)
    return [[2 * x for x in embedder.embed(text)] for text in texts]


class EmbeddingServer(BaseHTTPRequestHandler):
    """Answers ``POST [/dimN]/v1/embeddings``; every request is recorded in ``requests``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as real embedding servers do
    disable_nagle_algorithm = True  # headers and body go out as two writes
    requests: ClassVar[list[dict[str, Any]]] = []
    # Set to make the next requests fail with HTTP 503 (a provider outage).
    down: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append({"path": self.path, "body": body,
                                    "auth": self.headers.get("authorization")})
        if body["model"] == "broken" or type(self).down:
            self._reply(500 if body["model"] == "broken" else 503, {"error": "unavailable"})
            return
        if body["model"] == "slow":
            time.sleep(1.0)
        first = self.path.split("/")[1]
        dim = int(first.removeprefix("dim")) if first.startswith("dim") else 32
        vectors = embed(body["model"], body["input"], dim)
        data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)]
        data.reverse()  # servers may answer out of order; "index" says where each belongs
        self._reply(200, {"data": data, "model": body["model"]})

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # a client timed out first, on purpose
            self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def running_server(port: int = 0) -> Iterator[str]:
    """The server on 127.0.0.1 in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), EmbeddingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base_url(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    port = parser.parse_args().port
    _wordllama()
    with running_server(port) as url:
        print(f"serving /v1/embeddings at {url} (models: wordllama, or hash)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
