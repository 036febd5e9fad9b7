"""What every kernel module asks of the runtime: is this Triton's CPU interpreter, and which tl.dot operand dtype.

CI has no GPU: there the kernels run under ``TRITON_INTERPRET=1``, which accepts CPU tensors and cannot multiply bf16
in tl.dot.
"""

from __future__ import annotations

import os

import torch
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """The operand dtype of tl.dot: the activation dtype (fp32 dots run in full "ieee" precision). Triton's CPU
    interpreter multiplies bf16 bit patterns as integers in tl.dot, so there bf16 operands are widened to fp32 first,
    which gives the same exact products a bf16 MMA accumulates in fp32."""
    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting()):
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]
