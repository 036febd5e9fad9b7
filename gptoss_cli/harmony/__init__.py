"""The harmony chat format of gpt-oss: tokenizer, prompt rendering, token-true history, output parsing.

- ``tokenizer``: ``Tokenizer`` (tokenizer.json via ``tokenizers``; special ids as constants), ``StreamDecoder``,
  ``format_tokens_visible`` for --print-prompt.
- ``render``: message dicts + ``ChatOptions`` -> ids, token for token as openai-harmony renders them.
- ``conversation``: ``Conversation`` keeps the model's generated ids verbatim; ``common_prefix`` for the KV cache.
- ``parser``: ``Parser`` turns generated ids into events, leniently, never raising.
- ``vocab``: builds tokenizer.json files (real o200k_harmony from o200k_base.tiktoken, or a tiny test one).

No torch here: the engine hands ids in and out.
"""

from gptoss_cli.harmony.conversation import Conversation, common_prefix
from gptoss_cli.harmony.parser import (
    ArgumentError,
    FormatIssue,
    MessageEnd,
    MessageStart,
    Parser,
    TextDelta,
    ToolCall,
    TurnEnd,
    parse_completion,
)
from gptoss_cli.harmony.render import (
    BROWSER_TOOL,
    PYTHON_STATELESS_TOOL,
    PYTHON_TOOL,
    ChatOptions,
    FunctionTool,
    MessageFormatError,
    ToolNamespace,
    function_tools,
    render_prompt,
)
from gptoss_cli.harmony.tokenizer import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    MESSAGE,
    RETURN,
    SAMPLING_STOP_IDS,
    START,
    StreamDecoder,
    Tokenizer,
    TokenizerError,
    format_tokens_visible,
    visible_pieces,
)

__all__ = [
    "BROWSER_TOOL",
    "CALL",
    "CHANNEL",
    "CONSTRAIN",
    "END",
    "ENDOFTEXT",
    "MESSAGE",
    "PYTHON_STATELESS_TOOL",
    "PYTHON_TOOL",
    "RETURN",
    "SAMPLING_STOP_IDS",
    "START",
    "ArgumentError",
    "ChatOptions",
    "Conversation",
    "FormatIssue",
    "FunctionTool",
    "MessageEnd",
    "MessageFormatError",
    "MessageStart",
    "Parser",
    "StreamDecoder",
    "TextDelta",
    "Tokenizer",
    "TokenizerError",
    "ToolCall",
    "ToolNamespace",
    "TurnEnd",
    "common_prefix",
    "format_tokens_visible",
    "function_tools",
    "parse_completion",
    "render_prompt",
    "visible_pieces",
]
