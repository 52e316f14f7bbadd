"""Typed experiment configuration: YAML in, a validated schema out, resolved YAML saved with each run.

This module is a leaf: it imports nothing from ``pdeseg`` but :mod:`pdeseg.errors` (itself a
leaf). It checks what can be checked from the config alone (types, ranges, choices, list
lengths, unknown keys); the cross-checks against the registries and the data set (the model
exists and supports the data's dimensions, the classes match the data set, the modalities
exist) run in one resolve step, :func:`pdeseg.build.resolve`, once the data format is known.

Override any field from the command line with dotted keys, e.g.
``--set train.epochs=2 train.lr=1e-3 data.root=/data/BraTS2020``; values are parsed as YAML
(and ``1e-3``, which YAML reads as a string, is accepted wherever a number is expected).

Every bad value raises :class:`ConfigError` with one line naming the key, the value and
what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pdeseg.errors import ConfigError


#: Target value of pixels that no loss or training metric sees (outside a field of view).
IGNORE_LABEL = 255

SAMPLING_MODES = ("slices", "patches", "whole")
NORMALIZATIONS = ("zscore", "zscore_all", "minmax", "scale255", "ct")
SLICE_SELECTIONS = ("middle", "tumour_middle", "range", "brain", "tumour", "all")
OUTPUTS = ("softmax", "sigmoid", "regions")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
SCHEDULERS = ("onecycle", "cosine", "none")
OPTIMIZERS = ("adam", "adamw", "sgd")
STITCH_MODES = ("auto", "device", "cpu")  # where sliding-window outputs are stitched (inference)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


#: A number that YAML 1.1 (PyYAML) leaves as text: ``1e-5``, ``+2E3``, ``.5e1`` (no dot before the
#: exponent). The top-level keys accept it through pydantic's number parsing; :func:`yaml_numbers`
#: gives the free-form nested options (model keywords, loss-term options, ablation variants) the
#: same rule.
_YAML_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def yaml_numbers(value: Any) -> Any:
    """``value`` with every text that is a number in scientific notation (``1e-5``, which
    PyYAML reads as a string) turned into a float, recursively through lists and mappings;
    everything else unchanged. The one place where nested free-form options get the YAML
    number handling of the typed keys."""
    if isinstance(value, str) and _YAML_FLOAT.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(yaml_numbers(v) for v in value)
    return value


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DomainSplit(Section):
    """Split by domain (cell type, imaging modality): every case of a ``test`` domain is a test
    case, the cases of the ``train`` domains are split by the section's ``fractions`` or
    ``counts`` (usually ``[0.9, 0.1, 0.0]``: validation drawn from the training domains), the
    cases of ``val`` domains (optional) are validation cases, and other domains are left out."""

    train: Annotated[list[str], Field(min_length=1)]  # domains whose cases are split into train (and validation)
    test: Annotated[list[str], Field(min_length=1)]  # domains whose every case is a test case (the unseen domains)
    val: list[str] = Field(default_factory=list)  # domains whose every case is a validation case (optional)

    @model_validator(mode="after")
    def _disjoint(self) -> DomainSplit:
        seen: dict[str, str] = {}
        for part in ("train", "val", "test"):
            for name in getattr(self, part):
                if name in seen:
                    raise ValueError(f"domain {name!r} is in both {seen[name]} and {part}")
                seen[name] = part
        return self


class SplitConfig(Section):
    """Patient-level split. Give ``fractions`` (train/val/test summing to 1) or ``counts``.

    ``counts`` like paper 003's 250/74/45 are scaled proportionally when the data set has
    a different number of cases (set ``scale_counts: false`` to require an exact match).
    With ``domains`` (see :class:`DomainSplit`) the fractions or counts apply to the cases
    of the training domains only.
    """

    # train / validation / test shares of the cases (patients), summing to 1; null when counts are given
    fractions: Annotated[list[NonNegativeFloat], Field(min_length=3, max_length=3)] | None = [0.8, 0.1, 0.1]
    # train / validation / test numbers of cases, e.g. paper 003's [250, 74, 45]; needs fractions: null
    counts: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=3, max_length=3)] | None = None
    scale_counts: bool = True  # scale counts to the data set's number of cases; false: the counts must match exactly
    seed: Annotated[int, Field(ge=0)] = 0  # seed of the split (the same seed gives the same patients on each side)
    domains: DomainSplit | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SplitConfig:
        if (self.fractions is None) == (self.counts is None):
            raise ValueError("give exactly one of fractions or counts (set the other to null)")
        if self.fractions is not None and abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {self.fractions} (sum {sum(self.fractions):g})")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether the config asks for any validation cases."""
        if self.domains is not None and self.domains.val:
            return True
        return bool(self.fractions[1] > 0 if self.fractions is not None else self.counts[1] > 0)


class AugmentConfig(Section):
    """Random augmentation applied identically to image and label (MONAI transforms).

    Geometric transforms resample labels by nearest neighbour. In 3D the rotation range
    applies about each axis. ``gamma``, ``noise_std`` and ``elastic`` are off by default;
    the elastic deformation's strength is fixed (see :mod:`pdeseg.data.pipeline.transforms`).
    """

    enabled: bool = True  # false: no augmentation at all
    flip_prob: Probability = 0.5  # per spatial axis
    rotate_deg: Annotated[float, Field(ge=0, le=180)] = 15.0  # affine rotation, degrees either way (about each axis in 3D)
    shift_frac: Annotated[float, Field(ge=0, le=0.5)] = 0.05  # affine shift, fraction of the size
    scale_range: Annotated[float, Field(ge=0, lt=1)] = 0.1  # affine zoom in [1 - r, 1 + r]
    affine_prob: Probability = 0.5  # probability of the affine transform (rotation, shift, zoom together)
    brightness: NonNegativeFloat = 0.1  # additive, in units of the normalised intensity
    contrast: NonNegativeFloat = 0.1  # multiplicative, 1 +- contrast
    gamma: Annotated[float, Field(ge=0, lt=1)] = 0.0  # gamma in [1 - g, 1 + g] (intensity statistics kept); 0: off
    noise_std: NonNegativeFloat = 0.0  # additive Gaussian noise, sd drawn from [0, noise_std]; 0: off
    intensity_prob: Probability = 0.5  # probability of each intensity transform
    invert_prob: Probability = 0.0  # negate the normalised image (contrast inversion for z-scored data); 0: off
    elastic: bool = False  # smooth random elastic deformation (slow in 3D: a smoothed displacement field per patch)
    elastic_prob: Probability = 0.2  # probability of the elastic deformation when elastic is on


class DataConfig(Section):
    """Where the cases are, how they are normalised and how training samples are drawn.

    ``mode``: ``slices`` (2D models on axial slices), ``patches`` (random patches of
    ``spatial_size`` from each case, sliding-window inference) or ``whole`` (whole images or
    volumes, optionally cropped/padded to ``spatial_size``).
    """

    root: str = ""  # the data folder (or --data on the command line)
    format: str = "brats"  # a registered data format (pdeseg.data.formats.FORMATS)
    format_options: dict[str, Any] = Field(default_factory=dict)  # the format's reading options, e.g. label_convention
    cache_dir: str = "~/.cache/pdeseg"  # cache of preprocessed cases, keyed by the files and the settings; damaged entries are rebuilt
    modalities: Annotated[list[str], Field(min_length=1)] | None = None  # None: every channel of the format
    mode: Literal["slices", "patches", "whole"] = "slices"  # see the section's description above
    spatial_dims: Literal[2, 3] | None = None  # None: 2 for slices, the data's own otherwise
    # zscore: per channel over the non-zero voxels (skull-stripped MRI); zscore_all: over every voxel; minmax: the
    # 0.5-99.5 percentiles of the non-zero voxels to [0, 1]; scale255: x / 255; ct: see ct_window
    normalization: Literal["zscore", "zscore_all", "minmax", "scale255", "ct"] = "zscore"
    # ct: [lo, hi] HU; None: the 0.5/99.5 percentiles of the training foreground, with its mean and sd (nnU-Net)
    ct_window: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    # slices mode, which slices train: middle (one per case, paper 000), tumour_middle, range (slice_range), brain
    # (any non-zero voxel), tumour (any labelled voxel), all
    slices: Literal["middle", "tumour_middle", "range", "brain", "tumour", "all"] = "tumour"
    slice_range: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)] | None = None  # [first, last] for slices: range
    # slices: [H, W] centre crop/pad (or resize) for training; patches: the patch size [X, Y, Z]; whole: optional
    # crop/pad. Models pad and crop internally, so no size must be a multiple of anything
    spatial_size: Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=2, max_length=3)] | None = None
    resize: bool = False  # resize to spatial_size instead of centre crop/pad (slices mode)
    # slices mode, training: how a slice larger than spatial_size is cut to it: "center" crop, or a "random"
    # window drawn per item and epoch (microscopy images of 1024x1024 trained on 256x256 windows)
    crop: Literal["center", "random"] = "center"
    # slices mode, inference: segment a slice larger than spatial_size by overlapping windows of that size
    # (Gaussian-weighted, as in patches mode) instead of in one pass; bounds memory on large images
    tile_inference: bool = False
    # crop every case to the bounding box of its non-zero voxels (any channel; plus crop_margin voxels) before the
    # network, in training and in prediction (the prediction is pasted back on the input grid as background), as
    # nnU-Net does; needs a spatial_size in slices / whole mode. Off by default: on held-out BraTS cases training
    # with it lowered TC Dice in 2 of 2 seeds at a short budget, while cropping at inference alone (predict --crop)
    # kept Dice (docs: Fast prediction on a CPU). An image without zero background gets the whole image as its box
    crop_nonzero: bool = False
    crop_margin: Annotated[int, Field(ge=0)] = 0  # voxels kept around the non-zero box on each side (crop_nonzero)
    # slices mode: 2.5D input, the n slices above and below each slice as extra channels (edges repeat the last
    # slice); the model sees len(modalities) x (2n + 1) channels, neighbours first-to-last, modalities within each
    context_slices: Annotated[int, Field(ge=0)] = 0
    # slices mode: the volume axes (0 X, 1 Y, 2 Z) slices are cut along; [0, 1, 2] is triplanar: one model trained on
    # sagittal, coronal and axial slices, whose three passes are averaged (class probabilities) in 3D at inference
    slice_axes: Annotated[list[Literal[0, 1, 2]], Field(min_length=1, max_length=3)] = Field(default_factory=lambda: [2])
    # resample every case to this voxel size (mm per axis) before training; predictions go back to the input grid
    target_spacing: Annotated[list[PositiveFloat], Field(min_length=2, max_length=3)] | None = None
    samples_per_case: PositiveInt = 4  # patches mode, or slices mode with crop: random: windows per case (slice) per epoch
    foreground_prob: Probability = 0.33  # patches mode: share of patches centred on a foreground voxel
    # patches mode, which foreground voxel: "classes" a class uniformly among those present, then one of its
    # voxels (nnU-Net style; small classes as often as large ones); "any" uniformly among all labelled voxels
    foreground_sampling: Literal["classes", "any"] = "classes"
    train_cases: Annotated[float, Field(gt=0)] | None = None  # count (>= 1) or fraction (< 1) of the training side
    num_workers: Annotated[int, Field(ge=0)] = 0  # data-loader worker processes (0: load in the training process)
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_cases" in data:
            raise ValueError("max_cases was removed (it changed the test set): use data.train_cases, a count or "
                             "fraction of the training cases taken after the patient split")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.slices == "range" and self.slice_range is None:
            raise ValueError("slices: range needs slice_range: [first, last]")
        if self.slice_range is not None and self.slice_range[0] > self.slice_range[1]:
            raise ValueError(f"slice_range must be [first, last] with first <= last, got {self.slice_range}")
        if self.ct_window is not None and self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be [lo, hi] with lo < hi, got {self.ct_window}")
        if (self.crop == "random" or self.tile_inference) and (self.mode != "slices" or self.spatial_size is None or self.resize):
            raise ValueError("crop: random and tile_inference need mode: slices with a spatial_size and resize: false")
        if self.context_slices and self.mode != "slices":
            raise ValueError("context_slices (2.5D input) is for mode: slices; patches and whole models see 3D context")
        if len(set(self.slice_axes)) != len(self.slice_axes):
            raise ValueError(f"slice_axes lists an axis twice: {self.slice_axes}")
        if self.slice_axes != [2] and self.mode != "slices":
            raise ValueError("slice_axes is for mode: slices")
        if self.slice_axes != [2] and self.slices == "range":
            raise ValueError("slices: range counts axial slices; it does not combine with other slice_axes")
        if self.mode == "patches" and self.spatial_size is None:
            raise ValueError("mode: patches needs spatial_size (the patch size)")
        if self.crop_nonzero and self.mode != "patches" and self.spatial_size is None:
            raise ValueError(f"crop_nonzero: true gives every case its own size, so mode: {self.mode} needs a spatial_size "
                             "to batch them (or crop_nonzero: false)")
        if self.train_cases is not None and self.train_cases >= 1 and self.train_cases != int(self.train_cases):
            raise ValueError(f"train_cases must be a whole count (>= 1) or a fraction in (0, 1), got {self.train_cases}")
        return self


class ModelConfig(Section):
    """A registered model name and its keyword arguments (``pdeseg models`` lists names)."""

    name: str = "unet"  # a registered model (pdeseg models)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # the model's keyword arguments, e.g. features, activation, dropout

    def __init__(self, name: str = "unet", kwargs: dict[str, Any] | None = None, **data: Any):
        super().__init__(name=name, kwargs=kwargs or {}, **data)

    @field_validator("kwargs", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return yaml_numbers(v)


class LossTerm(BaseModel):
    """One weighted term of the loss: a registered loss name (``pdeseg.losses.registry.LOSSES``), its
    weight, an optional warm-up schedule, and its own options (checked against the loss's
    constructor when resolved).

    The schedule switches a term on after some epochs or ramps it in. With epochs counted
    from 0, the term's weight in epoch ``e`` is ``weight * factor(e)``::

        factor(e) = 0                                         if e < start_epoch
                  = 1                                         if e >= start_epoch and ramp_epochs == 0
                  = min(1, (e - start_epoch + 1) / ramp_epochs)   otherwise

    e.g. ``start_epoch: 5, ramp_epochs: 4`` gives factors 0 in epochs 0-4, then 0.25, 0.5,
    0.75 in epochs 5-7 and 1 from epoch 8 on; ``start_epoch: 5`` alone gives 0 in epochs
    0-4 and 1 from epoch 5 (shown as epoch 6 in logs and ``metrics.csv``, which count from
    1). The factor depends on the epoch number only, so a resumed run continues the same
    schedule. A term whose factor is 0 is not computed at all
    (:class:`pdeseg.losses.composite.CompositeLoss`).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str  # a registered loss term: ce, dice, tv, phase_field, reaction_diffusion, pde_consistency, instance_maps
    weight: NonNegativeFloat = 1.0  # the term's weight in the sum
    start_epoch: Annotated[int, Field(ge=0)] = 0  # weight 0 before this epoch (0-based)
    ramp_epochs: Annotated[int, Field(ge=0)] = 0  # then linear from 1/ramp_epochs to 1 over this many epochs

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):  # the free-form options get the typed keys' YAML number handling
            return {k: v if k == "name" else yaml_numbers(v) for k, v in data.items()}
        return data

    @property
    def options(self) -> dict[str, Any]:
        """The term's own keyword arguments (everything but name, weight and the schedule)."""
        return dict(self.model_extra or {})

    @property
    def scheduled(self) -> bool:
        """Whether the term has a warm-up schedule (``start_epoch`` or ``ramp_epochs`` set)."""
        return self.start_epoch > 0 or self.ramp_epochs > 0


def _default_terms() -> list[LossTerm]:
    return [LossTerm(name="ce", weight=1.0), LossTerm(name="dice", weight=1.0)]


class LossConfig(Section):
    """The training loss: a weighted sum of registered terms (default CE + soft Dice, paper 000)."""

    terms: Annotated[list[LossTerm], Field(min_length=1)] = Field(default_factory=_default_terms)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        old = sorted(k for k in ("ce_weight", "dice_weight", "dice_eps", "dice_include_background") if isinstance(data, dict) and k in data)
        if old:
            raise ValueError(f"{', '.join(old)} were replaced by loss.terms, e.g. terms: [{{name: ce, weight: 1}}, "
                             "{name: dice, weight: 1, eps: 1.0}]")
        return data

    @model_validator(mode="after")
    def _some_weight(self) -> LossConfig:
        if sum(t.weight for t in self.terms) <= 0:
            raise ValueError("every loss term has weight 0: give at least one a positive weight")
        if not any(t.weight > 0 and t.start_epoch == 0 for t in self.terms):
            starts = ", ".join(f"{t.name} {t.start_epoch}" for t in self.terms if t.weight > 0)
            raise ValueError(f"no term with a positive weight starts at epoch 0 (start_epoch: {starts}), so the first "
                             "epoch would have no loss; give at least one of them start_epoch: 0")
        return self


class PostprocessConfig(Section):
    """Rules applied to whole-case label maps after prediction (:mod:`pdeseg.nn.postprocess`);
    None: off."""

    min_component_fraction: Annotated[float, Field(gt=0, le=1)] | None = None  # drop foreground islands < f x largest
    min_innermost_voxels: PositiveInt | None = None  # innermost region (BraTS ET) under n voxels -> next class (NCR)


class TrainConfig(Section):
    """Optimisation, precision, device and the checkpoint rule of a training run."""

    epochs: PositiveInt = 10  # passes over the training cases (slices, patches or images)
    batch_size: PositiveInt = 8  # per process (several GPUs: each process takes this many)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # sgd: with momentum 0.9; weight_decay applies to each
    lr: PositiveFloat = 1e-3  # peak learning rate of the one-cycle schedule
    pde_lr_mult: PositiveFloat = 1.0  # PDE coefficients learn at lr * pde_lr_mult (1 = paper)
    weight_decay: NonNegativeFloat = 0.0  # never applied to norms, biases and PDE coefficients
    scheduler: Literal["onecycle", "cosine", "none"] = "onecycle"  # stepped per batch; cosine ends at 0, none is constant
    warmup_epochs: NonNegativeFloat = 0.0  # cosine/none: linear warm-up to lr over this many epochs' steps
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16 on GPUs and bf16 CPUs
    channels_last: bool = True  # 2D models only (no effect on 3D)
    compile: bool = False  # run the network through torch.compile while training (compiled at the first step)
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"  # auto: the GPU when there is one
    seed: Annotated[int, Field(ge=0)] = 0  # seed of the weights, the sampling and the augmentation
    grad_clip: PositiveFloat | None = None  # clip the gradient norm to this value; null: no clipping
    monitor: str = "dice_mean"  # validation metric that picks best.pt (higher is better), or train_loss
    init: str | None = None  # start from these weights: a shipped model's name (pdeseg models) or a checkpoint; its model and task spec must be this config's
    val_batch_size: PositiveInt = 16  # batch size of validation passes

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _warmup(self) -> TrainConfig:
        if self.warmup_epochs > 0 and self.scheduler == "onecycle":
            raise ValueError(f"warmup_epochs {self.warmup_epochs:g} does not combine with scheduler onecycle, which "
                             "warms up on its own (its first 30% of steps); use scheduler cosine or none, or warmup_epochs 0")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs:g}) must be less than epochs ({self.epochs}), "
                             "so that the learning rate reaches train.lr and the schedule has steps left")
        return self


class AblationConfig(Section):
    """Named variants for ``pdeseg ablate`` (instead of a ``--grid``): each a mapping with a
    ``name`` and settings. ``model`` picks a registered model (its kwargs from ``models``);
    a dotted key is a config path (``loss.terms``, ``train.lr``); any other key is a keyword
    of the variant's model. The first variant is the baseline of the paired tests."""

    variants: Annotated[list[dict[str, Any]], Field(min_length=2)]  # each {name: ..., setting: value, ...}; the first is the baseline

    @field_validator("variants", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        if isinstance(v, list):  # a variant's name stays text
            return [{k: x if k == "name" else yaml_numbers(x) for k, x in d.items()} if isinstance(d, dict) else d for d in v]
        return v

    @model_validator(mode="after")
    def _named(self) -> AblationConfig:
        names = []
        for i, v in enumerate(self.variants):
            name = v.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"ablation.variants[{i}] needs a non-empty name")
            names.append(name)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"ablation variant names must be distinct; repeated: {', '.join(dup)}")
        return self


class ExperimentConfig(Section):
    """A whole experiment, as read from YAML (``configs/``) with ``--set`` overrides and saved with every run."""

    name: Annotated[str, Field(min_length=1)] = "experiment"  # run folders are <output_dir>/<name>/<model>/
    output_dir: str = "runs"  # the folder that holds the experiment's run folders
    num_classes: Annotated[int, Field(ge=2)] | None = None  # None: the data set's own classes
    # sigmoid: one logit channel, binary tasks; regions: one sigmoid per nested region (BraTS WT/TC/ET)
    output: Literal["softmax", "sigmoid", "regions"] = "softmax"
    data: DataConfig = Field(default_factory=DataConfig)
    models: Annotated[list[ModelConfig], Field(min_length=1)] = Field(default_factory=lambda: [ModelConfig()])
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ablation: AblationConfig | None = None  # named variants for pdeseg ablate
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)  # applied by predict and evaluate

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON-ready), as saved with every run."""
        return self.model_dump(mode="json")

    def copy_with(self, **changes: Any) -> ExperimentConfig:
        """A validated deep copy with top-level fields replaced."""
        return config_from_dict({**self.to_dict(), **{k: _plain(v) for k, v in changes.items()}})


class TaskSpec(Section):
    """The task a trained model was made for: what it takes in (format, modalities), how that
    was preprocessed (normalisation, spacing, size) and sampled (mode, slices, context), and
    what it puts out (classes, output head, regions). Everything inference needs to treat new
    data as training did; stored in every checkpoint under the key ``"preprocessing"``.

    Filled by :func:`pdeseg.build.resolve` from the config and the data set.
    """

    format: str
    modalities: list[str]
    normalization: Literal["zscore", "zscore_all", "minmax", "scale255", "ct"]
    ct_window: list[float] | None = None  # ct: None until taken from the training cases (data.pipeline.prepare)
    ct_stats: list[float] | None = None  # ct: [mean, sd] of the training foreground (nnU-Net rule), or None
    mode: Literal["slices", "patches", "whole"]
    spatial_dims: Literal[2, 3]
    spatial_size: list[int] | None = None
    resize: bool = False
    tile_inference: bool = False
    context_slices: int = 0
    slice_axes: list[int] = Field(default_factory=lambda: [2])
    target_spacing: list[float] | None = None
    crop_nonzero: bool = False  # cases cropped to their non-zero box (data.crop_nonzero resolved; older models: False)
    crop_margin: Annotated[int, Field(ge=0)] = 0
    slices: Literal["middle", "tumour_middle", "range", "brain", "tumour", "all"] = "tumour"
    slice_range: list[int] | None = None
    num_classes: Annotated[int, Field(ge=2)]
    output: Literal["softmax", "sigmoid", "regions"] = "softmax"
    class_names: list[str]
    regions: dict[str, list[int]] = Field(default_factory=dict)
    # cell images: the instance representation (data.pipeline.representations), its boundary
    # width and the regression maps the network puts out after its class logits
    instance_targets: str | None = None
    boundary_width: Annotated[int, Field(ge=1)] = 1
    maps: list[str] = Field(default_factory=list)




def _plain(v: Any) -> Any:
    return v.model_dump(mode="json") if isinstance(v, BaseModel) else v


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def _key(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "constrained-")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "config"


def _section_fields(loc: tuple) -> list[str] | None:
    """Known keys of the section at ``loc`` (for 'unknown key' messages)."""
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return sorted(model.model_fields)


def _one_line(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``key = value: what is allowed``."""
    parts = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = _key(loc)
        if err["type"] == "extra_forbidden":
            known = _section_fields(loc)
            parts.append(f"unknown key {key}" + (f" (known: {', '.join(known)})" if known else ""))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("value_error", "assertion_error") or "input" not in err:
            parts.append(f"{key}: {msg}")
        else:
            parts.append(f"{key} = {err['input']!r}: {msg}")
    return "; ".join(parts)


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Validate plain data into an :class:`ExperimentConfig`.

    Raises:
        ConfigError: unknown keys or invalid values (one line naming each).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got a {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict (values parsed as YAML).

    Raises:
        ConfigError: an override without ``=``, or one that descends into a value.
    """
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
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc.problem})") from None
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file.

    Raises:
        ConfigError: missing, unreadable, binary, not YAML, or not a mapping at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is expected)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (name:, data:, models:, ...), got a {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (or defaults when ``path`` is None), apply overrides, validate.

    Raises:
        ConfigError: the file is missing or unreadable, a key is unknown or a value invalid.
    """
    data = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (what the run actually used)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
