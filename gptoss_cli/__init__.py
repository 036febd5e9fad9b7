"""gptoss: local chat with gpt-oss-20b and gpt-oss-120b.

The small Python API other code builds on::

    import gptoss_cli
    engine = gptoss_cli.load("path/to/model-dir", device="auto")
    logits = engine.logits([200006, 17360])           # float32 [2, vocab]
    for token in engine.generate(ids, max_new_tokens=64, temperature=1.0, seed=0):
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .engine.generator import Engine


def load(model: Any, device: str = "auto", **kwargs: Any) -> "Engine":
    """Load a model directory in the hub layout onto ``device`` ("auto", "cpu", "cuda", "cuda:1")."""
    from .engine.generator import load as _load

    return _load(model, device=device, **kwargs)


__all__ = ["__version__", "load"]
