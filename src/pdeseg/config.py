"""Typed experiment configuration: YAML in, validated dataclasses, resolved YAML saved with each run.

Override any field from the command line with dotted keys, e.g.
``--set train.epochs=2 data.root=/data/BraTS2020``; values are parsed as YAML scalars/lists.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

SLICE_SELECTIONS = ("middle", "tumour_middle", "range", "brain", "tumour", "all")
NORMALIZATIONS = ("zscore", "minmax", "scale255")
OUTPUTS = ("softmax", "sigmoid")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
SCHEDULERS = ("onecycle", "cosine", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


@dataclass
class SplitConfig:
    """Patient-level split. Give ``fractions`` (train/val/test summing to 1) or ``counts``.

    ``counts`` like paper 003's 250/74/45 are scaled proportionally when the data set has
    a different number of cases (set ``scale_counts: false`` to require an exact match).
    """

    fractions: list[float] | None = field(default_factory=lambda: [0.8, 0.1, 0.1])
    counts: list[int] | None = None
    scale_counts: bool = True
    seed: int = 0


@dataclass
class AugmentConfig:
    """Random augmentation applied identically to image and label (MONAI transforms)."""

    enabled: bool = True
    flip_prob: float = 0.5  # per axis, horizontal and vertical
    rotate_deg: float = 15.0
    shift_frac: float = 0.05  # affine shift, fraction of the size
    scale_range: float = 0.1  # affine zoom in [1 - r, 1 + r]
    affine_prob: float = 0.5
    brightness: float = 0.1  # additive, in units of the normalised intensity
    contrast: float = 0.1  # multiplicative, 1 +- contrast
    intensity_prob: float = 0.5


@dataclass
class DataConfig:
    """Where the cases are and how slices are drawn from them."""

    root: str = ""
    format: str = "brats"  # brats | lgg (pdeseg.data.formats)
    cache_dir: str = "~/.cache/pdeseg"
    modalities: list[str] = field(default_factory=lambda: ["flair", "t1", "t1ce", "t2"])
    normalization: str = "zscore"
    slices: str = "tumour"
    slice_range: list[int] | None = None  # inclusive [first, last] for slices: range
    spatial_size: list[int] | None = None  # [H, W]; None keeps the full slice
    resize: bool = False  # resize to spatial_size instead of centre crop/pad
    max_cases: int | None = None  # use only the first N cases (sorted), for quick runs
    num_workers: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    """A registered model name and its keyword arguments (``pdeseg models`` lists names)."""

    name: str = "unet"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_eps: float = 1.0
    dice_include_background: bool = True


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-3  # peak learning rate of the one-cycle schedule
    pde_lr_mult: float = 1.0  # the PDE block's learning rate is lr * pde_lr_mult (1 = paper)
    weight_decay: float = 0.0
    scheduler: str = "onecycle"
    precision: str = "auto"  # auto: bf16 autocast on GPUs and bf16-capable CPUs, else fp32
    channels_last: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    grad_clip: float | None = None
    monitor: str = "dice_mean"  # validation metric that picks the best checkpoint (higher is better)
    val_batch_size: int = 16


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs"
    num_classes: int = 4
    output: str = "softmax"  # softmax over num_classes, or sigmoid (one channel) for 2 classes
    data: DataConfig = field(default_factory=DataConfig)
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig()])
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> ExperimentConfig:
        """Check value ranges and choices; returns self. Raises :class:`ConfigError`."""
        d, t = self.data, self.train
        _choice("data.normalization", d.normalization, NORMALIZATIONS)
        _choice("output", self.output, OUTPUTS)
        from pdeseg.data.formats import FORMATS

        _choice("data.format", d.format, tuple(FORMATS))
        fmt = FORMATS[d.format]
        if self.num_classes != fmt.num_classes:
            raise ConfigError(f"num_classes is {self.num_classes} but data.format {d.format} has {fmt.num_classes} classes "
                              f"({', '.join(fmt.class_names)})")
        if self.output == "sigmoid" and self.num_classes != 2:
            raise ConfigError(f"output: sigmoid is for binary tasks (num_classes: 2), got num_classes {self.num_classes}")
        odd = [m for m in d.modalities if m not in fmt.modalities]
        if odd:
            raise ConfigError(f"data.modalities {odd} are not {d.format} channels; choose from {', '.join(fmt.modalities)}")
        _choice("data.slices", d.slices, SLICE_SELECTIONS)
        _choice("train.precision", t.precision, PRECISIONS)
        _choice("train.scheduler", t.scheduler, SCHEDULERS)
        _choice("train.optimizer", t.optimizer, OPTIMIZERS)
        if d.slices == "range" and (not d.slice_range or len(d.slice_range) != 2 or d.slice_range[0] > d.slice_range[1]):
            raise ConfigError(f"data.slice_range must be [first, last] with first <= last for slices: range, got {d.slice_range}")
        if d.spatial_size is not None and (len(d.spatial_size) != 2 or min(d.spatial_size) < 16):
            raise ConfigError(f"data.spatial_size must be [H, W] with sizes >= 16, got {d.spatial_size}")
        if not d.modalities:
            raise ConfigError("data.modalities is empty")
        s = d.split
        if (s.fractions is None) == (s.counts is None):
            raise ConfigError("data.split needs exactly one of fractions or counts")
        if s.fractions is not None and (len(s.fractions) != 3 or abs(sum(s.fractions) - 1) > 1e-6 or min(s.fractions) < 0):
            raise ConfigError(f"data.split.fractions must be three numbers >= 0 summing to 1, got {s.fractions}")
        if s.counts is not None and (len(s.counts) != 3 or min(s.counts) < 0):
            raise ConfigError(f"data.split.counts must be three counts >= 0, got {s.counts}")
        if t.pde_lr_mult <= 0:
            raise ConfigError(f"train.pde_lr_mult must be > 0, got {t.pde_lr_mult}")
        if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0:
            raise ConfigError(f"train.epochs, train.batch_size must be >= 1 and train.lr > 0 (got {t.epochs}, {t.batch_size}, {t.lr})")
        if not self.models:
            raise ConfigError("models: list at least one model")
        from pdeseg.registry import MODELS

        for m in self.models:
            if m.name not in MODELS:
                raise ConfigError(f"models: unknown model {m.name!r}; registered: {', '.join(sorted(MODELS))}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")


def _build(cls: type, data: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from plain data, rejecting unknown keys."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(unknown))} in {where or 'config'}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, path)
        elif typing.get_origin(hint) is list and typing.get_args(hint) and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{path} must be a list")
            kwargs[key] = [_build(typing.get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. precision: 32
    if hint in (int, bool, str) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")
    if origin is list and not isinstance(value, list):
        raise ConfigError(f"{path} must be a list, got {value!r}")
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{path} must be a mapping, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (or defaults when ``path`` is None), apply overrides, validate.

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ConfigError: a key is unknown or a value is invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    return _build(ExperimentConfig, data, "").validate()


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
