"""Function tools: a user's Python file becomes JSON Schema the harmony layer renders; calls run and report errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptoss_cli.harmony.render import developer_text, function_tools
from gptoss_cli.tools.functions import (
    ToolsFileError,
    function_tool,
    load_functions_file,
    parse_docstring,
    tools_from_openai,
)

SAMPLE = '''
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, TypedDict

import helper_module  # a neighbour of the tools file


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


@dataclass
class Stop:
    city: str
    nights: int = 1


class Window(TypedDict):
    start: str
    days: int


def get_location():
    """Gets the location of the user."""
    return "Paris, France"


def get_current_weather(location: str, format: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Gets the current weather in the provided location.

    This second paragraph is not part of the description.

    Args:
        location: The city and state, e.g. San Francisco, CA
        format (str): ignored by the renderer here, since harmony's golden
            example has no description for it.
    """
    return {"location": location, "format": format, "temperature": 20}


def get_multiple_weathers(locations: list[str], format: Literal["celsius", "fahrenheit"] = "celsius"):
    """Gets the current weather in the provided list of locations.

    :param locations: List of city and state,
        e.g. ["San Francisco, CA", "New York, NY"]
    :param str format: Unit.
    :returns: one report per location
    """
    return [f"{place}: sunny" for place in locations]


def plan_trip(
    stops: list[Stop],
    window: Window,
    unit: Unit = Unit.CELSIUS,
    budget: Optional[float] = None,
    tags: list[str] | None = None,
    note: Annotated[str, "Anything else"] = "",
    limits: dict[str, int] | None = None,
    *,
    deadline: str | None,
) -> Stop:
    """Plan a trip."""
    return Stop(city=f"{stops[0].city} x{len(stops)} {unit.value} {window['days']}d", nights=stops[0].nights)


def fail(reason: str) -> str:
    """Always raises."""
    raise ValueError(reason)


def _private_helper() -> None:
    pass


def uses_neighbour() -> str:
    return helper_module.VALUE
'''

GOLDEN = """# Tools

## functions

namespace functions {

// Gets the location of the user.
type get_location = () => any;

// Gets the current weather in the provided location.
type get_current_weather = (_: {
// The city and state, e.g. San Francisco, CA
location: string,
format?: "celsius" | "fahrenheit", // default: celsius
}) => any;

// Gets the current weather in the provided list of locations.
type get_multiple_weathers = (_: {
// List of city and state, e.g. ["San Francisco, CA", "New York, NY"]
locations: string[],
format?: "celsius" | "fahrenheit", // default: celsius
}) => any;

} // namespace functions"""


@pytest.fixture
def tools(tmp_path: Path):
    (tmp_path / "helper_module.py").write_text("VALUE = 'from the neighbour'\n")
    path = tmp_path / "my_tools.py"
    path.write_text(SAMPLE)
    return {tool.name: tool for tool in load_functions_file(path)}


def test_public_functions_of_the_file_become_tools(tools):
    assert list(tools) == [
        "get_location",
        "get_current_weather",
        "get_multiple_weathers",
        "plan_trip",
        "fail",
        "uses_neighbour",
    ]
    assert tools["uses_neighbour"].call({}) == ("from the neighbour", False)


def test_schemas_render_as_harmonys_golden_example(tools):
    # harmony:test-data/test_render_functions_with_parameters.txt, the first three functions (spec §3.2)
    specs = [tools[name].spec() for name in ("get_location", "get_current_weather", "get_multiple_weathers")]
    specs[1]["parameters"]["properties"]["format"].pop("description")  # the golden schema has none for it
    specs[2]["parameters"]["properties"]["format"].pop("description")
    assert developer_text(None, function_tools(specs)) == GOLDEN


def test_schema_of_nested_optional_enum_default_and_list_parameters(tools):
    spec = tools["plan_trip"].spec()
    assert spec["description"] == "Plan a trip."
    assert spec["parameters"] == {
        "type": "object",
        "properties": {
            "stops": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "nights": {"type": "integer", "default": 1}},
                    "required": ["city"],
                },
            },
            "window": {
                "type": "object",
                "properties": {"start": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["start", "days"],
            },
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "budget": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": "string", "description": "Anything else", "default": ""},
            "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
            "deadline": {"type": "string", "nullable": True},
        },
        "required": ["stops", "window", "deadline"],
    }
    json.dumps(spec)  # JSON all the way down


def test_docstring_descriptions_google_and_rest(tools):
    weather = tools["get_current_weather"].spec()
    assert weather["description"] == "Gets the current weather in the provided location."
    assert weather["parameters"]["properties"]["format"]["description"] == (
        "ignored by the renderer here, since harmony's golden example has no description for it."
    )
    multiple = tools["get_multiple_weathers"].spec()["parameters"]["properties"]
    assert multiple["locations"]["description"] == 'List of city and state, e.g. ["San Francisco, CA", "New York, NY"]'
    assert multiple["format"]["description"] == "Unit."


def test_docstring_parser_edge_cases():
    assert parse_docstring(None) == ("", {})
    doc = """Summary that
    wraps.

    Args:
        a (int): First.
        b: Second,
            continued.

    Returns:
        c: not a parameter.
    """
    assert parse_docstring(doc) == ("Summary that wraps.", {"a": "First.", "b": "Second, continued."})


def test_a_call_runs_the_function_and_returns_text(tools):
    assert tools["get_location"].call({}) == ("Paris, France", False)
    text, is_error = tools["get_current_weather"].call({"location": "Oslo"})
    assert not is_error
    assert json.loads(text) == {"location": "Oslo", "format": "celsius", "temperature": 20}
    text, _ = tools["plan_trip"].call(
        {
            "stops": [{"city": "Rome", "nights": 2}, {"city": "Pisa"}],
            "window": {"start": "May", "days": 3},
            "unit": "fahrenheit",
            "deadline": None,
        }
    )
    assert json.loads(text) == {"city": "Rome x2 fahrenheit 3d", "nights": 2}  # dataclasses and enums converted


def test_an_exception_in_the_function_is_returned_as_text(tools):
    assert tools["fail"].call({"reason": "no network"}) == ("Error: ValueError: no network", True)


def test_wrong_argument_names_are_answered_not_raised(tools):
    text, is_error = tools["get_current_weather"].call({"city": "Oslo"})
    assert is_error and "unexpected argument(s) city" in text and "location" in text
    text, is_error = tools["get_current_weather"].call({})
    assert is_error and "missing required argument(s) location" in text


def test_a_file_that_cannot_be_used_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ToolsFileError, match="not found"):
        load_functions_file(tmp_path / "missing.py")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ToolsFileError, match="RuntimeError: boom"):
        load_functions_file(broken)
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ToolsFileError, match="no functions"):
        load_functions_file(empty)
    unsupported = tmp_path / "unsupported.py"
    unsupported.write_text("import socket\ndef f(s: socket.socket) -> None: ...\n")
    with pytest.raises(ToolsFileError, match="parameter s has a type with no JSON Schema"):
        load_functions_file(unsupported)


def test_all_selects_the_tools(tmp_path: Path):
    path = tmp_path / "selected.py"
    path.write_text("__all__ = ['b']\ndef a() -> int: return 1\ndef b() -> int: return 2\n")
    assert [tool.name for tool in load_functions_file(path)] == ["b"]


def test_positional_only_parameters_are_refused():
    def f(x: int, /) -> int:
        return x

    with pytest.raises(ToolsFileError, match="positional-only"):
        function_tool(f)


def test_openai_tool_lists_are_run_by_the_caller():
    listed = tools_from_openai(
        [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look up.",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            },
            {"name": "flat", "description": "Flat form."},
        ]
    )
    assert [tool.spec() for tool in listed] == [
        {
            "name": "lookup",
            "description": "Look up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
        {"name": "flat", "description": "Flat form."},
    ]
    assert not listed[0].executable
    assert listed[0].call({"q": "x"}) == ("Error: lookup is run by the caller, not by gptoss", True)
    with pytest.raises(ToolsFileError):
        tools_from_openai({"name": "not a list"})
    with pytest.raises(ToolsFileError, match="needs a name"):
        tools_from_openai([{"type": "function", "function": {"description": "nameless"}}])
