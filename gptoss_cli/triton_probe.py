"""The smallest Triton kernel, for ``gptoss doctor``: if it compiles and adds two vectors correctly on the GPU,
the Triton toolchain (compiler, bundled ptxas, on Windows the bundled C compiler) works on this machine.
Importing this module imports triton."""

from __future__ import annotations

import time

import torch
import triton
import triton.language as tl


@triton.jit
def _add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + tl.load(y_ptr + offsets, mask=mask), mask=mask)


def run(device: str) -> float:
    """Compile and run the kernel on ``device``; returns the seconds it took (mostly compilation). Raises
    whatever Triton raises, or AssertionError when the sum is wrong."""
    start = time.perf_counter()
    x = torch.arange(1000, dtype=torch.float32, device=device)
    y = torch.full_like(x, 0.5)
    out = torch.empty_like(x)
    _add[(triton.cdiv(x.numel(), 256),)](x, y, out, x.numel(), BLOCK=256)
    assert torch.equal(out.cpu(), (x + y).cpu()), "the Triton kernel computed a wrong sum"
    return time.perf_counter() - start
