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

**The measuring budget.** On a busy CPU every step is several times slower, and measuring
could eat the budget it plans for (8.5 minutes of a 10-minute budget, issue 36). All
measurements together stop at ``budget_s`` of wall clock (:func:`measuring_budget`:
:data:`MEASURE_SHARE` of the training budget or :data:`MEASURE_MAX_S`, whichever is less),
spent on what matters most, in this order:

1. the first network's probe at batch 1 is always measured (a warm-up and at least one timed
   step: without one figure there is nothing to predict from), its batch-2 probe where the
   budget allows (else its line goes through the origin, which over-estimates larger batches);
2. the candidate the search picks, measured directly (its step time sets the epochs);
3. another network's probes only while the budget holds them twice over (the second half
   stays for measuring its candidate); otherwise its line is the nearest measured
   network's, scaled by :func:`network_work` (time per voxel by the multiply-adds, memory
   per voxel by the activations, intercepts by the parameters).

A measurement starts only when its warm-up and one timed step are predicted to end within
the budget, and its timed steps stop where the next would not (fewer than
:data:`TIMED_STEPS` then); so measuring overruns its budget by at most one step. Every
figure the planner gets says whether it was measured (:attr:`StepCost.measured`), and
:meth:`CostModel.account` says what was measured, in how long, and what predicted.
"""

from __future__ import annotations

import logging
import math
import time
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Candidates predicted to step faster than this are measured directly.
DIRECT_LIMIT_S = 4.0
TIMED_STEPS = 3
WARMUP_STEPS = 1
#: Share of the time budget a plan may spend measuring steps, and its cap in seconds
#: (:func:`measuring_budget`): planning must not eat the budget it plans.
MEASURE_SHARE = 0.05
MEASURE_MAX_S = 60.0
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


def network_work(dims: int, in_channels: int, features: tuple[int, ...]) -> tuple[float, float, float]:
    """``(multiply-adds, activations, parameters)`` of a :class:`~pdeseg.nn.unet3d.UNet3D`: the first
    two per input voxel of one forward pass (activations: values kept for the backward pass, three
    per convolution: its output, the norm's and the activation's), the last in all. They scale a
    measured network's line to another network (:meth:`CostModel.predict`)."""
    n, t = 3**dims, 2**dims
    macs = acts = params = 0.0
    for k, f in enumerate(features):
        share = 1.0 / 2 ** (dims * k)
        cin = in_channels if k == 0 else features[k - 1]
        macs += share * n * (cin * f + f * f)
        acts += share * 6 * f
        params += n * (cin * f + f * f)
    for k in range(len(features) - 1):  # decoder level k: transposed conv from level k + 1, block 2f -> f -> f
        f, g = features[k], features[k + 1]
        share = 1.0 / 2 ** (dims * k)
        macs += share * (g * f + n * 3 * f * f)
        acts += share * 9 * f
        params += t * g * f + 3 * n * f * f
    return macs, acts, params


def measuring_budget(budget_s: float) -> float:
    """Seconds a plan for a ``budget_s`` training budget may spend measuring steps:
    :data:`MEASURE_SHARE` of it or :data:`MEASURE_MAX_S`, whichever is less."""
    return min(MEASURE_SHARE * budget_s, MEASURE_MAX_S)


#: ``(dims, features, patch, batch) -> (step, peak)``: builds the network and a batch and returns a
#: function running one training step and one giving the peak bytes since the build.
Runner = Callable[[int, tuple, tuple, int], tuple[Callable[[], None], Callable[[], float]]]


@dataclass
class CostModel:
    """Measured step costs of ``unet3d`` networks on one device, within a measuring budget (see
    the module docstring).

    Args:
        device, precision: as training will use them.
        in_channels, num_classes: of the data set.
        budget_s: wall-clock seconds all measurements together may take
            (:func:`measuring_budget`); past it figures are predicted.
        busy: the CPU is shared with other work: a size's figure is the median of its timed steps
            (the time a step actually gets), not the fastest.
        clock: seconds, monotonic (tests pass a fake one).
        runner: runs the steps (:data:`Runner`); default real training steps of ``UNet3D``.
    """

    device: torch.device
    precision: str
    in_channels: int
    num_classes: int
    budget_s: float = math.inf
    busy: bool = False
    clock: Callable[[], float] = time.perf_counter
    runner: Runner | None = None
    log: list[dict] = field(default_factory=list)
    spent_s: float = 0.0
    _lines: dict = field(default_factory=dict)  # (dims, features) -> (t0, t1, m0, m1), how it was found
    _direct: dict = field(default_factory=dict)
    _predicted: dict = field(default_factory=dict)  # cost() answers that are predictions -> how predicted

    def remaining_s(self) -> float:
        """What is left of the measuring budget (seconds)."""
        return self.budget_s - self.spent_s

    def measure(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...], batch: int,
                expect_s: float | None = None) -> StepCost | None:
        """Real steps at this size, within the measuring budget: :data:`WARMUP_STEPS` warm-up steps,
        then up to :data:`TIMED_STEPS` timed ones, each started only while the step before it (the
        warm-up for the first) would still end within the budget.

        Args:
            expect_s: the predicted seconds per step. The measurement starts only when a warm-up
                and one timed step fit the budget. ``None`` (no figure to predict from: the first
                probe) measures regardless, with at least one timed step.

        Returns:
            The cost, or None where the budget could not afford a timed step.

        Raises:
            torch.OutOfMemoryError / RuntimeError: the device cannot hold the step.
        """
        features, patch = tuple(features), tuple(patch)
        if expect_s is not None and (WARMUP_STEPS + 1) * expect_s > self.remaining_s():
            return None
        start = self.clock()
        try:
            step, peak = (self.runner or self._torch_steps)(dims, features, patch, batch)
            t = self.clock()
            for _ in range(WARMUP_STEPS):  # allocator, kernels, optimiser state
                step()
            warm = (self.clock() - t) / max(WARMUP_STEPS, 1)
            times: list[float] = []
            for _ in range(TIMED_STEPS):
                guess = times[-1] if times else warm  # a warm-up step is the slower: a safe guess
                if (times or expect_s is not None) and self.clock() - start + guess > self.remaining_s():
                    break
                t = self.clock()
                step()
                times.append(self.clock() - t)
            if not times:
                log.debug("step %s x%d widths %s: the warm-up used the measuring budget", patch, batch, features)
                return None
            seconds = statistics.median(times) if self.busy else min(times)
            cost = StepCost(seconds, peak(), True)
        finally:
            self.spent_s += self.clock() - start
        self.log.append({"dims": dims, "features": list(features), "patch": list(patch), "batch": batch,
                         "seconds": round(cost.seconds, 4), "peak_mib": round(cost.peak_bytes / 2**20, 1),
                         "timed_steps": len(times)})
        log.debug("step %s x%d widths %s: %.3f s, %.0f MiB (%d timed)", patch, batch, features, cost.seconds,
                  cost.peak_bytes / 2**20, len(times))
        return cost

    def _torch_steps(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...], batch: int
                     ) -> tuple[Callable[[], None], Callable[[], float]]:
        """The default :data:`Runner`: the trainer's own step on random data."""
        from pdeseg.build import build_loss, build_optimizer
        from pdeseg.config import LossConfig, TrainConfig
        from pdeseg.nn.unet3d import UNet3D
        from pdeseg.training.trainer import train_step

        cuda = self.device.type == "cuda"
        base = 0.0
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

        def peak() -> float:
            return float(torch.cuda.max_memory_allocated(self.device)) if cuda else max(0.0, _rss("VmHWM") - base)

        return step, peak

    def _probe_patch(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
        m = 2 ** (len(features) - 1)
        small = list(patch)
        while math.prod(small) > PROBE_VOXELS[dims] and max(small) >= 4 * m:
            i = small.index(max(small))
            small[i] = max(2 * m, (small[i] // 2 // m) * m)
        return tuple(small)

    def _reference(self, dims: int, features: tuple[int, ...]) -> tuple | None:
        """The measured network nearest to this one: the same dims, then the same depth, then the
        nearest base width."""
        measured = [k for k, (_, how) in self._lines.items() if how.startswith("measured")]
        if not measured:
            return None
        return min(measured, key=lambda k: (k[0] != dims, len(k[1]) != len(features), abs(math.log(k[1][0] / features[0]))))

    def _scaled(self, ref: tuple, dims: int, features: tuple[int, ...]) -> tuple[float, float, float, float]:
        """``ref``'s line scaled to this network: the per-voxel time by the multiply-adds, the per-voxel
        memory by the activations, both intercepts (optimiser step, weights and their state) by the
        parameters."""
        t0, t1, m0, m1 = self._lines[ref][0]
        rm, ra, rp = network_work(ref[0], self.in_channels, ref[1])
        m, a, p = network_work(dims, self.in_channels, features)
        return t0 * p / rp, t1 * m / rm, m0 * p / rp, m1 * a / ra

    def _line(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...]) -> tuple[float, float, float, float]:
        """``(t0, t1, m0, m1)`` of ``seconds = t0 + t1 N`` and ``bytes = m0 + m1 N``, probed once per
        network at the first patch asked for (shrunk to :data:`PROBE_VOXELS`), or, where the
        measuring budget cannot afford the probes, scaled from the nearest measured network."""
        key = (dims, features)
        if key not in self._lines:
            self._lines[key] = self._probe(dims, features, patch)
        return self._lines[key][0]

    def _probe(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...]) -> tuple[tuple, str]:
        small = self._probe_patch(dims, features, patch)
        n = math.prod(small)
        ref = self._reference(dims, features)
        if ref is None:  # the first network: measured whatever the budget, there is nothing to predict from
            a = self.measure(dims, features, small, 1)
        else:
            guess = self._scaled(ref, dims, features)
            probes = (WARMUP_STEPS + TIMED_STEPS) * (2 * guess[0] + 3 * guess[1] * n)
            # the probes, and as much again left for measuring the candidate the search picks
            a = self.measure(dims, features, small, 1, guess[0] + guess[1] * n) if 2 * probes <= self.remaining_s() else None
        if a is None:
            return guess, f"predicted from the measured widths-{ref[1][0]} {ref[0]}D network, scaled by multiply-adds"
        self._direct[(dims, features, small, 1)] = a
        b = self.measure(dims, features, small, 2, 2 * a.seconds)
        if b is None:  # batch 1 only: a line through the origin (it over-estimates larger batches)
            return (0.0, a.seconds / n, 0.0, a.peak_bytes / n), "measured at batch 1 only"
        self._direct[(dims, features, small, 2)] = b
        slope_t = max((b.seconds - a.seconds) / n, a.seconds / (2 * n))
        slope_m = max((b.peak_bytes - a.peak_bytes) / n, a.peak_bytes / (2 * n))
        return (a.seconds - slope_t * n, slope_t, a.peak_bytes - slope_m * n, slope_m), "measured"

    def predict(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...], batch: int) -> StepCost:
        """The step cost from the network's line (measured sizes are returned as such)."""
        key = (dims, tuple(features), tuple(patch), batch)
        if key in self._direct:
            return self._direct[key]
        t0, t1, m0, m1 = self._line(dims, tuple(features), tuple(patch))
        n = batch * math.prod(patch)
        return StepCost(max(t0, 0.0) + t1 * n, max(m0, 0.0) + m1 * n, False)

    def cost(self, dims: int, features: tuple[int, ...], patch: tuple[int, ...], batch: int) -> StepCost:
        """The step cost at this size: measured when the measuring budget affords it and the step is
        under :data:`DIRECT_LIMIT_S`, else the prediction."""
        key = (dims, tuple(features), tuple(patch), batch)
        predicted = self.predict(dims, features, patch, batch)
        if predicted.measured:
            return predicted
        if predicted.seconds <= DIRECT_LIMIT_S and key not in self._predicted:
            try:
                c = self.measure(dims, tuple(features), tuple(patch), batch, predicted.seconds)
            except (RuntimeError, torch.OutOfMemoryError):  # the device cannot hold it: keep the prediction
                log.debug("step %s x%d did not fit; using the prediction", patch, batch)
                c = StepCost(predicted.seconds, math.inf, True)
            if c is not None:
                self._direct[key] = c
                return c
        self._predicted[key] = self._lines[(dims, tuple(features))][1]
        return predicted

    def how(self, dims: int, features: tuple[int, ...]) -> str:
        """How the network's line was found: ``measured``, ``measured at batch 1 only`` or how it
        was predicted."""
        return self._lines.get((dims, tuple(features)), (None, "not considered"))[1]

    def account(self) -> str:
        """One sentence: what was measured, in how long, and what was predicted instead."""
        n = len(self.log)
        text = (f"{n} step size{'s' if n != 1 else ''} measured in {self.spent_s:.0f} s (measuring budget "
                + (f"{self.budget_s:.0f} s)" if math.isfinite(self.budget_s) else "none)"))
        sizes = [f"{'x'.join(map(str, e['patch']))} x{e['batch']} at widths from {e['features'][0]}: {e['seconds']:.2f} s"
                 for e in self.log]
        if sizes:
            text += ": " + ", ".join(sizes[:4]) + (f" and {len(sizes) - 4} more" if len(sizes) > 4 else "")
        scaled = [f"widths from {k[1][0]} ({k[0]}D)" for k, (_, how) in self._lines.items() if how.startswith("predicted")]
        if scaled:
            text += f"; networks predicted from a measured one, scaled by multiply-adds: {', '.join(scaled)}"
        half = [f"widths from {k[1][0]} ({k[0]}D)" for k, (_, how) in self._lines.items() if how == "measured at batch 1 only"]
        if half:
            text += f"; measured at batch 1 only (larger batches predicted through the origin): {', '.join(half)}"
        if self._predicted:
            k = len(self._predicted)
            text += f"; {k} candidate size{'s' if k != 1 else ''} predicted from {'their' if k != 1 else 'its'} network's line, not measured"
        return text
