"""Function tools: the user's own Python functions (``--tools FILE``), or an OpenAI-style tool list.

A tools file is trusted code: gptoss imports it into its own process (``load_functions_file``), and its functions
run there, with the user's rights, when the model calls them and the user approves. Nothing isolates them; a
function that hangs holds up the chat until Ctrl+C.

Each public function defined in the file (or each name in its ``__all__``) becomes a tool. Its signature and
docstring become the JSON Schema the harmony layer shows the model:

- the description is the docstring's first paragraph;
- parameter types: ``str``, ``int``, ``float``, ``bool``, ``list[X]`` (also ``tuple``/``set``/``Sequence``),
  ``dict``/``dict[str, X]``, ``Optional[X]``/``X | None``, other unions, ``Literal[...]`` and ``Enum`` (an
  ``enum``), ``TypedDict`` and dataclasses (nested objects), ``Annotated[X, "description"]``; a parameter without
  an annotation accepts any JSON value;
- a parameter with a default is optional, and the default is shown; ``x: T | None = None`` is shown as an
  optional ``T``;
- parameter descriptions come from a Google-style ``Args:`` section or reST ``:param name:`` lines.

A call's result goes back to the model as text: a ``str`` as it is, anything else as JSON. An exception in the
function goes back as ``Error: Type: message``, so the model can react; it never ends the chat.

An OpenAI-style list (``[{"type": "function", "function": {"name", "description", "parameters"}}]``, from a
``gptoss run --json`` caller) gives tools without a local implementation: the caller executes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from collections import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from gptoss_cli.errors import GptossError

_ARGS_SECTION = re.compile(r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments):\s*$")
_GOOGLE_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_REST_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_SEQUENCES = (list, tuple, set, frozenset, abc.Sequence, abc.MutableSequence, abc.Set, abc.MutableSet)
_MAPPINGS = (dict, abc.Mapping, abc.MutableMapping)


class ToolsFileError(GptossError):
    """A tools file (or tool list) cannot be used: missing, failing to import, or a function without a schema."""


@dataclass(frozen=True)
class FunctionTool:
    """A function the model can call as ``functions.NAME``.

    ``func`` is None for tools from an OpenAI-style list: the caller of ``gptoss run --json`` executes those.
    """

    name: str
    description: str
    parameters: dict[str, Any] | None  # JSON Schema of the arguments object; None: takes no arguments
    func: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    hints: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def executable(self) -> bool:
        return self.func is not None

    def spec(self) -> dict[str, Any]:
        """``{name, description, parameters}``: what the harmony renderer (and an OpenAI client) expects."""
        spec: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.parameters is not None:
            spec["parameters"] = self.parameters
        return spec

    def check(self, arguments: Mapping[str, Any]) -> str | None:
        """Why these arguments cannot be passed (missing or unexpected names), or None."""
        schema = self.parameters or {}
        known = schema.get("properties", {})
        unexpected = [k for k in arguments if k not in known]
        if unexpected and schema.get("additionalProperties") is not True:
            accepted = ", ".join(known) or "none"
            return f"unexpected argument(s) {', '.join(unexpected)} for {self.name} (parameters: {accepted})"
        missing = [k for k in schema.get("required", []) if k not in arguments]
        if missing:
            return f"missing required argument(s) {', '.join(missing)} for {self.name}"
        return None

    def call(self, arguments: Mapping[str, Any]) -> tuple[str, bool]:
        """Run the function; return (text for the model, is_error). Never raises for the function's errors."""
        if self.func is None:
            return f"Error: {self.name} is run by the caller, not by gptoss", True
        problem = self.check(arguments)
        if problem is not None:
            return f"Error: {problem}", True
        try:
            kwargs = {k: _coerce(v, self.hints.get(k, Any)) for k, v in arguments.items()}
            value = self.func(**kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
        except Exception as exc:
            return f"Error: {type(exc).__name__}: {exc}", True
        return as_text(value), False


async def _await(awaitable: Any) -> Any:
    return await awaitable


def as_text(value: Any) -> str:
    """A function's result as the model reads it: a str as it is, anything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


# --- docstrings ---------------------------------------------------------------------------------------------


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google- or reST-style docstring.

    The description is the first paragraph; wrapped lines (of it, or of a parameter's description) are joined.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    first: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or _ARGS_SECTION.match(stripped) or stripped.startswith(":"):
            break
        first.append(stripped)

    params: dict[str, str] = {}
    current: str | None = None  # the parameter whose description may go on in the next line
    section: int | None = None  # the indent of the "Args:" header while inside that section
    entry: int | None = None  # the indent of the section's entries
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped:
            current = current if section is not None else None
            continue
        if _ARGS_SECTION.match(stripped):
            section, entry, current = indent, None, None
            continue
        if section is not None and indent <= section:
            section = current = None
        if section is not None:  # Google style: "name (type): text", continued on deeper lines
            entry = indent if entry is None else entry
            match = _GOOGLE_ENTRY.match(stripped) if indent == entry else None
            if match:
                current = match.group(1)
                params[current] = match.group(2).strip()
            elif current is not None and indent > entry:
                params[current] = f"{params[current]} {stripped}".strip()
            continue
        match = _REST_PARAM.match(stripped)  # reST: ":param [type] name: text", continued on indented lines
        if match:
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current is not None and indent > 0 and not stripped.startswith(":"):
            params[current] = f"{params[current]} {stripped}".strip()
        else:
            current = None
    return " ".join(first), params


# --- JSON Schema from type hints ------------------------------------------------------------------------------


class _NoSchema(Exception):
    pass


def schema_for(hint: Any) -> dict[str, Any]:
    """The JSON Schema of one type hint; ``X | None`` adds ``"nullable": true`` (harmony shows ``X | null``)."""
    if hint is Any or hint is inspect.Parameter.empty or hint is object:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        schema = schema_for(args[0])
        notes = [a for a in args[1:] if isinstance(a, str)]
        return {**schema, "description": notes[0]} if notes else schema
    if hint is None or hint is type(None):
        return {"type": "null"}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        schema = schema_for(options[0]) if len(options) == 1 else {"oneOf": [schema_for(a) for a in options]}
        return {**schema, "nullable": True} if len(options) < len(args) else schema
    if origin is typing.Literal:
        return _enum_schema(list(args))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint])
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array"}  # a fixed-length tuple: items of mixed types
        return {"type": "array", "items": schema_for(args[0])} if args else {"type": "array"}
    if hint in _MAPPINGS or origin in _MAPPINGS:
        if len(args) == 2 and args[1] is not Any:
            return {"type": "object", "additionalProperties": schema_for(args[1])}
        return {"type": "object"}
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        required = [k for k in hints if k in hint.__required_keys__]
        return _object_schema({k: schema_for(h) for k, h in hints.items()}, required)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint, include_extras=True)
        properties, required = {}, []
        for f in dataclasses.fields(hint):
            properties[f.name] = schema_for(hints[f.name])
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            elif f.default is not dataclasses.MISSING and _is_json(f.default) and f.default is not None:
                properties[f.name]["default"] = _json_default(f.default)
        return _object_schema(properties, required)
    raise _NoSchema(getattr(hint, "__name__", repr(hint)))


def _enum_schema(values: list[Any]) -> dict[str, Any]:
    values = [v.value if isinstance(v, enum.Enum) else v for v in values]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if all(isinstance(v, str) for v in values):
        return {"type": "string", "enum": values}
    if all(isinstance(v, bool) for v in values):
        return {"type": "boolean", "enum": values}
    if len(numbers) == len(values):
        return {"type": "integer" if all(isinstance(v, int) for v in values) else "number", "enum": values}
    return {"enum": values}


def _object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _is_json(value: Any) -> bool:
    try:
        json.dumps(_json_default(value))
        return True
    except (TypeError, ValueError):
        return False


def _json_default(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def function_tool(func: Callable[..., Any], name: str | None = None) -> FunctionTool:
    """A tool from one Python function: its signature and docstring become the schema."""
    name = name or func.__name__
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise ToolsFileError(f"function {name}: its type hints cannot be resolved ({exc})") from exc
    description, docs = parse_docstring(inspect.getdoc(func))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolsFileError(
                f"function {name}: parameter {param.name} is positional-only",
                hint="Tools are called with keyword arguments; remove the '/' from its signature.",
            )
        hint = hints.get(param.name, Any)
        try:
            schema = schema_for(hint)
        except _NoSchema as exc:
            raise ToolsFileError(
                f"function {name}: parameter {param.name} has a type with no JSON Schema ({exc})",
                hint="Use str, int, float, bool, list, dict, Optional, Literal, an Enum, a TypedDict or a dataclass.",
            ) from None
        if param.default is param.empty:
            required.append(param.name)
        elif param.default is None:
            schema.pop("nullable", None)
        elif _is_json(param.default):
            schema["default"] = _json_default(param.default)
        if docs.get(param.name):
            schema["description"] = docs[param.name]
        properties[param.name] = schema
    parameters = _object_schema(properties, required) if properties else None
    return FunctionTool(name, description, parameters, func, {k: v for k, v in hints.items() if k != "return"})


def load_functions_file(path: str | Path) -> list[FunctionTool]:
    """Import a tools file (trusted: it runs in this process) and make a tool of each public function."""
    path = Path(path)
    if not path.is_file():
        raise ToolsFileError(f"tools file not found: {path}", hint="Pass a Python file that defines functions.")
    module_name = "gptoss_user_tools_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ToolsFileError(f"not a Python file: {path}", hint="A tools file is a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and get_type_hints look the module up by name
    sys.path.insert(0, str(path.parent.resolve()))  # let it import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ToolsFileError(
            f"importing {path} failed: {type(exc).__name__}: {exc}", hint="Run it with python to see the traceback."
        ) from exc
    finally:
        sys.path.remove(str(path.parent.resolve()))
    exported = getattr(module, "__all__", None)
    if exported is not None:
        names = list(exported)
    else:
        names = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module_name
        ]
    tools = []
    for name in names:
        value = getattr(module, name, None)
        if not callable(value):
            raise ToolsFileError(f"{path}: {name} in __all__ is not a function")
        tools.append(function_tool(value, name))
    if not tools:
        raise ToolsFileError(
            f"no functions found in {path}", hint="Define public (not _private) functions with type hints."
        )
    return tools


def tools_from_openai(specs: Any) -> list[FunctionTool]:
    """Tools the caller executes, from ``[{"type": "function", "function": {name, description, parameters}}]``
    (the flat ``{name, description, parameters}`` is accepted too)."""
    if not isinstance(specs, list):
        raise ToolsFileError("a tool list must be a JSON array", hint='[{"type": "function", "function": {...}}]')
    tools = []
    for spec in specs:
        body = spec.get("function", spec) if isinstance(spec, Mapping) else None
        if not isinstance(body, Mapping) or not isinstance(body.get("name"), str) or not body["name"]:
            raise ToolsFileError(
                f"a tool needs a name: {spec!r}", hint='{"type": "function", "function": {"name": ...}}'
            )
        if isinstance(spec, Mapping) and spec.get("type", "function") != "function":
            raise ToolsFileError(f"tool {body['name']}: only function tools are supported, not {spec['type']!r}")
        parameters = body.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ToolsFileError(f"tool {body['name']}: parameters must be a JSON Schema object")
        schema = dict(parameters) if parameters else None
        tools.append(FunctionTool(body["name"], body.get("description") or "", schema))
    return tools


def _coerce(value: Any, hint: Any) -> Any:
    """JSON arguments into what the function's hints ask for: dataclasses, enums, tuples and sets."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _coerce(value, args[0])
    if value is None:
        return None
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _coerce(value, options[0]) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type) and isinstance(value, Mapping):
        hints = typing.get_type_hints(hint)
        return hint(**{k: _coerce(v, hints.get(k, Any)) for k, v in value.items()})
    if isinstance(value, list) and (hint in _SEQUENCES or origin in _SEQUENCES):
        uniform = args and (origin is not tuple or args[-1] is Ellipsis)  # not a fixed-length tuple
        items = [_coerce(v, args[0]) for v in value] if uniform else value
        container = origin or hint
        return container(items) if container in (tuple, set, frozenset) else items
    if isinstance(value, Mapping) and origin in _MAPPINGS and len(args) == 2:
        return {k: _coerce(v, args[1]) for k, v in value.items()}
    return value
