"""Planning a training run from the data: fingerprint -> measured step costs -> config.

:func:`plan_dataset` is the front door (``pdeseg plan``, and ``pdeseg train --data`` without a
config): it detects the data format (unless given), fingerprints the data set
(:mod:`pdeseg.data.fingerprint`), measures real training steps on the device
(:mod:`pdeseg.planning.cost`) within a measuring budget (5 % of the time budget or 60 s,
whichever is less), applies the rules of :mod:`pdeseg.planning.planner` and validates the
result with the same resolve step every config goes through.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pdeseg.planning.planner import Plan, fmt_duration, parse_duration

__all__ = ["Plan", "fmt_duration", "parse_duration", "plan_dataset", "write_plan"]
log = logging.getLogger(__name__)

DEFAULT_BUDGET = "1h"


def plan_dataset(root: str | Path, fmt: str | None = None, device: str = "auto", time_budget: str | float = DEFAULT_BUDGET,
                 format_options: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 cache_dir: str = "~/.cache/pdeseg", progress: bool = True) -> Plan:
    """Plan a training run for the labelled cases under ``root``.

    Raises:
        ConfigError: a bad budget or option, a budget too short for one epoch.
        DataError: no data set, or one the reader rejects (the file is named).
        DeviceError: the device is not there, or cannot fit the smallest patch.
    """
    from pdeseg.build import resolve
    from pdeseg.config import config_from_dict
    from pdeseg.data.detect import detect_format
    from pdeseg.data.fingerprint import fingerprint_dataset
    from pdeseg.errors import ConfigError
    from pdeseg.planning.cost import CostModel, measuring_budget, memory_budget
    from pdeseg.planning.planner import MIN_STEPS, Costs, plan_from_fingerprint
    from pdeseg.runtime import resolve_device, resolve_precision

    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    budget_s = parse_duration(time_budget)
    name = fmt or detect_format(root)
    fp = fingerprint_dataset(name, root, modalities, format_options, cache_dir, progress=progress)
    log.info("fingerprint:\n%s", fp.summary())
    dev = resolve_device(device)
    precision = resolve_precision("auto", dev)
    busy = _warn_if_busy(dev)
    cost = CostModel(dev, precision, len(fp.channels), len(fp.classes), budget_s=measuring_budget(budget_s), busy=bool(busy))
    try:
        plan = plan_from_fingerprint(fp, Costs(cost.predict, cost.cost), budget_s, memory_budget(dev), dev.type, busy)
    finally:
        log.info("step times: %s; the measuring budget is 5%% of the %s time budget, at most 60 s", cost.account(),
                 fmt_duration(budget_s))
    if busy and plan.estimate["steps"] < MIN_STEPS:
        log.warning("the CPU is busy (%s): the plan trains %d steps, fewer than the %d a plan on an idle CPU needs; "
                    "plan on an idle machine, or give a longer --time-budget, for more", busy, plan.estimate["steps"],
                    MIN_STEPS)
    plan.config["data"]["cache_dir"] = cache_dir
    plan.measurements = cost.log
    plan.measuring = cost.account()
    resolve(config_from_dict(plan.config))  # the plan passes every check a hand-written config does
    return plan


def _warn_if_busy(device) -> str:
    """The plan measures real steps: on a CPU shared with other work they are slower, and the
    plan is then sized for a busy machine. Say so; returns what says it is busy (``"load average
    6.5 on 2 CPUs"``), or ``""``."""
    import os

    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return ""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cpus:
        log.warning("the CPU is busy (load average %.1f on %d CPUs): the measured step times, and so the plan's "
                    "epochs and sizes, assume it stays this busy; plan on an idle machine for a faster plan", load, cpus)
        return f"load average {load:.1f} on {cpus} CPUs"
    return ""


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan's YAML (with reasons) atomically; returns the path.

    Raises:
        RunFolderError: the folder cannot be made or written (below a file, read-only).
    """
    from pdeseg.data.files import write_atomically
    from pdeseg.planning.emit import plan_yaml

    fp, e = plan.fingerprint, plan.estimate
    header = [f"planned by pdeseg plan from {fp.n_cases} cases of {fp.root} ({fp.format})",
              f"device {e['device']}: {e['step_s']:.2f} s per training step "
              f"({'measured' if e.get('step_measured', True) else 'predicted, not measured'}), about {fmt_duration(e['epoch_s'])} "
              f"per epoch, {fmt_duration(e['total_s'])} in all for a budget of {fmt_duration(e['budget_s'])}",
              *([f"step times: {plan.measuring}"] if plan.measuring else []),
              "edit freely, then: pdeseg train --config THIS_FILE", ""]
    from pdeseg.errors import RunFolderError

    path = Path(path)
    text = plan_yaml(plan.config, plan.reasons, header)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: tmp.write_text(text))
    except OSError as exc:
        raise RunFolderError(f"{path}: cannot write the plan ({exc.strerror or exc})") from None
    return path
