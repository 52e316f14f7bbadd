"""What a training step costs on this device, measured with real steps (not a formula).

:class:`CostModel` runs real optimiser steps of the planned network (the trainer's own
:func:`~pdeseg.training.trainer.train_step`: forward under the run's autocast, CE + Dice
on every deep-supervision head, backward, AdamW step) on random inputs of a given patch and
batch size, and records

* the **seconds per step** (the fastest of the timed steps after one warm-up step: other work on
  the machine only ever slows a step down, so the minimum is the steadiest estimate), and
* the **peak memory** of the step: on CUDA ``torch.cuda.max_memory_allocated`` (reset
  before the network is built, so weights count); on a CPU the rise of the process's peak resident set
  (``VmHWM``, which :func:`reset_peak_rss` resets through ``/proc/self/clear_refs``) over
  its resident set just before the network is built, after freed memory has been handed
  back to the system (``malloc_trim``), over the warm-up and timed steps (weights,
  gradients and optimiser state included).

Both grow about linearly with the voxels of a batch ``N = batch x prod(patch)`` for a fixed
network, so each network (dimensions and widths) is probed once, at batch 1 and 2 of the first
patch asked for, shrunk (halving its largest axis) to at most :data:`PROBE_VOXELS`, and the line
``cost(N) = a + b N`` through them predicts the others; a candidate predicted to take at
most :data:`DIRECT_LIMIT_S` per step is then measured itself, and that measurement
replaces the prediction. The planner searches on predictions (:meth:`CostModel.predict`) and
measures only the candidate it picks (:meth:`CostModel.cost`), so planning costs a few
dozen steps. :attr:`CostModel.log` keeps every measurement for the plan's
report.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Candidates predicted to step faster than this are measured directly.
DIRECT_LIMIT_S = 4.0
TIMED_STEPS = 3
WARMUP_STEPS = 1
#: Largest probe patch (voxels): 64^3 in 3D, 256^2 in 2D.
PROBE_VOXELS = {3: 64**3, 2: 256**2}


@dataclass(frozen=True)
class StepCost:
    seconds: float
    peak_bytes: float
    measured: bool  # True: a real step at this size; False: from the line through the probes


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (Linux ``clear_refs``); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Hand freed heap memory back to the system (glibc), so the next peak is the step's own."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss(field_name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0


def memory_budget(device: torch.device) -> float:
    """Bytes a training step may use: 85 % of the GPU's free memory, or on a CPU half of the
    available main memory (the rest is for the data cache, loaders and the system), at most
    32 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.85 * free
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = float(line.split()[1]) * 1024.0
    except OSError:
        pass
    if available is None:
        available = 8 * 2**30
    return min(0.5 * available, 32 * 2**30)


@dataclass
class CostModel:
    """Measured step costs of ``unet3d`` networks on one device (see the module docstring).

    Args:
        device, precision: as training will use them.
        in_channels, num_classes: of the data set.
    """

    device: torch.device
    precision: str
    in_channels: int
    num_classes: int
    log: list[dict] = field(default_factory=list)
    _lines: dict = field(default_factory=dict)
    _direct: dict = field(default_factory=dict)

    def measure(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...], batch: int) -> StepCost:
        """Real steps at this size.

        Raises:
            torch.OutOfMemoryError / RuntimeError: the device cannot hold the step.
        """
        from pdeseg.build import build_loss, build_optimizer
        from pdeseg.config import LossConfig, TrainConfig
        from pdeseg.nn.unet3d import UNet3D
        from pdeseg.training.trainer import train_step

        cuda = self.device.type == "cuda"
        if cuda:  # the previous measurement's network is gone: hand its cached blocks back first
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _trim()
            base = _rss("VmRSS")
            reset_peak_rss()
        torch.manual_seed(0)
        model = UNet3D(dims, self.in_channels, self.num_classes, features=features, deep_supervision=len(features) > 2)
        model.to(self.device).train()
        t = TrainConfig(optimizer="adamw", lr=1e-4, grad_clip=12)
        opt = build_optimizer(t, model)
        loss = build_loss(LossConfig())
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "16-mixed")
        x = torch.randn(batch, self.in_channels, *patch)
        y = torch.randint(0, self.num_classes, (batch, *patch), dtype=torch.long)
        batch_d = {"image": x, "label": y}

        def step() -> None:
            train_step(model, batch_d, loss, opt, scaler, t, self.device, self.precision, channels_last=False)
            if cuda:
                torch.cuda.synchronize(self.device)

        for _ in range(WARMUP_STEPS):  # allocator, kernels, optimiser state
            step()
        times = []
        for _ in range(TIMED_STEPS):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        peak = float(torch.cuda.max_memory_allocated(self.device)) if cuda else max(0.0, _rss("VmHWM") - base)
        cost = StepCost(min(times), peak, True)
        self.log.append({"dims": dims, "features": list(features), "patch": list(patch), "batch": batch,
                         "seconds": round(cost.seconds, 4), "peak_mib": round(peak / 2**20, 1)})
        log.debug("step %s x%d widths %s: %.3f s, %.0f MiB", patch, batch, features, cost.seconds, peak / 2**20)
        return cost

    def _line(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...]) -> tuple[float, float, float, float]:
        """``(t0, t1, m0, m1)`` of ``seconds = t0 + t1 N`` and ``bytes = m0 + m1 N``, probed once per
        network at the first patch asked for (shrunk to :data:`PROBE_VOXELS`)."""
        key = (dims, features)
        if key not in self._lines:
            m = 2 ** (len(features) - 1)
            small = list(patch)
            while math.prod(small) > PROBE_VOXELS[dims] and max(small) >= 4 * m:
                i = small.index(max(small))
                small[i] = max(2 * m, (small[i] // 2 // m) * m)
            small = tuple(small)
            a = self.measure(dims, features, small, 1)
            b = self.measure(dims, features, small, 2)
            self._direct[(dims, features, small, 1)] = a
            self._direct[(dims, features, small, 2)] = b
            n = math.prod(small)
            slope_t = max((b.seconds - a.seconds) / n, a.seconds / (2 * n))
            slope_m = max((b.peak_bytes - a.peak_bytes) / n, a.peak_bytes / (2 * n))
            self._lines[key] = (a.seconds - slope_t * n, slope_t, a.peak_bytes - slope_m * n, slope_m)
        return self._lines[key]

    def predict(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...], batch: int) -> StepCost:
        """The step cost from the line through the probes (measured ones are returned as such)."""
        key = (dims, tuple(features), tuple(patch), batch)
        if key in self._direct:
            return self._direct[key]
        t0, t1, m0, m1 = self._line(dims, tuple(features), tuple(patch))
        n = batch * math.prod(patch)
        return StepCost(max(t0, 0.0) + t1 * n, max(m0, 0.0) + m1 * n, False)

    def cost(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...], batch: int) -> StepCost:
        """The step cost at this size: measured when affordable, else from the probes' line."""
        key = (dims, tuple(features), tuple(patch), batch)
        predicted = self.predict(dims, features, patch, batch)
        if predicted.measured:
            return predicted
        if predicted.seconds <= DIRECT_LIMIT_S:
            try:
                self._direct[key] = self.measure(dims, tuple(features), tuple(patch), batch)
            except (RuntimeError, torch.OutOfMemoryError):  # the device cannot hold it: keep the prediction
                log.debug("step %s x%d did not fit; using the prediction", patch, batch)
                self._direct[key] = StepCost(predicted.seconds, math.inf, True)
            return self._direct[key]
        return predicted
