"""Device, precision, seeding, RNG state and torch.distributed helpers (launched by ``torchrun``).

Shared by training and inference (neither imports the other for these)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pdeseg.errors import DeviceError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the local CUDA device when available (``LOCAL_RANK`` under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available here; use device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16).

    Without them (e.g. AVX2-only CPUs) bf16 autocast is about 10x *slower* than fp32.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> the fastest numerically safe setting for ``device``.

    CUDA: ``bf16-mixed`` where supported, else ``16-mixed``; CPU: ``bf16-mixed`` only on
    CPUs with bf16 instructions, else ``32``. Other values pass through.

    Raises:
        DeviceError: ``16-mixed`` on a device other than CUDA.
    """
    if precision == "16-mixed" and device.type != "cuda":
        raise DeviceError(f"train.precision 16-mixed needs a CUDA device (float16 autocast); the device here is "
                          f"{device.type}: use precision bf16-mixed, 32 or auto")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_fast_bf16() else "32"


def autocast(device: torch.device, precision: str):
    """Autocast context for ``bf16-mixed`` / ``16-mixed`` (``auto`` resolved first); a no-op for ``32``."""
    precision = resolve_precision(precision, device)
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG state (Python, NumPy, torch CPU and CUDA) as checkpoint-safe data
    (tensors, lists and numbers: loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where CUDA is present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def launch_rank() -> int:
    """This process's global rank as ``torchrun`` sets it (``RANK``), 0 for a single process
    (``WORLD_SIZE`` unset or 1, as :func:`init_distributed` decides).

    Readable before the process group is joined (it is the rank :func:`init_distributed`
    then joins with).
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return 0
    return int(os.environ.get("RANK", 0))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``).

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` for a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def compile_model(model: torch.nn.Module, device: torch.device, what: str = "--compile") -> torch.nn.Module:
    """``torch.compile(model)`` (TorchInductor), after :func:`check_compile`.

    Compilation happens at the first call of each new input shape.
    """
    check_compile(device, what)
    return torch.compile(model)


def check_compile(device: torch.device, what: str = "--compile") -> None:
    """Raises DeviceError when ``torch.compile`` cannot work here: this PyTorch has none, or
    (on a CPU, where Inductor writes C++ kernels) no C++ compiler is on the PATH; the message
    names ``what`` (the option that asked for it)."""
    import shutil

    if not hasattr(torch, "compile"):
        raise DeviceError(f"{what}: this PyTorch ({torch.__version__}) has no torch.compile; leave {what} out")
    if device.type == "cpu":
        try:
            from torch._inductor import config as inductor_config

            cxx = inductor_config.cpp.cxx
            candidates = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
        except (ImportError, AttributeError):
            candidates = []
        candidates = candidates or ["g++", "c++", "clang++"]
        if not any(shutil.which(c) for c in candidates):
            raise DeviceError(f"{what}: torch.compile on the CPU writes C++ kernels and needs a C++ compiler "
                              f"({' or '.join(candidates)}), none found on the PATH; install one or leave {what} out")
