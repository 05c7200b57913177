"""The training device: named, checked, set up for exact and repeatable float32, and described.

`check_device` turns `--device` into a torch.device or a named error (a PyTorch without
CUDA, an index past the last visible GPU). `configure_device` sets what a stage's
numbers depend on: on cuda, full float32 (TF32 off unless asked for) and deterministic
algorithms (cuDNN's deterministic kernels, no autotuning, torch's deterministic
algorithms everywhere else, cuBLAS with a fixed workspace), so that two runs of a stage
give the same bits and a resumed run equals an uninterrupted one; `deterministic=False`
is the opt-out (cuDNN autotunes; results may differ run to run). On the CPU these
settings change nothing the engine computes: its CPU kernels are deterministic as they are
(tests/test_engine.py resumes bit-identically), so they are set for cuda only, leaving the
process's CPU state alone. `device_facts` is what the manifest records of the device
that trained a stage. `pick_gpu` is the GPU a job takes under `--device cuda` (docs/GPU.md,
"Parallel jobs"): the one device a scheduler left visible to it, else the first visible GPU no
other job holds (an flock per GPU, which the kernel lets go when the job ends, however it
ends), else round robin by the job's slot. `check_precision` refuses `bf16` (PrecisionError) where
the device has no bfloat16 (`bf16_support`) or the engine is Caffe's.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from mcl.engine import CUBLAS_WORKSPACE, DEVICE_PATTERN, PRECISIONS

DEVICE_RE = re.compile(DEVICE_PATTERN)


class DeviceError(ValueError):
    """A device this machine or this PyTorch cannot train on."""


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of a CPU with bfloat16 instructions


class PrecisionError(ValueError):
    """A training precision this engine or this device cannot train in."""


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (the first `flags` line of /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_support(device="cpu") -> str | None:
    """What gives `device` bfloat16, in words (the CPU's flags, the GPU), or None where it has none."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        except (RuntimeError, AssertionError):
            ok = False
        return f"{device} (torch.cuda.is_bf16_supported)" if ok else None
    found = [f for f in CPU_BF16_FLAGS if f in cpu_flags()]
    return f"CPU flags {', '.join(found)}" if found else None


def check_precision(precision: str, device="cpu", engine: str = "torch") -> str:
    """`precision` where `engine` on `device` can train in it, else PrecisionError naming what is missing
    (`device` None: the precision and the engine only, not the device's instructions)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision {precision!r}: not a precision (choose one of {', '.join(PRECISIONS)})")
    if precision == "fp32":
        return precision
    if engine != "torch":
        raise PrecisionError(f"--precision {precision}: the {engine} engine trains in float32 only (Caffe has no "
                             "bfloat16): use --engine torch, or PRECISION=fp32 (--precision fp32)")
    if device is not None and bf16_support(device) is None:
        what = ("torch.cuda.is_bf16_supported() is false for this GPU" if torch.device(device).type == "cuda"
                else f"this CPU has no bfloat16 instructions (neither {' nor '.join(CPU_BF16_FLAGS)} among the "
                     "flags of /proc/cpuinfo)")
        raise PrecisionError(f"--precision {precision} on {device}: {what}; train in float32 with PRECISION=fp32 "
                             "(--precision fp32)")
    return precision


def _visible() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "CUDA_VISIBLE_DEVICES unset" if value is None else f"CUDA_VISIBLE_DEVICES={value!r}"


def check_device(name: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` as a torch.device, or DeviceError naming the device and what is visible."""
    m = DEVICE_RE.fullmatch(str(name))
    if m is None:
        raise DeviceError(f"--device {name!r}: not a device (cpu, cuda or cuda:N)")
    if name == "cpu":
        return torch.device("cpu")
    build = f"PyTorch {torch.__version__}, " + ("a CPU-only build" if torch.version.cuda is None
                                                 else f"built for CUDA {torch.version.cuda}")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: 0 CUDA devices are visible ({build}; {_visible()}): "
                          "install a CUDA build of PyTorch on a machine with a GPU, or use --device cpu")
    count = torch.cuda.device_count()
    index = int(m.group(1)) if m.group(1) is not None else 0
    if index >= count:
        raise DeviceError(f"--device {name}: only {count} CUDA device{'s' if count != 1 else ''} "
                          f"visible (cuda:0 .. cuda:{count - 1}; {build}; {_visible()})")
    return torch.device(name)


def visible_gpus(env=None, count: int | None = None) -> list[str]:
    """The visible GPUs by their ids outside this process (CUDA_VISIBLE_DEVICES's entries, else 0..count-1)."""
    env = os.environ if env is None else env
    count = torch.cuda.device_count() if count is None else count
    listed = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def gpu_lock_dir(env=None) -> Path:
    """Where the per-GPU locks live: MCL_GPU_LOCKS, else one folder per user in the temp folder
    (GPUs are the machine's, so the locks are too: jobs of every run folder share them)."""
    env = os.environ if env is None else env
    return Path(env.get("MCL_GPU_LOCKS") or Path(tempfile.gettempdir()) / f"mcl-gpus-{os.getuid()}")


def pick_gpu(env=None, count: int | None = None, lock_dir: Path | None = None, slot: int | None = None):
    """(device, lock) for a job asked to train on `cuda`: `lock` is an open file that holds the GPU's
    flock for as long as it stays open (the job's life), None where no lock was taken.

    - a scheduler set CUDA_VISIBLE_DEVICES to one device for this job: cuda:0 (all it sees);
    - several visible: the first whose lock no running job holds (`lock_dir`);
    - every one held (more jobs than GPUs), or no `lock_dir`: round robin by `slot` (default:
      the process id), sharing a GPU with a running job.
    """
    env = os.environ if env is None else env
    gpus = visible_gpus(env, count)
    if len(gpus) <= 1:
        return "cuda:0", None
    if lock_dir is not None:
        Path(lock_dir).mkdir(parents=True, exist_ok=True)
        for index, gpu in enumerate(gpus):
            handle = open(Path(lock_dir) / f"gpu-{gpu}.lock", "a+")  # noqa: SIM115  (held open: the lock)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            handle.truncate(0)
            handle.write(f"pid {os.getpid()}\n")
            handle.flush()
            return f"cuda:{index}", handle
    return f"cuda:{(os.getpid() if slot is None else slot) % len(gpus)}", None


def configure_device(device: torch.device, tf32: bool = False, deterministic: bool = True) -> None:
    """On cuda: full float32 unless `tf32`, and deterministic algorithms unless told otherwise (see above).

    CUBLAS_WORKSPACE_CONFIG is read when cuBLAS starts, so it is set here before the
    engine's first CUDA operation (the worker sets it before torch loads); a value
    already in the environment is kept.
    """
    device = torch.device(device)
    if device.type != "cuda":
        keep_heap()
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)


_HEAP: str | None = None
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # the most glibc takes (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)


def keep_heap() -> str:
    """Keep freed memory in the process (glibc): blocks up to 32 MiB from the heap, the heap never trimmed.

    A CPU training step allocates and frees the same maps every iteration (up to 20 MiB each at batch
    64). With glibc's defaults the freed top of the heap goes back to the kernel whenever it exceeds
    twice the (dynamic) mmap threshold, and every step faulted its maps' pages in again: about 57,000
    page faults a step, 45 ms of a 68-point stage-1 step (300 ms) on a 2-core Xeon (docs/ENGINE.md).
    With the mmap threshold at glibc's maximum and no trimming, the steps after the first few fault
    none (the process keeps about 40 MB more at its peak, measured over 40 steps).
    Returns what was done (the manifest's `allocator`); once per process; a no-op where mallopt is not
    glibc's (MCL_KEEP_HEAP=off leaves the allocator alone)."""
    global _HEAP
    if _HEAP is not None:
        return _HEAP
    if os.environ.get("MCL_KEEP_HEAP", "").lower() in ("off", "0", "no"):
        _HEAP = "default (MCL_KEEP_HEAP=off)"
        return _HEAP
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        ok = (hasattr(libc, "gnu_get_libc_version") and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1)
    except (OSError, AttributeError):
        ok = False
    _HEAP = "glibc heap kept (blocks up to 32 MiB from the heap, no trim)" if ok else "default (no glibc mallopt)"
    return _HEAP


def driver_version() -> str | None:
    """The NVIDIA driver's version from nvidia-smi, None where it is not there or does not answer."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], check=False,
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def device_facts(device: torch.device, tf32: bool = False, deterministic: bool = True) -> dict:
    """What the manifest records of the device a stage trained on (None where a fact is unknown)."""
    device = torch.device(device)
    facts = {"device": str(device), "torch_version": torch.__version__,
             "deterministic": bool(deterministic) if device.type == "cuda" else True,
             "tf32": bool(tf32) if device.type == "cuda" else False}
    if device.type != "cuda":
        return facts
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    facts.update(gpu_index=index, gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                 cuda_version=torch.version.cuda, cudnn_version=cudnn, gpu_driver=driver_version())
    return facts
