#!/usr/bin/env python3
"""The cores' measured peaks, fp32 and int8, for the benchmarks' floors (`benchmarks/peaks.py` prints them).

Small C kernels, built with the machine's C compiler (`cc -O3 -march=native`): independent chains of
AVX-512 FMAs (fp32: 16 lanes x 2 flops an instruction), of AVX-512 BF16 dot products (vdpbf16ps: 32 pairs
x 2 flops) and of AVX-512 VNNI dot products (int8: vpdpbusd, 64 u8 x s8 multiply-adds x 2 ops), enough
chains that only the units' throughput limits them. Each runs in the thread's CPU time, so other processes sharing a core do not lower the figure;
on several cores one copy runs pinned to each core at once and the figures add up (the clock all of them
hold together). `make bench-port` takes one core's fp32 and int8 peaks; `make bench-engine`'s profile
takes the fp32 one on its threads' cores where it is above what torch.mm and a convolution reach, and its
fp32-beside-bf16 table one core's fp32 and bf16 peaks (the ceiling of bf16's gain on the convolutions).
Where no C compiler or no AVX-512 (BF16, VNNI) is at hand there is no figure (None), and the callers say so.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
/* 16 independent chains of one AVX-512 instruction (%(what)s), enough that only the units' throughput
   limits them, timed in the thread's CPU time, so that other processes sharing the core do not lower
   the figure. The chains are named variables: an array of them is kept on the stack, and its stores
   can halve the figure. */
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define DECL(i) %(acc)s c##i = %(init)s;
#define STEP(i) c##i = %(step)s;
#define SUM(i) s = %(add)s(s, c##i);
int main(void) {
  const long iters = 20000000L;
  %(operands)s
  CHAINS(DECL)
  struct timespec t0, t1; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
  for (long k = 0; k < iters; k++) { CHAINS(STEP) }
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t1);
  %(acc)s s = %(zero)s; CHAINS(SUM)
  double dt = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%%.3f %%g\n", iters * 16.0 * %(ops)d / dt / 1e9, (double)%(reduce)s(s));
  return 0;
}
"""
FP32_KERNEL = KERNEL % {  # 16 lanes x 2 flops
    "what": "FMA, 16 fp32 lanes", "acc": "__m512", "init": "_mm512_set1_ps((float)i)",
    "step": "_mm512_fmadd_ps(c##i, a, b)", "add": "_mm512_add_ps", "zero": "_mm512_setzero_ps()", "ops": 32,
    "operands": "const __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);",
    "reduce": "_mm512_reduce_add_ps"}
BF16_KERNEL = KERNEL % {  # vdpbf16ps: 32 bfloat16 pairs into 16 fp32 lanes, 2 flops a pair (no AMX)
    "what": "vdpbf16ps, the bfloat16 dot product", "acc": "__m512", "init": "_mm512_set1_ps((float)i)",
    "step": "_mm512_dpbf16_ps(c##i, a, b)", "add": "_mm512_add_ps", "zero": "_mm512_setzero_ps()", "ops": 64,
    "operands": "const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = a;",
    "reduce": "_mm512_reduce_add_ps"}
INT8_KERNEL = KERNEL % {  # vpdpbusd: 64 u8 x s8 multiply-adds into 16 int32 lanes, 2 ops each
    "what": "vpdpbusd, the VNNI int8 dot product", "acc": "__m512i", "init": "_mm512_set1_epi32(i)",
    "step": "_mm512_dpbusd_epi32(c##i, a, b)", "add": "_mm512_add_epi32", "zero": "_mm512_setzero_si512()",
    "ops": 128, "operands": "const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(-1);",
    "reduce": "_mm512_reduce_add_epi32"}


class PeakError(RuntimeError):
    """A kernel that built but did not run (a core that is not there, say); exit status 2 from main()."""


def kernel_runs(source: str, flags: tuple[str, ...], tries: int, cores: tuple[int, ...] = (0,)) -> list[float] | None:
    """The figure a peak kernel prints (its first word) in each of `tries` runs, summed over one copy
    pinned to each of `cores` at once; None where no C compiler builds it with any of `flags`; PeakError
    where it built and did not run."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(source)
        if not any(subprocess.run([cc, "-O3", flag, "-o", str(exe), str(src)], capture_output=True,
                                  check=False).returncode == 0 for flag in flags):
            return None
        pin = shutil.which("taskset")
        runs = []
        for _ in range(tries):
            procs = [subprocess.Popen(["taskset", "-c", str(c), str(exe)] if pin else [str(exe)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cores]
            total = 0.0
            for c, proc in zip(cores, procs):
                out, err = proc.communicate()
                if proc.returncode != 0 or not out.split():
                    raise PeakError(f"the peak kernel did not run on core {c}: {(err or out).strip()[-300:]}")
                total += float(out.split()[0])
            runs.append(total)
        return runs


def fp32_gflops(cores: tuple[int, ...] = (0,), tries: int = 5) -> float | None:
    """The best of `tries` runs of the FMA kernel on `cores` (GFLOP/s), or None."""
    runs = kernel_runs(FP32_KERNEL, ("-march=native", "-mavx512f"), tries, cores)
    return max(runs) if runs else None


def int8_gops(cores: tuple[int, ...] = (0,), tries: int = 5) -> float | None:
    """The best of `tries` runs of the VNNI kernel on `cores` (GOP/s), or None."""
    runs = kernel_runs(INT8_KERNEL, ("-march=native", "-mavx512vnni"), tries, cores)
    return max(runs) if runs else None


def bf16_gflops(cores: tuple[int, ...] = (0,), tries: int = 5) -> float | None:
    """The best of `tries` runs of the AVX-512 BF16 kernel on `cores` (GFLOP/s), or None. AMX's tiles, where a
    CPU has them, go faster still: this is the peak of the vector path only."""
    runs = kernel_runs(BF16_KERNEL, ("-march=native", "-mavx512bf16"), tries, cores)
    return max(runs) if runs else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", default="0", help="comma-separated cores to run a copy on at once (default 0)")
    p.add_argument("--tries", type=int, default=5, help="runs of each kernel; the best is kept (default 5)")
    args = p.parse_args(argv)
    try:
        cores = tuple(int(c) for c in args.cores.split(",") if c != "")
    except ValueError:
        p.error(f"--cores {args.cores!r}: comma-separated core numbers")
    try:
        print(json.dumps({"cores": list(cores), "fp32_gflops": fp32_gflops(cores, args.tries),
                          "bf16_gflops": bf16_gflops(cores, args.tries), "int8_gops": int8_gops(cores, args.tries)}))
    except PeakError as exc:
        print(f"peaks.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
