"""Writes patterns-configmap.yaml: deploy/config/patterns.yaml as the tmws-patterns ConfigMap.

Run by `make k8s-patterns` after changing the pattern library; a test fails while the
ConfigMap and the file differ.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "config" / "patterns.yaml"
TARGET = HERE / "patterns-configmap.yaml"

HEADER = """\
# Generated from deploy/config/patterns.yaml by `make k8s-patterns`: edit that file, not
# this one. Mounted at /app/config (TMWS_PATTERN_CONFIG); after a change, roll the pods
# (`kubectl rollout restart deployment/tmws`) or POST /api/v1/patterns/reload to one of them
# (the others follow through the pattern sync group).
apiVersion: v1
kind: ConfigMap
metadata:
  name: tmws-patterns
  labels:
    app.kubernetes.io/name: tmws
data:
  patterns.yaml: |
"""


def render(source: str) -> str:
    """The ConfigMap holding ``source`` verbatim (a literal block keeps every byte)."""
    if not source.endswith("\n") or source.endswith("\n\n"):
        raise ValueError("the pattern file must end with exactly one newline")
    body = "".join(f"    {line}\n" if line else "\n" for line in source[:-1].split("\n"))
    return HEADER + body


def main() -> None:
    TARGET.write_text(render(SOURCE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
