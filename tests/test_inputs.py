"""The input rules (tmws.inputs): one definition each, refused with the field named."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest

from tmws.database._bulk import parse_line
from tmws.errors import InvalidRequestError
from tmws.http.schemas import MemoryCreate, MemorySearch
from tmws.inputs import (
    ExecutionContext,
    InputLimits,
    MemoryInput,
    check_json_depth,
    check_metadata,
    check_namespace,
    convert,
    memory_id,
)


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("name", ["default", "team-a", "a.b:c@d_e-f", "x" * 128])
def test_namespaces_that_pass_everywhere(name: str) -> None:
    assert check_namespace(name) == name
    assert convert({"namespace": name}, ExecutionContext).namespace == name
    assert msgspec.convert({"content": "x", "namespace": name}, MemoryCreate).namespace == name
    assert msgspec.convert({"namespace": name}, MemorySearch).namespace == name
    row = parse_line(json.dumps({"content": "x", "namespace": name}), 1, "default")
    assert not isinstance(row, str) and row is not None and row.namespace == name


@pytest.mark.parametrize("name", ["", " ", "a b", "x" * 129, "tab\there", "ünïcode", "a/b",
                                  "a\u0000b", "team\n", "\nteam"])
def test_namespaces_refused_everywhere(name: str) -> None:
    """The finding: /execute (handlers) took what /memories refused. One rule now."""
    with pytest.raises(InvalidRequestError):
        check_namespace(name)
    with pytest.raises(InvalidRequestError, match=r"context\.namespace"):
        convert({"namespace": name}, ExecutionContext, "context")
    with pytest.raises(msgspec.ValidationError, match=r"\$.namespace"):
        msgspec.convert({"content": "x", "namespace": name}, MemoryCreate)
    with pytest.raises(msgspec.ValidationError, match=r"\$.namespace"):
        msgspec.convert({"namespace": name}, MemorySearch)
    rejected = parse_line(json.dumps({"content": "x", "namespace": name}), 1, "default")
    assert isinstance(rejected, str) and "$.namespace" in rejected


@pytest.mark.parametrize(("fields", "where"), [
    ({"importance": 2**64}, "importance"),
    ({"importance": 10**400}, "importance"),
    ({"importance": float("nan")}, "importance"),
    ({"importance": True}, "importance"),
    ({"tags": ["x" * 129]}, "tags[0]"),
    ({"tags": ["t"] * 65}, "tags"),
    ({"memory_type": "m" * 65}, "memory_type"),
    ({"visibility": "public"}, "visibility"),
    ({"metadata": []}, "metadata"),
])
def test_memory_fields_are_refused_alike_by_every_path(fields: dict[str, Any], where: str
                                                       ) -> None:
    body = {"content": "x", **fields}
    located = re.escape(f"at `$.{where}`")
    with pytest.raises(msgspec.ValidationError, match=located):
        msgspec.convert(body, MemoryInput)
    if "nan" not in repr(fields):  # JSON has no NaN
        with pytest.raises(msgspec.ValidationError, match=located):
            msgspec.json.decode(msgspec.json.encode(body), type=MemoryCreate)
    with pytest.raises(InvalidRequestError, match=re.escape(f"at `context.{where}`")):
        convert(body, ExecutionContext, "context")
    if "nan" not in repr(fields):
        rejected = parse_line(json.dumps(body), 1, "default")
        assert isinstance(rejected, str) and f"$.{where}" in rejected


def test_memory_input_normalises() -> None:
    memory = msgspec.convert({"content": "  text  ", "tags": [" Ops", "ops", "", "DB "],
                              "memory_type": " runbook "}, MemoryInput)
    assert (memory.content, memory.tags, memory.memory_type) == ("text", ["db", "ops"],
                                                                  "runbook")
    for blank in ({"content": " \n "}, {"content": "x", "memory_type": "  "}):
        with pytest.raises(msgspec.ValidationError, match="empty"):
            msgspec.convert(blank, MemoryInput)


@pytest.mark.parametrize("text", ["4", "1", "9223372036854775807"])
def test_memory_ids_accepted(text: str) -> None:
    assert memory_id(text) == int(text)


@pytest.mark.parametrize("text", ["0", "-1", "+4", " 4", "4 ", "\u00b2", "\uff14", "\u0664",
                                  "9223372036854775808", "9" * 4301, "1e3", "0x10", ""])
def test_memory_ids_refused(text: str) -> None:
    """The finding: a superscript two raised ValueError (500), a fullwidth four was read as 4."""
    with pytest.raises(InvalidRequestError, match="memory id must be an integer"):
        memory_id(text)


def test_json_depth_is_checked_on_bytes_before_decoding() -> None:
    limit = 32
    ok = json.dumps({"metadata": nested(limit - 1)}).encode()
    check_json_depth(ok, limit)
    # 5,000 levels: far past where recursive decoders give up; refused, not crashed.
    deep = b'{"content":"x","metadata":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    with pytest.raises(InvalidRequestError, match=r"deeper than 32 levels \(at byte 61\)"):
        check_json_depth(deep, limit)
    brackets_in_text = json.dumps({"content": "[" * 5000}).encode()
    check_json_depth(brackets_in_text, 2)


def test_metadata_depth_and_size() -> None:
    limits = InputLimits(max_json_depth=8, max_metadata_bytes=64)
    check_metadata({"a": nested(6)}, limits)
    with pytest.raises(InvalidRequestError, match=r"nests deeper than 8 levels \(at `metadata.a"):
        check_metadata({"a": nested(8)}, limits)
    # Far too deep to encode or even to walk recursively: still a clear refusal.
    with pytest.raises(InvalidRequestError, match="TMWS_MAX_JSON_DEPTH"):
        check_metadata({"a": nested(100_000)}, limits)
    with pytest.raises(InvalidRequestError, match="is 73 bytes as JSON; the limit is 64"):
        check_metadata({"k": "v" * 65}, limits)
