"""Regenerate ``cases.json``: (pattern, text) pairs from three public regex test suites.

Only the pattern and the haystack are kept: the peers' expected answers are for their own
engines, while tmws is compared with Python ``re`` itself at test time.

Usage (see README.md for the commits)::

    python tests/data/regex_peers/regenerate.py \
        --rust-regex-git /path/to/rust-lang/regex/.git \
        --re2-git /path/to/google/re2/.git \
        --re-tests /path/to/cpython/Lib/test/re_tests.py
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

_OUT = Path(__file__).with_name("cases.json")
_RUST_FILES = ("testdata/*.toml", "testdata/fowler/*.toml")
_RE2_FILE = "re2/testing/search_test.cc"
# One `{ "regexp", "text" },` entry; each side may be several adjacent C string literals.
_C_STRINGS = r'((?:"(?:[^"\\\n]|\\.)*"\s*)+)'
_RE2_ENTRY = re.compile(r"\{\s*" + _C_STRINGS + r",\s*" + _C_STRINGS + r"\}")


def _git(git_dir: str, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", git_dir, *args], check=True, capture_output=True, text=True
    ).stdout


def _head(git_dir: str) -> str:
    return _git(git_dir, "rev-parse", "HEAD").strip()


def _unescape_rust(text: str) -> str | None:
    """regex-test's ``unescape = true``: ``\\xNN`` and the usual escapes; None if not UTF-8."""
    try:
        return bytes(text, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None


def _rust_cases(git_dir: str) -> list[dict[str, str]]:
    commit = _head(git_dir)
    files = _git(git_dir, "ls-tree", "-r", "--name-only", commit, "testdata").split()
    cases = []
    for name in sorted(files):
        if not name.endswith(".toml"):
            continue
        data: dict[str, Any] = tomllib.loads(_git(git_dir, "show", f"{commit}:{name}"))
        for test in data.get("test", []):
            regexes = test["regex"] if isinstance(test["regex"], list) else [test["regex"]]
            haystack: str | None = test["haystack"]
            if test.get("unescape") and haystack is not None:
                haystack = _unescape_rust(haystack)
            if haystack is None:
                continue
            for regex in regexes:
                cases.append(
                    {"source": f"rust-regex:{name}:{test['name']}", "pattern": regex,
                     "text": haystack}
                )
    return cases


def _c_string(literals: str) -> str | None:
    """Adjacent C string literals joined and unescaped; None if the bytes are not UTF-8."""
    out = bytearray()
    for body in re.findall(r'"((?:[^"\\\n]|\\.)*)"', literals):
        i = 0
        while i < len(body):
            ch = body[i]
            if ch != "\\":
                out += ch.encode()
                i += 1
                continue
            nxt = body[i + 1]
            if nxt in "01234567":
                digits = re.match(r"[0-7]{1,3}", body[i + 1 :])
                assert digits is not None
                out.append(int(digits.group(), 8))
                i += 1 + len(digits.group())
            elif nxt == "x":
                digits = re.match(r"[0-9a-fA-F]+", body[i + 2 :])
                assert digits is not None
                out.append(int(digits.group(), 16) & 0xFF)
                i += 2 + len(digits.group())
            else:
                simple = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a",
                          "b": "\b", "\\": "\\", '"': '"', "'": "'", "?": "?"}
                out += simple[nxt].encode()
                i += 2
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _re2_cases(git_dir: str) -> list[dict[str, str]]:
    source = _git(git_dir, "show", f"{_head(git_dir)}:{_RE2_FILE}")
    # Drop // comments so commented-out entries are not picked up.
    source = "\n".join(line.split("//")[0] if line.lstrip().startswith("//") else line
                       for line in source.splitlines())
    cases = []
    for regexp, text in _RE2_ENTRY.findall(source):
        pattern, haystack = _c_string(regexp), _c_string(text)
        if pattern is None or haystack is None:
            continue
        cases.append({"source": f"re2:{_RE2_FILE}", "pattern": pattern, "text": haystack})
    return cases


def _cpython_cases(path: str) -> list[dict[str, str]]:
    """The ``tests`` list of re_tests.py, read without executing the module."""
    tree = ast.parse(Path(path).read_text())
    cases = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "tests" for t in node.targets
        ):
            assert isinstance(node.value, ast.List)
            for entry in node.value.elts:
                assert isinstance(entry, ast.Tuple)
                # Entries are literals except a few `chr(0) + '9'`-style texts.
                pattern = eval(compile(ast.Expression(entry.elts[0]), path, "eval"))
                text = eval(compile(ast.Expression(entry.elts[1]), path, "eval"))
                if isinstance(pattern, str) and isinstance(text, str):
                    cases.append({"source": "cpython:Lib/test/re_tests.py", "pattern": pattern,
                                  "text": text})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rust-regex-git", required=True)
    parser.add_argument("--re2-git", required=True)
    parser.add_argument("--re-tests", required=True)
    args = parser.parse_args()
    cases = (_rust_cases(args.rust_regex_git) + _re2_cases(args.re2_git)
             + _cpython_cases(args.re_tests))
    seen: set[tuple[str, str]] = set()
    unique = []
    for case in cases:
        key = (case["pattern"], case["text"])
        if key not in seen:
            seen.add(key)
            unique.append(case)
    _OUT.write_text(json.dumps(unique, ensure_ascii=True, indent=0) + "\n")
    print(f"{len(unique)} cases ({len(cases)} before removing duplicates) -> {_OUT}")


if __name__ == "__main__":
    main()
