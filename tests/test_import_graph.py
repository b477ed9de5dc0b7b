"""No import cycle in tmws (tests/import_graph.py), and the checker finds the ones it must."""

from __future__ import annotations

from pathlib import Path

from tests.import_graph import cycles, import_graph, native_imports


def test_tmws_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_rust_extension_imports_nothing_from_tmws() -> None:
    assert native_imports() == []


def _package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycles_found_and_late_or_typing_imports_ignored(tmp_path: Path) -> None:
    _package(tmp_path, {
        "__init__.py": "from pkg.a import A\n",
        "a.py": "from pkg import b\nA = 1\n",
        "b.py": "import pkg.c\ntry:\n    from . import a\nexcept ImportError:\n    pass\n",
        "c.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"
                 "def late() -> None:\n    from pkg import b\n"),
        "sub/__init__.py": "from pkg.sub.x import X\n",
        "sub/x.py": "X = 1\n",
        "d.py": "from pkg.sub.x import X\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == set()  # TYPE_CHECKING and function-level imports are late
    assert graph["pkg.d"] == {"pkg.sub", "pkg.sub.x"}  # the package runs first
    assert graph["pkg.sub.x"] == set()
    assert cycles(graph) == [["pkg", "pkg.a", "pkg.b"]]
