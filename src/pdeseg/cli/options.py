"""What several commands share: argument types that turn a bad value into a one-line usage error
(exit 2), the ``--format`` / ``--format-option`` / cache options of the commands that read a data set,
config loading with ``--set`` overrides, and the check of an output file before any work.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _checked(parse, ok, expected: str, rule: str):
    """An argparse ``type``: ``parse(text)``, then ``ok(value)``; a failure is a one-line usage
    error (exit 2) saying what was expected."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return convert


_positive_int = _checked(int, lambda v: v >= 1, "a whole number >= 1", "must be >= 1")
_non_negative_int = _checked(int, lambda v: v >= 0, "a whole number >= 0", "must be >= 0")
# the same rule and words as pdeseg.experiments.crossval.check_crossval_config
_folds = _checked(int, lambda v: v >= 2, "a whole number >= 2", "must be a whole number >= 2 (k-fold needs two folds or more)")
_spacing_mm = _checked(float, lambda v: math.isfinite(v) and v > 0, "a voxel size in mm", "must be a finite size > 0 (mm)")
_overlap = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)", "must be >= 0 and < 1 (the share of a window its neighbour covers)")
_distance_mm = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a distance in mm", "must be a finite distance >= 0 (mm)")


def _innermost(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 or auto, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def _diameter(text: str):
    if text in ("auto", "off"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give the objects' diameter in pixels (> 0), auto or off")
    return value


def _add_format_options(s: argparse.ArgumentParser, plan: bool, defaults: bool = True) -> None:
    """``--format``, ``--format-option`` and the cache folder; with ``plan``, ``--device`` and ``--time-budget``."""
    from pdeseg.data.formats import FORMATS

    s.add_argument("--format", choices=sorted(FORMATS), help="the data format (default: detected from the layout)")
    s.add_argument("--format-option", nargs="*", metavar="KEY=VALUE", help="reading options of the format, e.g. targets=boundary")
    s.add_argument("--cache-dir", default="~/.cache/pdeseg", help="where cached cases and fingerprints go")
    if plan:
        s.add_argument(
            "--device",
            default="auto" if defaults else None,
            choices=["auto", "cpu", "cuda"],
            help="the device the plan is measured on and trains on (default auto)",
        )
        s.add_argument(
            "--time-budget",
            default="1h" if defaults else None,
            metavar="DURATION",
            help="wall-clock training budget, e.g. 2h, 90m, 1h30m (default 1h); the epochs are chosen to fit it",
        )


def _format_options(args: argparse.Namespace) -> dict | None:
    """``--format-option key=value ...`` as a dict (None when none is given)."""
    from pdeseg.errors import ConfigError

    options = {}
    for item in args.format_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--format-option {item!r} must look like key=value")
        options[key] = value
    return options or None


def _load_cfg(args: argparse.Namespace):
    from pdeseg.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data}")
    if getattr(args, "out", None) and args.command == "train":
        overrides.append(f"output_dir={args.out}")
    return load_config(args.config, overrides)


def _check_output_file(path: str | None, args: argparse.Namespace, what: str) -> None:
    """Before any work: the file ``path`` (``what`` names its option) lies outside the data set
    ``args.data`` and replaces an existing file only with ``--overwrite`` and only when pdeseg
    wrote it (:mod:`pdeseg.data.outputs`).

    Raises:
        RunFolderError: the file lies inside the data set, or exists (see above).
    """
    from pdeseg.data.files import check_output_folder
    from pdeseg.data.outputs import check_outside, check_replaceable

    if path is None:
        return
    check_outside(path, [args.data], what)
    check_replaceable(Path(path).expanduser(), args.overwrite, what)
    check_output_folder(Path(path).expanduser().parent, what)
