"""Measure this host's roofline parameters (fp32 GEMM, int8 GEMM, memory and cache bandwidth,
per-op overhead) so the x86 target files can cite "measured here" numbers.

Usage: python tools/measure_host.py [--json]

Best-of-N timing is used throughout: on a shared VM the minimum is the least noisy estimate
of what the hardware can do, which is what a roofline's ceilings are meant to be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits


def _best_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_gflops_numpy(n: int, threads: int) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    # OpenBLAS reads its thread count at import; threadpoolctl is the only reliable way to
    # change it afterwards inside one process
    with threadpool_limits(limits=threads, user_api="blas"):
        s = _best_seconds(lambda: a @ b, repeats=5)
    return 2 * n**3 / s / 1e9


def gemm_gflops_torch(n: int, threads: int) -> float:
    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    s = _best_seconds(lambda: a @ b, repeats=5)
    return 2 * n**3 / s / 1e9


def gemm_gops_int8_torch(n: int, threads: int) -> float | None:
    # torch._int_mm is private; missing or unsupported on some builds, so the int8 figure is optional
    if not hasattr(torch, "_int_mm"):
        return None
    torch.set_num_threads(threads)
    a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    try:
        s = _best_seconds(lambda: torch._int_mm(a, b), repeats=5)
    except RuntimeError:
        return None
    return 2 * n**3 / s / 1e9


def read_bandwidth_gbps_numpy(nbytes: int, repeats: int) -> float:
    # a sum touches every byte once and does ~1 flop per 4 bytes, so it is bandwidth-bound
    x = np.ones(nbytes // 4, dtype=np.float32)
    s = _best_seconds(lambda: x.sum(), repeats=repeats)
    return x.nbytes / s / 1e9


def read_bandwidth_gbps_torch(nbytes: int, threads: int, repeats: int) -> float:
    # torch's reduction is OpenMP-parallel, so this shows what both cores can pull together
    torch.set_num_threads(threads)
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    s = _best_seconds(lambda: x.sum(), repeats=repeats)
    return x.numel() * 4 / s / 1e9


def gemv_gbps_torch(n: int, threads: int) -> float:
    # batch-1 streaming inference is matrix-vector work: every weight is read once per hop and
    # used once, so its ceiling is the weight-read rate, shown here as effective GB/s
    torch.set_num_threads(threads)
    w = torch.randn(n, n)
    x = torch.randn(n)
    s = _best_seconds(lambda: torch.mv(w, x), repeats=20 if n <= 2048 else 5)
    return w.numel() * 4 / s / 1e9


def op_overhead_us_torch() -> float:
    # a 1-element add is pure dispatch cost: the floor any eager-framework operator pays
    torch.set_num_threads(1)
    a = torch.ones(1)
    b = torch.ones(1)
    n = 20000

    def loop() -> None:
        for _ in range(n):
            torch.add(a, b)

    return _best_seconds(loop, repeats=5, warmup=1) / n * 1e6


def _cpu_name() -> str:
    # platform.processor() is just "x86_64" on Linux; /proc/cpuinfo has the marketing name
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure() -> dict[str, float | None | str]:
    r: dict[str, float | None | str] = {
        "host": _cpu_name(),
        "numpy_gemm_fp32_gflops_1t": gemm_gflops_numpy(2048, 1),
        "numpy_gemm_fp32_gflops_2t": gemm_gflops_numpy(2048, 2),
        "torch_gemm_fp32_gflops_1t": gemm_gflops_torch(2048, 1),
        "torch_gemm_fp32_gflops_2t": gemm_gflops_torch(2048, 2),
        "torch_gemm_int8_gops_1t": gemm_gops_int8_torch(2048, 1),
        "torch_gemm_int8_gops_2t": gemm_gops_int8_torch(2048, 2),
        "dram_read_gbps_numpy_1t_512MiB": read_bandwidth_gbps_numpy(512 << 20, repeats=5),
        "dram_read_gbps_torch_1t_512MiB": read_bandwidth_gbps_torch(512 << 20, 1, repeats=5),
        "dram_read_gbps_torch_2t_512MiB": read_bandwidth_gbps_torch(512 << 20, 2, repeats=5),
        # 8 MiB sits well inside the 32 MiB L3 but outside the 2 x 1 MiB L2s
        "l3_read_gbps_numpy_1t_8MiB": read_bandwidth_gbps_numpy(8 << 20, repeats=50),
        "l3_read_gbps_torch_1t_8MiB": read_bandwidth_gbps_torch(8 << 20, 1, repeats=50),
        "l3_read_gbps_torch_2t_8MiB": read_bandwidth_gbps_torch(8 << 20, 2, repeats=50),
        # fp32 matrix-vector: 4096^2 = 64 MiB streams from DRAM, 1024^2 = 4 MiB sits in L3
        "gemv_fp32_dram_gbps_1t": gemv_gbps_torch(4096, 1),
        "gemv_fp32_dram_gbps_2t": gemv_gbps_torch(4096, 2),
        "gemv_fp32_l3_gbps_1t": gemv_gbps_torch(1024, 1),
        "gemv_fp32_l3_gbps_2t": gemv_gbps_torch(1024, 2),
        "torch_op_overhead_us": op_overhead_us_torch(),
    }
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    # other processes on a 2-core VM halve the 2-thread numbers; say so rather than publish them silently
    load_before = os.getloadavg()[0]
    r = measure()
    r["loadavg_1min_before"] = load_before
    if load_before > 0.5:
        print(f"warning: 1-min load average {load_before:.2f} before measuring; "
              "multi-thread numbers are likely depressed, rerun on an idle machine", file=sys.stderr)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    for k, v in r.items():
        print(f"{k:34s} {v:.2f}" if isinstance(v, float) else f"{k:34s} {v}")


if __name__ == "__main__":
    main()
