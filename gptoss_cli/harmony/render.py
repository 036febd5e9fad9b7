"""Render a chat to harmony token ids, token for token as openai-harmony renders it.

Messages are plain dicts, close to the OpenAI chat shape:

    {"role": "user", "content": "What is 2+2?"}
    {"role": "assistant", "channel": "analysis", "content": "Simple sum."}
    {"role": "assistant", "content": "4"}                               # channel defaults to "final"
    {"role": "assistant", "channel": "commentary", "recipient": "functions.get_weather",
     "content_type": "<|constrain|>json", "content": '{"city":"Paris"}'}  # a tool call (ends with <|call|>)
    {"role": "assistant", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
        # OpenAI sugar: one call message per entry, to=functions.NAME on commentary, <|constrain|>json
    {"role": "tool", "name": "functions.get_weather", "content": '{"temp": 20}'}
        # a tool result: recipient defaults to "assistant", channel to "commentary" (python results: "analysis")
    {"role": "system" | "developer", "content": "Answer like a pirate."}
        # leading ones become the developer message's "# Instructions"; later ones render in place

Keys: ``role`` (system/developer/user/assistant/tool), ``content`` (str), ``channel``, ``recipient``,
``content_type``, ``name`` (a tool result's author, e.g. "functions.get_weather", "python", "browser.search";
for other roles an optional ``role:name``), ``tool_calls``. Other keys (``tool_call_id``...) are ignored.
An assistant message with a recipient defaults to channel "commentary".

Conversation-level settings (system message, developer instructions, tools) live in ``ChatOptions``.
Assistant messages given as dicts render in harmony's layout (recipient before channel). Completions the model
generated should instead be kept as ids (``Conversation.append_completion``), which preserves the model's own
layout (spec §7 pitfall 1).

History rule (``finished_analysis``): analysis messages (CoT without a recipient) before the last user message
are dropped; tool calls and results stay. Inside the current turn (an unfinished tool loop) all CoT stays.
This is the docs/HF-template rule. openai-harmony's ``auto_drop_analysis`` is looser and differs in three cases
(spec §4.3): it keeps the CoT of turns after the first final answer, drops nothing while the newest assistant
message is a tool call, and drops python calls/results of finished turns (their channel is analysis).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptoss_cli.errors import GptossError
from gptoss_cli.harmony.schema import lines, to_typescript
from gptoss_cli.harmony.tokenizer import CALL, CHANNEL, CONSTRAIN, END, MESSAGE, START, Tokenizer

DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
REASONING_EFFORTS = ("low", "medium", "high")
ROLES = ("system", "developer", "user", "assistant", "tool")
_CONSTRAIN_TEXT = "<|constrain|>"


class MessageFormatError(GptossError):
    """A message dict does not have the documented shape."""


@dataclass(frozen=True)
class FunctionTool:
    """One callable tool: ``parameters`` is a JSON Schema (None renders ``() => any``)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ToolNamespace:
    """A ``## name`` block of tools; a namespace without tools renders its description as plain text."""

    name: str
    description: str | None = None
    tools: tuple[FunctionTool, ...] = ()


BROWSER_TOOL = ToolNamespace(
    name="browser",
    description=(
        "Tool for browsing.\n"
        "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
        "Cite information from the tool using the following format:\n"
        "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
        "Do not quote more than 10 words directly from the tool output.\n"
        "sources=web (default: web)"
    ),
    tools=(
        FunctionTool(
            "search",
            "Searches for information related to `query` and displays `topn` results.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string"},
                    "topn": {"type": "number", "default": 10},
                    "source": {"type": "string"},
                },
                "required": ["query"],
            },
        ),
        FunctionTool(
            "open",
            "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, showing "
            "`num_lines` lines.\n"
            "Valid link ids are displayed with the formatting: `【{id}†.*】`.\n"
            "If `cursor` is not provided, the most recent page is implied.\n"
            "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
            "If `loc` is not provided, the viewport will be positioned at the beginning of the document or centered "
            "on the most relevant passage, if available.\n"
            "Use this function without `id` to scroll to a new location of an opened page.",
            {
                "type": "object",
                "properties": {
                    "id": {"type": ["number", "string"], "default": -1},
                    "cursor": {"type": "number", "default": -1},
                    "loc": {"type": "number", "default": -1},
                    "num_lines": {"type": "number", "default": -1},
                    "view_source": {"type": "boolean", "default": False},
                    "source": {"type": "string"},
                },
            },
        ),
        FunctionTool(
            "find",
            "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
            {
                "type": "object",
                "properties": {"pattern": {"type": "string"}, "cursor": {"type": "number", "default": -1}},
                "required": ["pattern"],
            },
        ),
    ),
)

# openai-harmony's python namespace (a stateful Jupyter kernel).
PYTHON_TOOL = ToolNamespace(
    name="python",
    description=(
        "Use this tool to execute Python code in your chain of thought. The code will not be shown to the user. "
        "This tool should be used for internal reasoning, but not for code that is intended to be visible to the "
        "user (e.g. when creating plots, tables, or files).\n\n"
        "When you send a message containing Python code to python, it will be executed in a stateful Jupyter "
        "notebook environment. python will respond with the output of the execution or time out after 120.0 "
        "seconds. The drive at '/mnt/data' can be used to save and persist user files. Internet access for this "
        "session is UNKNOWN. Depends on the cluster."
    ),
)

# The gpt-oss reference's description for a runner that keeps no state between calls (spec §3.8).
PYTHON_STATELESS_TOOL = ToolNamespace(
    name="python",
    description=(
        "Use this tool to execute STATELESS Python code in your chain of thought. The code will not be shown to "
        "the user. This tool should be used for internal reasoning, but not for code that is intended to be "
        "visible to the user (e.g. when creating plots, tables, or files).\n"
        "When you send a message containing python code to python, it will be executed in a stateless docker "
        "container, and the stdout of that process will be returned to you. You have to use print statements to "
        "access the output.\n\n"
        "IMPORTANT: Your python environment is not shared between calls. You will have to pass your entire code "
        "each time."
    ),
)


@dataclass(frozen=True)
class ChatOptions:
    """Everything that shapes the system and developer messages; keep it fixed for a session (KV prefix)."""

    reasoning_effort: str = "medium"
    current_date: str | None = None  # "YYYY-MM-DD"
    knowledge_cutoff: str | None = "2024-06"
    model_identity: str | None = DEFAULT_MODEL_IDENTITY
    builtin_tools: tuple[ToolNamespace, ...] = ()  # BROWSER_TOOL, PYTHON_TOOL or PYTHON_STATELESS_TOOL
    functions: tuple[FunctionTool, ...] = ()  # see function_tools() for OpenAI-style tool lists
    instructions: str | None = None  # developer "# Instructions"

    def __post_init__(self) -> None:
        if self.reasoning_effort not in REASONING_EFFORTS:
            raise MessageFormatError(
                f"unknown reasoning effort {self.reasoning_effort!r}", hint="Use low, medium or high."
            )


def function_tools(specs: Iterable[Mapping[str, Any]]) -> tuple[FunctionTool, ...]:
    """Tools from OpenAI-style dicts: ``{"type": "function", "function": {name, description, parameters}}``
    or the flat ``{name, description, parameters}``."""
    tools = []
    for spec in specs:
        body = spec.get("function", spec)
        if not isinstance(body, Mapping) or not isinstance(body.get("name"), str):
            raise MessageFormatError(f"a tool needs a name: {spec!r}")
        tools.append(FunctionTool(body["name"], body.get("description") or "", body.get("parameters")))
    return tuple(tools)


def tools_section(namespaces: Iterable[ToolNamespace]) -> str:
    """The ``# Tools`` section: one block per namespace, ordered by name as harmony's BTreeMap orders them."""
    by_name = {ns.name: ns for ns in namespaces}
    sections = ["# Tools"]
    for name in sorted(by_name):
        ns = by_name[name]
        block = [f"## {ns.name}\n"]
        if ns.description is not None:
            block += [f"// {line}" if ns.tools else line for line in lines(ns.description)]
        if ns.tools:
            block.append(f"namespace {ns.name} {{\n")
            for tool in ns.tools:
                block += [f"// {line}" for line in lines(tool.description)]
                if tool.parameters is None:
                    block.append(f"type {tool.name} = () => any;\n")
                else:
                    block.append(f"type {tool.name} = (_: {to_typescript(dict(tool.parameters))}) => any;\n")
            block.append(f"}} // namespace {ns.name}")
        sections.append("\n".join(block))
    return "\n\n".join(sections)


def system_text(options: ChatOptions) -> str:
    sections = []
    top = []
    if options.model_identity is not None:
        top.append(options.model_identity)
    if options.knowledge_cutoff is not None:
        top.append(f"Knowledge cutoff: {options.knowledge_cutoff}")
    if options.current_date is not None:
        top.append(f"Current date: {options.current_date}")
    if top:
        sections.append("\n".join(top))
    sections.append(f"Reasoning: {options.reasoning_effort}")
    if options.builtin_tools:
        sections.append(tools_section(options.builtin_tools))
    channels = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
    if options.functions:
        channels += "\nCalls to these tools must go to the commentary channel: 'functions'."
    sections.append(channels)
    return "\n\n".join(sections)


def developer_text(instructions: str | None, functions: Sequence[FunctionTool]) -> str | None:
    """The developer message body, or None when there is nothing to say."""
    sections = []
    if instructions is not None:
        sections += ["# Instructions", instructions]
    if functions:
        sections.append(tools_section([ToolNamespace("functions", None, tuple(functions))]))
    return "\n\n".join(sections) if sections else None


@dataclass(frozen=True)
class HarmonyMessage:
    """One harmony message, normalised from a dict. ``role`` is the author role; tools carry ``name``."""

    role: str
    content: str
    name: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None

    @property
    def is_call(self) -> bool:
        return self.role == "assistant" and self.recipient is not None


def _text(message: Mapping[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is not None and not isinstance(value, str):
        raise MessageFormatError(f"message {key!r} must be a string, got {type(value).__name__}: {message!r}")
    return value


def normalize(message: Mapping[str, Any]) -> list[HarmonyMessage]:
    """A dict in the documented shape -> harmony messages (several when it has ``tool_calls``)."""
    if not isinstance(message, Mapping):
        raise MessageFormatError(f"a message must be a dict, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise MessageFormatError(f"unknown message role {role!r}", hint=f"Use one of: {', '.join(ROLES)}.")
    content = _text(message, "content")
    name, channel = _text(message, "name"), _text(message, "channel")
    recipient, content_type = _text(message, "recipient"), _text(message, "content_type")
    calls = message.get("tool_calls") or []
    if role == "tool":
        if name is None:
            raise MessageFormatError(
                "a tool result needs the tool's name", hint='Set "name", e.g. "functions.get_weather" or "python".'
            )
        recipient = "assistant" if recipient is None else recipient
        channel = "commentary" if channel is None else channel
    if role == "assistant" and channel is None:
        channel = "commentary" if recipient is not None or calls else "final"
    out = []
    if content is not None or not calls:
        if content is None:
            raise MessageFormatError(f"message has no content: {message!r}")
        out.append(HarmonyMessage(role, content, name, channel, recipient, content_type))
    for call in calls:
        function = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise MessageFormatError(f"a tool call needs a function name: {call!r}")
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
        out.append(
            HarmonyMessage(
                "assistant", arguments, None, "commentary", f"functions.{function['name']}", _CONSTRAIN_TEXT + "json"
            )
        )
    return out


def render_message(message: HarmonyMessage, tokenizer: Tokenizer) -> list[int]:
    """``<|start|>{role}[ to=R][<|channel|>C][ type]<|message|>{content}<|end|>`` (``<|call|>`` for calls).

    Each piece is encoded on its own, as harmony does: BPE never merges across piece boundaries.
    """
    ids = [START]
    if message.role == "tool":
        ids += tokenizer.encode(message.name or "")
    else:
        ids += tokenizer.encode(message.role)
        if message.name is not None:
            ids += tokenizer.encode(f":{message.name}")
    if message.recipient is not None and message.recipient != "all":
        ids += tokenizer.encode(f" to={message.recipient}")
    if message.channel is not None:
        ids += [CHANNEL] + tokenizer.encode(message.channel)
    if message.content_type is not None:
        if message.content_type.startswith(_CONSTRAIN_TEXT):
            ids += tokenizer.encode(" ") + [CONSTRAIN] + tokenizer.encode(message.content_type[len(_CONSTRAIN_TEXT) :])
        else:
            ids += tokenizer.encode(f" {message.content_type}")
    ids += [MESSAGE] + tokenizer.encode(message.content)
    ids.append(CALL if message.is_call else END)
    return ids


def render_preamble(options: ChatOptions, tokenizer: Tokenizer, instructions: str | None = None) -> list[int]:
    """System message, then the developer message (instructions + function tools) when there is one."""
    ids = render_message(HarmonyMessage("system", system_text(options)), tokenizer)
    joined = [text for text in (options.instructions, instructions) if text is not None]
    developer = developer_text("\n\n".join(joined) if joined else None, options.functions)
    if developer is not None:
        ids += render_message(HarmonyMessage("developer", developer), tokenizer)
    return ids


def generation_prompt(tokenizer: Tokenizer) -> list[int]:
    """``<|start|>assistant``: what the model continues from."""
    return [START] + tokenizer.encode("assistant")


def finished_analysis(messages: Sequence[HarmonyMessage]) -> set[int]:
    """Indexes of CoT to drop: assistant analysis without a recipient that comes before the last user message."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return {
        i
        for i, m in enumerate(messages[:last_user])
        if m.role == "assistant" and m.channel == "analysis" and m.recipient is None
    }


def split_leading_instructions(messages: Sequence[Mapping[str, Any]]) -> tuple[str | None, list[Mapping[str, Any]]]:
    """Leading system/developer dicts -> one instructions text (joined by a blank line) and the rest."""
    texts = []
    rest = list(messages)
    while rest and isinstance(rest[0], Mapping) and rest[0].get("role") in ("system", "developer"):
        content = _text(rest.pop(0), "content")
        if content is not None:
            texts.append(content)
    return ("\n\n".join(texts) if texts else None), rest


def to_harmony_messages(messages: Sequence[Mapping[str, Any]]) -> list[HarmonyMessage]:
    """Dicts -> harmony messages; a system/developer dict after the start becomes a developer message."""
    out = []
    for message in messages:
        for m in normalize(message):
            if m.role in ("system", "developer"):
                m = HarmonyMessage("developer", developer_text(m.content, ()) or "")
            out.append(m)
    return out


def render_history(
    messages: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, options: ChatOptions = ChatOptions()
) -> list[int]:
    """The whole conversation as ids (no generation prompt), with finished turns' CoT dropped."""
    instructions, rest = split_leading_instructions(messages)
    harmony = to_harmony_messages(rest)
    dropped = finished_analysis(harmony)
    ids = render_preamble(options, tokenizer, instructions)
    for i, message in enumerate(harmony):
        if i not in dropped:
            ids += render_message(message, tokenizer)
    return ids


def render_prompt(
    messages: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, options: ChatOptions = ChatOptions()
) -> list[int]:
    """Ids to sample the next assistant message from: the history, then ``<|start|>assistant``."""
    return render_history(messages, tokenizer, options) + generation_prompt(tokenizer)
