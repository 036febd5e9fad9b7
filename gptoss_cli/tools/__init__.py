"""Tools the model can call: the harmony ``python`` tool and the user's own functions, behind approval.

- ``registry``: ``ToolRegistry``, a session's tools; ``dispatch(recipient, text, channel)`` answers every call.
- ``python``: ``PythonTool``, code run in a separate, stateful worker process with a timeout, a memory limit and an
  output cap (``_pyworker.py`` is that process; ``winjob`` its Windows Job Object).
- ``functions``: ``FunctionTool`` from a ``--tools`` Python file (trusted, in-process) or an OpenAI-style list.
- ``approval``: ``Approval`` (once / always for this tool / deny; ``yes``), ``render_call`` for the REPL.
- ``call``: ``ToolCall`` and ``ToolResult``, what passes between the chat session and the tools.

Nothing here knows about the engine or torch.
"""

from gptoss_cli.tools.approval import DENIED, Approval, render_call
from gptoss_cli.tools.call import ToolCall, ToolResult
from gptoss_cli.tools.functions import (
    FunctionTool,
    ToolsFileError,
    function_tool,
    load_functions_file,
    tools_from_openai,
)
from gptoss_cli.tools.python import PythonLimits, PythonOutcome, PythonTool
from gptoss_cli.tools.registry import ToolInfo, ToolRegistry

__all__ = [
    "DENIED",
    "Approval",
    "FunctionTool",
    "PythonLimits",
    "PythonOutcome",
    "PythonTool",
    "ToolCall",
    "ToolInfo",
    "ToolRegistry",
    "ToolResult",
    "ToolsFileError",
    "function_tool",
    "load_functions_file",
    "render_call",
    "tools_from_openai",
]
