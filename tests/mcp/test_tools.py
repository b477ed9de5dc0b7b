"""The tool table: every tool's input schema is its msgspec type's, as MCP wants it."""

from __future__ import annotations

import msgspec
import pytest

from tmws.auth import SCOPES
from tmws.http.schemas import EvaluationRequest, ExecuteRequest
from tmws.mcp.tools import TOOLS, RecallArgs, Tool, input_schema


@pytest.mark.parametrize("tool", TOOLS, ids=lambda tool: tool.name)
def test_every_schema_is_an_object_of_the_struct_fields(tool: Tool) -> None:
    schema = input_schema(tool.arguments)
    assert schema["type"] == "object"
    assert "$ref" not in schema
    assert schema["additionalProperties"] is False  # a misspelt argument is refused
    assert set(schema["properties"]) == set(tool.arguments.__struct_fields__)
    assert tool.scope in SCOPES
    assert tool.description


def test_nested_definitions_stay_resolvable() -> None:
    schema = input_schema(EvaluationRequest)
    assert schema["properties"]["labelled"]["items"] == {"$ref": "#/$defs/LabelledQuery"}
    assert set(schema["$defs"]) == {"LabelledQuery", "ExecutionMode"}
    assert "$defs" in input_schema(ExecuteRequest)


def test_tool_names_are_unique_and_admin_tools_need_patterns_admin() -> None:
    names = [tool.name for tool in TOOLS]
    assert len(names) == len(set(names))
    assert {t.name for t in TOOLS if t.scope == "patterns:admin"} == {
        "register_pattern", "reload_patterns", "evaluate_patterns"}


def test_recall_arguments_keep_the_api_limits() -> None:
    assert msgspec.convert({"query": "x", "limit": 100, "days": 1.5}, RecallArgs).limit == 100
    for bad in ({"limit": 0}, {"limit": 101}, {"days": 0}, {"min_importance": 1.5},
                {"method": "fuzzy"}, {"query": "x" * 2001}, {"tags": ["t"] * 65},
                {"namespace": "other"}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, RecallArgs)
