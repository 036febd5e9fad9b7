"""The MoE decode kernels at the 20b shape, run eagerly, for Nsight Compute (ncu) to profile.

    ncu --clock-control none -k regex:decode_kernel --launch-skip 8 --launch-count 2 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy python benchmarks/profile_moe_decode.py

Eight layers of random experts are cycled so that the weights come from HBM, not from L2.
"""

from __future__ import annotations

import torch
from gptoss_kernels import moe as moe_kernels

H, I, E, TOP_K = 2880, 2880, 32, 4


def main() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)

    def layer() -> tuple:
        return (
            (torch.randn(E, H, device="cuda", generator=gen) / H**0.5).bfloat16(),
            torch.randn(E, device="cuda", generator=gen).bfloat16(),
            torch.randint(0, 256, (E, 2 * I, H // 32, 16), dtype=torch.uint8, device="cuda", generator=gen),
            torch.randint(116, 124, (E, 2 * I, H // 32), dtype=torch.uint8, device="cuda", generator=gen),
            torch.randn(E, 2 * I, device="cuda", generator=gen).bfloat16(),
            torch.randint(0, 256, (E, H, I // 32, 16), dtype=torch.uint8, device="cuda", generator=gen),
            torch.randint(114, 122, (E, H, I // 32), dtype=torch.uint8, device="cuda", generator=gen),
            torch.randn(E, H, device="cuda", generator=gen).bfloat16(),
        )

    layers = [layer() for _ in range(8)]
    x = torch.randn(1, H, device="cuda", generator=gen).bfloat16()
    for i in range(16):
        moe_kernels.moe_decode(x, *layers[i % len(layers)], TOP_K)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
