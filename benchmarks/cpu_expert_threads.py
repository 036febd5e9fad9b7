"""The CPU expert kernel's throughput by thread count (engine/cpu_experts.py), at gpt-oss's expert shape.

    python benchmarks/cpu_expert_threads.py [--threads 1,2,4,8,15]

Each row is measure_cpu_rate: packed expert bytes per second from RAM (every call reads experts no earlier call
touched) and the fixed cost of a call. Flat scaling past some count means memory bandwidth (or shared cores), not
the kernel, sets the CPU share of offloaded decode (engine/cpu_share.py).
"""

from __future__ import annotations

import argparse
import json

from gptoss_cli.engine import cpu_experts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2,4,8," + str(cpu_experts.default_threads()))
    args = ap.parse_args()
    cpu_experts.warm_up()
    for n in dict.fromkeys(int(t) for t in args.threads.split(",")):
        r = cpu_experts.measure_cpu_rate(threads=n, repeats=5)
        print(json.dumps({"threads": n, "gb_s": r.bytes_s / 1e9, "call_ms": r.call_s * 1e3}), flush=True)


if __name__ == "__main__":
    main()
