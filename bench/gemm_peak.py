#!/usr/bin/env python3
"""The card's measured GEMM peak per precision, what bench/gpu.sh sets
inference speeds against: torch.matmul of two n x n matrices (fp32 with TF32
off, fp32 with TF32 on, bf16), median of --iters after --warmup, in TFLOP/s
(2 n^3 per product). One JSON line:

    python3 bench/gemm_peak.py [--device cuda|cpu] [--n 8192]
    {"device": "NVIDIA H100 80GB HBM3", "n": 8192, "fp32": 51.2, "tf32": 378.0, "bf16": 702.1}
"""

import argparse
import json
import statistics
import time

import torch


def timed_matmul(a, b, iters, warmup, cuda):
    times = []
    for i in range(warmup + iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.matmul(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            torch.matmul(a, b)
            seconds = time.perf_counter() - t0
        if i >= warmup:
            times.append(seconds)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--n", type=int, default=0, help="matrix size (default 8192 on a GPU, 1024 on the CPU)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    n = args.n or (8192 if cuda else 1024)
    torch.manual_seed(0)
    a = torch.randn(n, n, device=args.device)
    b = torch.randn(n, n, device=args.device)
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "n": n}
    for precision in ["fp32", "tf32", "bf16"]:
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        x, y = (a.bfloat16(), b.bfloat16()) if precision == "bf16" else (a, b)
        seconds = timed_matmul(x, y, args.iters, args.warmup, cuda)
        out[precision] = float(f"{2 * n**3 / seconds / 1e12:.4g}")
    torch.backends.cuda.matmul.allow_tf32 = False
    print(json.dumps(out))


if __name__ == "__main__":
    main()
