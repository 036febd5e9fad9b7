"""The MoE decode kernels at the 20b shape, run eagerly, for Nsight Compute (ncu) to profile.

    ncu --clock-control none -k regex:decode_kernel --launch-skip 8 --launch-count 2 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy python benchmarks/profile_moe_decode.py

Eight layers of random experts (bench_kernels.moe_layer; run from the repository root, on PYTHONPATH) are
cycled so that the weights come from HBM, not from L2.
"""

from __future__ import annotations

import torch
from gptoss_kernels import moe as moe_kernels

from benchmarks.bench_kernels import H, TOP_K, moe_layer


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    layers = [moe_layer(gen) for _ in range(8)]
    x = torch.randn(1, H, device="cuda", generator=gen).bfloat16()
    for i in range(16):
        moe_kernels.moe_decode(x, *layers[i % len(layers)], TOP_K)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
