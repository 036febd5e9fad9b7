"""JSON Schema -> the TypeScript-like text harmony shows the model for a tool's parameters.

It reproduces openai-harmony's ``json_schema_to_typescript`` character for character, quirks included
(spec harmony.md §2.5: a nested object's closing brace is indented, an object property's description appears
twice, enum defaults are unquoted), because the model was trained on exactly this text.
"""

from __future__ import annotations

import json
from typing import Any


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _get(schema: Any, key: str) -> Any:
    return schema.get(key) if isinstance(schema, dict) else None


def _has(schema: Any, key: str) -> bool:
    return isinstance(schema, dict) and key in schema


def _is_enum(schema: Any) -> bool:
    values = _get(schema, "enum")
    return isinstance(values, list) and len(values) > 0


def _default_text(schema: dict) -> str:
    default = schema["default"]
    if isinstance(default, str):
        return f"default: {default}" if _is_enum(schema) else f'default: "{default}"'
    return f"default: {_json(default)}"


def _nullable(schema: Any, type_text: str) -> str:
    if _get(schema, "nullable") is True and "null" not in type_text:
        return f"{type_text} | null"
    return type_text


def _variant_comments(variant: Any, skip_description: bool, property_description: str | None) -> str:
    comments = []
    description = _get(variant, "description")
    if not skip_description and isinstance(description, str) and description != property_description:
        comments.append(description)
    if _has(variant, "default"):
        comments.append(_default_text(variant))
    return f" // {' '.join(comments)}" if comments else ""


def lines(text: str) -> list[str]:
    """Rust's ``str::lines``: split on newlines, drop a trailing empty line and a ``\\r`` before each newline."""
    parts = text.split("\n")
    if parts[-1] == "":
        parts.pop()
    return [p.removesuffix("\r") for p in parts]


def to_typescript(schema: Any, indent: str = "") -> str:
    one_of = _get(schema, "oneOf")
    if isinstance(one_of, list):
        out = ""
        for variant in one_of:
            out += f"\n{indent} | " + _nullable(variant, to_typescript(variant, indent + "   "))
            out += _variant_comments(variant, skip_description=False, property_description=None)
        return out
    kind = _get(schema, "type")
    if isinstance(kind, list):
        names = ["number" if k == "integer" else k for k in kind if isinstance(k, str)]
        if names:
            return " | ".join(names)
    if kind == "object":
        return _object(schema, indent)
    if kind == "string":
        enum = _get(schema, "enum")
        values = [f'"{v}"' for v in enum if isinstance(v, str)] if isinstance(enum, list) else []
        return " | ".join(values) if values else "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "array":
        return to_typescript(schema["items"], indent) + "[]" if "items" in schema else "Array<any>"
    return "any"


def _object(schema: dict, indent: str) -> str:
    out = ""
    description = schema.get("description")
    if isinstance(description, str):
        out += f"{indent}// {description}\n"
    out += "{\n"
    properties = schema.get("properties")
    if isinstance(properties, dict):
        required_list = schema.get("required")
        required = {r for r in required_list if isinstance(r, str)} if isinstance(required_list, list) else set()
        for key, prop in properties.items():
            out += _property(key, prop, key in required, indent)
    return out + f"{indent}}}"


def _property(key: str, prop: Any, required: bool, indent: str) -> str:
    out = ""
    mark = "" if required else "?"
    title = _get(prop, "title")
    if isinstance(title, str):
        out += f"{indent}// {title}\n{indent}//\n"
    description = _get(prop, "description")
    description = description if isinstance(description, str) else None
    if not _has(prop, "oneOf") and description is not None:
        out += f"{indent}// {description}\n"
    examples = _get(prop, "examples")
    if isinstance(examples, list) and examples:
        out += f"{indent}// Examples:\n"
        out += "".join(f'{indent}// - "{ex}"\n' for ex in examples if isinstance(ex, str))
    one_of = _get(prop, "oneOf")
    if isinstance(one_of, list):
        first_description = _get(one_of[0], "description") if one_of else None
        described_above = description is not None and description != first_description
        if described_above:
            out += f"{indent}// {description}\n"
        if _has(prop, "default"):
            out += f"{indent}// {_default_text(prop)}\n"
        out += f"{indent}{key}{mark}:\n"
        for i, variant in enumerate(one_of):
            out += f"{indent} | " + _nullable(variant, to_typescript(variant, indent + "   "))
            out += _variant_comments(
                variant, skip_description=(i == 0 and described_above), property_description=description
            )
            out += "\n"
        return out + f"{indent},\n"
    out += f"{indent}{key}{mark}: " + _nullable(prop, to_typescript(prop, indent + "    ")) + ","
    if not _has(prop, "oneOf") and _has(prop, "default"):
        out += f" // {_default_text(prop)}"
    return out + "\n"
