"""From a validated config to built objects: the one resolve/build step.

:func:`resolve` runs once the data format is known and does every cross-check that the
leaf config cannot (the format exists; the model exists, supports the data's dimensions
and accepts its keyword arguments, and its constructor accepts their values; the classes
match the data set; the modalities exist; the loss terms exist and accept their options
and values; ``train.monitor`` names a metric that will exist, or ``train_loss``; the
device and precision exist here), before any data are read. It fills what the data set decides (modalities, classes,
dimensions) and returns an :class:`Experiment` holding the resolved config, the data
format and the :class:`~pdeseg.config.TaskSpec` that every checkpoint carries.

The ``build_*`` functions make the objects the trainer receives: model, loss, optimiser,
scheduler.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pdeseg.config import ExperimentConfig, LossConfig, ModelConfig, TaskSpec, TrainConfig
from pdeseg.errors import ConfigError
from pdeseg.data.formats import DataFormat, DatasetInfo, get_format
from pdeseg.losses.composite import CompositeLoss
from pdeseg.nn.output import OutputHead, head_of, make_head, output_channels
from pdeseg.nn.params import parameter_groups
from pdeseg.losses.registry import LOSSES
from pdeseg.nn.models import build_model, check_model, count_parameters
from pdeseg.runtime import resolve_device, resolve_precision

log = logging.getLogger(__name__)

#: Metrics logged per epoch for training and validation (paper 003: accuracy, mean IoU, Dice).
EPOCH_METRICS = ("accuracy", "iou_mean_all", "iou_mean", "dice_mean")


@dataclass(frozen=True)
class Experiment:
    """A config resolved against its data format.

    Attributes:
        cfg: the config with the data set's modalities, classes and dimensions filled in.
        fmt: the data format.
        info: what the data set says about itself (classes, regions, channels).
        spec: preprocessing and sampling, as stored in checkpoints.
    """

    cfg: ExperimentConfig
    fmt: DataFormat
    info: DatasetInfo
    spec: TaskSpec

    @property
    def head(self) -> OutputHead:
        """What the networks' logit channels mean (softmax, sigmoid or regions)."""
        return head_of(self.spec)

    def model_kwargs(self, model_cfg: ModelConfig) -> dict[str, Any]:
        """Constructor kwargs: the data fix dimensions and channels in/out, the config adds the rest."""
        return model_kwargs(self.spec, model_cfg)

    def validation_metrics(self) -> list[str]:
        """Names of the per-case validation metrics this experiment will log."""
        names = list(EPOCH_METRICS)
        names += [f"{m}_{c}" for m in ("dice", "iou") for c in self.info.class_names]
        names += [f"{m}_{r}" for m in ("dice", "iou") for r in self.info.regions]
        if self.fmt.object_metrics:  # whole images scored with their cells (inference.score.object_metrics)
            names += ["dice_fg", "dsb_score", "ap50"]
        return list(dict.fromkeys(names))


def model_kwargs(spec: TaskSpec, model_cfg: ModelConfig) -> dict[str, Any]:
    """``spatial_dims``, ``in_channels`` and ``out_channels`` from the data, then the model's own kwargs."""
    fixed = {"spatial_dims": spec.spatial_dims, "in_channels": len(spec.modalities) * (2 * spec.context_slices + 1),
             "out_channels": output_channels(spec.num_classes, spec.output, spec.regions) + len(spec.maps)}
    clash = sorted(set(fixed) & set(model_cfg.kwargs))
    if clash:
        raise ConfigError(f"models: {model_cfg.name} kwargs {clash} are set by the data (modalities, classes, "
                          "data.mode); remove them from the model's kwargs")
    return {**fixed, **model_cfg.kwargs}


def resolve(cfg: ExperimentConfig) -> Experiment:
    """Cross-check ``cfg`` against the registries and its data format; fill the data's choices.

    Raises:
        ConfigError: one line naming the key, the value and what is allowed.
    """
    d = cfg.data
    fmt = get_format(d.format)
    fmt.check_read_options(d.format_options)
    info = fmt.dataset_info(d.root or None, d.format_options)
    modalities = fmt.channels(info, d.modalities)
    if cfg.num_classes is not None and cfg.num_classes != info.num_classes:
        raise ConfigError(f"num_classes is {cfg.num_classes} but data.format {fmt.name} has {info.num_classes} classes "
                          f"({', '.join(info.class_names)}); leave num_classes out to take the data's")
    if cfg.output == "sigmoid" and info.num_classes != 2:
        raise ConfigError(f"output: sigmoid is for binary tasks (2 classes); {fmt.name} has {info.num_classes}")
    try:
        make_head(cfg.output, info.num_classes, info.regions)
    except ValueError as exc:
        raise ConfigError(f"{exc} (data.format {fmt.name})") from None
    if cfg.postprocess.min_innermost_voxels is not None:
        from pdeseg.nn.postprocess import region_chain

        try:
            region_chain(info.num_classes, info.regions)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (data.format {fmt.name})") from None
    dims = 2 if d.mode == "slices" else info.spatial_dims
    if d.spatial_dims is not None and d.spatial_dims != dims:
        why = "slices are 2D" if d.mode == "slices" else f"{fmt.name} cases are {info.spatial_dims}D"
        raise ConfigError(f"data.spatial_dims is {d.spatial_dims} but data.mode {d.mode} gives {dims} ({why})")
    if d.spatial_size is not None and len(d.spatial_size) != dims:
        raise ConfigError(f"data.spatial_size {d.spatial_size} must have {dims} sizes for data.mode {d.mode}")
    if d.target_spacing is not None and len(d.target_spacing) != info.spatial_dims:
        raise ConfigError(f"data.target_spacing {d.target_spacing} must have {info.spatial_dims} values (mm per axis of a "
                          f"{fmt.name} case)")
    if d.resize and d.mode != "slices":
        raise ConfigError("data.resize applies to data.mode slices only")
    representation = _representation(fmt, d.format_options, d.slice_axes, cfg.output)
    spec = TaskSpec(
        format=fmt.name, modalities=modalities, normalization=d.normalization, ct_window=d.ct_window, mode=d.mode,
        spatial_dims=dims, spatial_size=d.spatial_size, resize=d.resize, tile_inference=d.tile_inference,
        context_slices=d.context_slices, slice_axes=list(d.slice_axes),
        target_spacing=d.target_spacing, crop_nonzero=crop_nonzero(d, info.spatial_dims), crop_margin=d.crop_margin,
        slices=d.slices, slice_range=d.slice_range,
        num_classes=info.num_classes, output=cfg.output, class_names=list(info.class_names),
        regions={k: list(v) for k, v in info.regions.items()},
        instance_targets=representation.name if representation else None,
        boundary_width=representation.boundary_width if representation else 1,
        maps=list(representation.maps) if representation else [],
    )
    resolved = cfg.model_copy(deep=True)
    resolved.data.modalities = modalities
    resolved.data.spatial_dims = dims
    resolved.num_classes = info.num_classes
    exp = Experiment(resolved, fmt, info, spec)
    for i, m in enumerate(cfg.models):
        try:
            check_model(m.name, dims, m.kwargs)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"models[{i}] ({m.name}): {exc}") from None
        check_network(exp, m)
    build_loss(cfg.loss, exp.head)  # every term's options, values included (class_weights against the classes)
    _check_device(cfg.train)
    _check_monitor(exp)
    _check_instance_maps(exp)
    _check_loss_schedule(exp.cfg)
    return exp


def crop_nonzero(d, case_dims: int) -> bool:
    """``data.crop_nonzero`` as the task spec records it: cropping applies to 3D volumes only (a
    2D image is never cropped, see :mod:`pdeseg.data.pipeline.preprocess`)."""
    return bool(d.crop_nonzero) and case_dims == 3


def _representation(fmt: DataFormat, options: Mapping[str, Any], slice_axes: Sequence[int], output: str):
    """The instance representation of a microscopy format's ``targets`` (None for other formats).

    Raises:
        ConfigError: extra maps with triplanar slices or a region head.
    """
    if not fmt.object_metrics:
        return None
    from pdeseg.data.pipeline.representations import Representation

    rep = Representation(options.get("targets") or "semantic", int(options.get("boundary_width") or 1))
    if rep.maps and len(slice_axes) > 1:
        raise ConfigError(f"data.format_options.targets {rep.name} puts out maps along the slice's own axes; "
                          "it trains on one slice axis (data.slice_axes: [2])")
    if rep.maps and output == "regions":
        raise ConfigError(f"data.format_options.targets {rep.name} goes with output softmax or sigmoid, not regions")
    return rep


def _check_instance_maps(exp: Experiment) -> None:
    """A representation with extra maps needs the loss term that trains them, and that term
    needs such a representation."""
    names = [t.name for t in exp.cfg.loss.terms if t.weight > 0]
    if exp.spec.maps and "instance_maps" not in names:
        raise ConfigError(f"data.format_options.targets {exp.spec.instance_targets} trains the maps "
                          f"{', '.join(exp.spec.maps)}: add {{name: instance_maps, weight: 1.0}} to loss.terms")
    if not exp.spec.maps and "instance_maps" in names:
        raise ConfigError("loss term instance_maps trains the extra maps of data.format_options.targets distance or "
                          f"flows; this task has none (targets {exp.spec.instance_targets or 'not set'})")


def _check_device(t: TrainConfig) -> None:
    """``train.device`` and ``train.precision`` against the hardware (a CUDA device that is not
    here; 16-mixed, which needs CUDA), before any data are read or any folder is made, for
    every command that trains.

    Raises:
        DeviceError: the device is not here, or the precision does not run on it.
    """
    resolve_precision(t.precision, resolve_device(t.device))


def check_network(exp: Experiment, model_cfg: ModelConfig) -> None:
    """Build ``model_cfg`` once without keeping it, so that a value its constructor rejects
    (``dropout: 1.5``, a width it cannot use) is a :class:`ConfigError` before any data are
    read. The build runs on the meta device (no memory, no draws from the RNG); when that
    fails (a refused value, or a constructor that needs real tensors, e.g. one that reads a
    value with ``.item()``), a real build on the CPU, with the RNG state restored afterwards,
    decides.

    Raises:
        ConfigError: the constructor rejects a value.
    """
    try:
        with torch.device("meta"):
            build_network(exp, model_cfg)
        return
    except (ConfigError, RuntimeError, NotImplementedError):  # a refusal, or a constructor that needs real tensors:
        pass  # decided by a real build, so that a limit of meta tensors is never reported as the user's mistake
    with torch.random.fork_rng(devices=[]):
        build_network(exp, model_cfg)


def _check_loss_schedule(cfg: ExperimentConfig) -> None:
    """Warn about warm-up schedules that are allowed but probably not meant."""
    late = [f"{t.name} (start_epoch {t.start_epoch})" for t in cfg.loss.terms if t.weight > 0 and t.start_epoch >= cfg.train.epochs]
    if late:
        log.warning("loss terms %s never switch on in train.epochs %d", ", ".join(late), cfg.train.epochs)
    if cfg.train.monitor == "train_loss" and any(t.scheduled and t.weight > 0 for t in cfg.loss.terms):
        log.warning("train.monitor train_loss compares epochs whose loss weights differ (loss.terms start_epoch/"
                    "ramp_epochs): best.pt will favour epochs before a term switched on")


def _check_monitor(exp: Experiment) -> None:
    t, split = exp.cfg.train, exp.cfg.data.split
    if t.monitor == "train_loss":
        return
    allowed = exp.validation_metrics()
    if t.monitor not in allowed:
        raise ConfigError(f"train.monitor {t.monitor!r} is not a validation metric; choose train_loss or one of {', '.join(allowed)}")
    if not split.has_validation:
        raise ConfigError(f"train.monitor {t.monitor!r} needs validation cases but data.split gives none; "
                          "give the split a validation part or set train.monitor: train_loss")


def check_loss(loss: LossConfig) -> None:
    """Every term is registered and accepts its options.

    Raises:
        ConfigError: naming the term and the bad option or name.
    """
    for i, term in enumerate(loss.terms):
        if term.name not in LOSSES:
            raise ConfigError(f"loss.terms[{i}].name {term.name!r} is not a registered loss; choose one of {', '.join(LOSSES)}")
        accepted = [p for p in inspect.signature(LOSSES[term.name].build).parameters if p not in ("self", "head")]
        bad = sorted(set(term.options) - set(accepted))
        if bad:
            raise ConfigError(f"loss.terms[{i}] ({term.name}): unknown option(s) {bad}; it takes {', '.join(accepted) or 'none'} "
                              "(and every term: weight, start_epoch, ramp_epochs)")


def build_loss(loss: LossConfig, head: OutputHead | None = None) -> CompositeLoss:
    """The weighted sum of the config's loss terms, with each term's warm-up schedule
    (``start_epoch``, ``ramp_epochs``; the trainer calls ``set_epoch`` every epoch). Terms
    that take a ``head`` (the segmentation and PDE penalty terms) get the run's output head.

    Raises:
        ConfigError: an unknown term or option, or a value the term rejects.
    """
    check_loss(loss)
    terms = []
    for i, term in enumerate(loss.terms):
        try:
            build = LOSSES[term.name].build
            extra = {"head": head} if head is not None and "head" in inspect.signature(build).parameters else {}
            terms.append((term.name, term.weight, build(**term.options, **extra)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"loss.terms[{i}] ({term.name}): {exc}") from None
    return CompositeLoss(terms, [(term.start_epoch, term.ramp_epochs) for term in loss.terms],
                         head.class_channels if head is not None and head.maps else None)


def build_network(exp: Experiment, model_cfg: ModelConfig) -> nn.Module:
    """The model ``model_cfg`` for this experiment's data (fresh weights from the current RNG).

    Raises:
        ConfigError: the constructor rejects a value.
    """
    kwargs = exp.model_kwargs(model_cfg)
    try:
        return build_model(model_cfg.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"models: {model_cfg.name} rejects {model_cfg.kwargs} ({exc})") from None


def build_optimizer(t: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) over the model's declared parameter groups (no weight
    decay on norms, biases and PDE coefficients; PDE coefficients at ``lr * pde_lr_mult``)."""
    groups = parameter_groups(model, t.lr, t.weight_decay, t.pde_lr_mult)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups)
    return torch.optim.SGD(groups, momentum=0.9)


def build_scheduler(t: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule, stepped once per optimiser step over ``epochs * steps_per_epoch`` steps.

    * ``onecycle``: one-cycle, peaking at each group's lr (it has its own warm-up; the config
      rejects ``warmup_epochs`` with it);
    * ``cosine``: cosine decay from each group's lr to 0 at the last step;
    * ``none``: constant.

    With ``warmup_epochs > 0`` (cosine or none), the first ``W = round(warmup_epochs *
    steps_per_epoch)`` steps ramp linearly, step ``k`` at ``lr * (k + 1) / (W + 1)``, so that
    step ``W`` is the first at the full lr; cosine then decays over the remaining
    ``total - W`` steps. Built from torch's ``LinearLR`` and ``SequentialLR``, whose state dicts
    (saved in ``last.pt``) resume the sequence exactly.

    Returns:
        a scheduler, or None (``none`` without warm-up).
    """
    total = t.epochs * steps_per_epoch
    lr = torch.optim.lr_scheduler
    if t.scheduler == "onecycle":
        return lr.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    warmup = min(round(t.warmup_epochs * steps_per_epoch), total - 1)
    if warmup <= 0:
        return lr.CosineAnnealingLR(optimizer, T_max=total) if t.scheduler == "cosine" else None
    ramp = lr.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    if t.scheduler == "none":
        return ramp  # after its last step LinearLR leaves the lr where it is
    decay = lr.CosineAnnealingLR(optimizer, T_max=total - warmup)
    return lr.SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


def checkpoint_meta(exp: Experiment, model_cfg: ModelConfig, model: nn.Module) -> dict[str, Any]:
    """What every checkpoint of this model carries besides its weights: the model's registry
    name and kwargs, the preprocessing spec, the resolved config and the parameter count."""
    return {"model": {"name": model_cfg.name, "kwargs": exp.model_kwargs(model_cfg)},
            "preprocessing": exp.spec.model_dump(mode="json"), "config": exp.cfg.to_dict(),
            "parameters": count_parameters(model)}
