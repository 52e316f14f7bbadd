"""What a trained PDE module does: the cable block of paper 000 (its effect on each modality,
Fig. 6, and its coefficients), and the PDE layers of paper 001 (their learned stencils next
to their moment matrices, their coefficients, and feature maps before and after a layer).

Axes are named ``x, y, z`` in the order of the model input's spatial axes ``(X, Y, Z)``
(``z`` the slice axis of a volume); a derivative ``D^alpha`` is named by its multi-index:
``alpha = (2, 0, 0)`` is ``d_xx``, ``(1, 0, 1)`` is ``d_xz``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import nn

from pdeseg.config import TaskSpec
from pdeseg.nn.pde.cable import CableBlock
from pdeseg.nn.pde.layer import PDELayer
from pdeseg.nn.pde.moments import MomentKernels
from pdeseg.viz.figures import subplots as _subplots

AXES = "xyz"


def plot_cable_effect(image: np.ndarray, output: np.ndarray, coefficients: dict[str, list[float]], modalities: list[str],
                      path: str | Path) -> Path:
    """Input, block output and their difference for each modality of one slice (the caller runs
    the block: :func:`pdeseg.experiments.figures.cable_effect`).

    Args:
        image: ``(C, H, W)`` normalised slice.
        output: ``(C, H, W)`` the cable block's output of it.
        coefficients: the block's ``physical()`` values (``phi``, ``psi``, ``tau`` per channel).
        modalities: channel names.
    """
    image, y, phys = np.asarray(image, dtype=np.float32), np.asarray(output, dtype=np.float32), coefficients
    fig, axes = _subplots(len(modalities), 3, figsize=(8, 2.6 * len(modalities)), squeeze=False)
    for c, mod in enumerate(modalities):
        diff = y[c] - image[c]
        lim = float(np.abs(diff).max()) or 1.0
        for ax, arr, title, kw in (
            (axes[c][0], image[c], f"{mod} input", {"cmap": "gray"}),
            (axes[c][1], y[c], f"{mod} after block", {"cmap": "gray"}),
            (axes[c][2], diff, "output - input", {"cmap": "coolwarm", "vmin": -lim, "vmax": lim}),
        ):
            ax.imshow(np.rot90(arr), **kw)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[c][0].set_ylabel(f"Phi={phys['phi'][c]:.2f} Psi={phys['psi'][c]:.2f}\ntau={phys['tau'][c]:.3f}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def plot_cable_coefficients(values: dict[int, dict[str, list[float]]], modalities: list[str], path: str | Path) -> Path:
    """Learned Phi, Psi and tau per modality, one marker per seed.

    Args:
        values: ``{seed: {"phi": [...], "psi": [...], "tau": [...]}}``.
    """
    fig, axes = _subplots(1, 3, figsize=(10, 3))
    xs = np.arange(len(modalities))
    for ax, key, label in zip(axes, ("phi", "psi", "tau"), ("Phi (horizontal)", "Psi (vertical)", "tau (decay)")):
        for i, (seed, v) in enumerate(sorted(values.items())):
            ax.plot(xs + 0.08 * (i - len(values) / 2), v[key], "o", label=f"seed {seed}")
        ax.set_xticks(xs, modalities)
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------------------
# PDE layers (paper 001)
# --------------------------------------------------------------------------------------


def pde_layers(model: nn.Module) -> dict[str, PDELayer]:
    """The PDE layers of a model by position: the ``pde`` ModuleDict of a
    :class:`~pdeseg.nn.pde3d_unet.PDE3DUNet` (``{"bottleneck": layer, "0": layer}``), a bare
    :class:`PDELayer` (``{"layer": layer}``), or ``{}`` for a model without any (a plain UNet,
    or PDE-UNet, whose ``pde`` is a cable block). DDP / compiled wrappers are unwrapped."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, PDELayer):
        return {"layer": model}
    pde = getattr(model, "pde", None)
    if isinstance(pde, nn.ModuleDict):
        return {str(k): v for k, v in pde.items() if isinstance(v, PDELayer)}
    return {}


def cable_block(model: nn.Module) -> CableBlock | None:
    """The cable block of a PDE-UNet (paper 000), or None."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    pde = getattr(model, "pde", None)
    return pde if isinstance(pde, CableBlock) else None


def file_part(text: str) -> str:
    """``text`` (a model name, a layer position) made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))


def derivative_name(alpha: Sequence[int]) -> str:
    """``d_`` followed by each axis letter as often as ``alpha`` differentiates along it:
    ``(2, 0, 0) -> d_xx``, ``(0, 1) -> d_y``, ``(1, 0, 1) -> d_xz``."""
    if len(alpha) > len(AXES):
        raise ValueError(f"at most {len(AXES)} spatial axes, got the multi-index {tuple(alpha)}")
    return "d_" + "".join(AXES[i] * int(a) for i, a in enumerate(alpha))


def stencil_slices(kernel: np.ndarray) -> list[tuple[str, str, str, np.ndarray]]:
    """The 2D views of a stencil that the kernel figure shows: the kernel itself in 2D, or in
    3D its central slice through each pair of axes.

    Args:
        kernel: ``(n, n)`` or ``(n, n, n)``.

    Returns:
        ``[(title, row axis, column axis, (n, n) array)]``; entry ``[i, j]`` is the weight at
        offset ``(i - c, j - c)`` along (row axis, column axis), ``c = n // 2``.
    """
    k = np.asarray(kernel)
    if k.ndim == 2:
        return [("stencil", "x", "y", k)]
    if k.ndim != 3:
        raise ValueError(f"a stencil is 2D or 3D, got shape {k.shape}")
    c = k.shape[0] // 2
    return [("x-y slice (z offset 0)", "x", "y", k[:, :, c]),
            ("x-z slice (y offset 0)", "x", "z", k[:, c, :]),
            ("y-z slice (x offset 0)", "y", "z", k[c, :, :])]


@dataclass
class MomentPanel:
    """The 2D slice of one kernel's moment tensor that the kernel figure shows.

    Attributes:
        values: ``(n, n)`` moments ``M`` (float64).
        fixed: ``(n, n)`` bool: the entries the moment constraint fixes (drawn hatched, with
            their value); the others are the trainable (free) moments, coloured by value.
        rows, cols: the axes whose moment orders index the rows and columns (``"x"``, ...).
        title: which slice it is, e.g. ``M[b_x, b_y, b_z=0]``.
        alpha: the position of ``M[alpha]`` (the entry fixed at 1) in the panel.
    """

    values: np.ndarray
    fixed: np.ndarray
    rows: str
    cols: str
    title: str
    alpha: tuple[int, int]


def moment_panel(stencils: MomentKernels, t: int, group: int = 0) -> MomentPanel:
    """The moment slice shown for kernel ``t`` of a bank (its ``group``), and which of its
    entries are fixed by the constraint.

    In 2D that is the whole ``M``. In 3D it is the slice through the two axes that
    ``alpha_t`` differentiates along (for ``d_xx``, ``d_x``: ``x`` and ``y``), at the third
    axis's moment order ``alpha_t`` has there (0): the slice that holds ``M[alpha_t] = 1``,
    and the moments of the plane in which the stencil acts.

    Raises:
        IndexError: no such kernel or group.
    """
    d = stencils.spatial_dims
    if not 0 <= t < len(stencils.derivatives) or not 0 <= group < stencils.groups:
        raise IndexError(f"kernel {t} of group {group}: the bank has {len(stencils.derivatives)} kernels in {stencils.groups} group(s)")
    alpha = stencils.derivatives[t]
    with torch.no_grad():
        m = stencils.moments()[group, t].detach().cpu().numpy()
    fixed = stencils.mask[t].detach().cpu().numpy() == 0
    if d == 2:
        return MomentPanel(m, fixed, "x", "y", "M[b_x, b_y]", (alpha[0], alpha[1]))
    involved = [i for i, a in enumerate(alpha) if a]
    pair = sorted(involved + [i for i in range(d) if i not in involved][: 2 - len(involved)])
    (other,) = [i for i in range(d) if i not in pair]
    index: list[int | slice] = [slice(None)] * d
    index[other] = alpha[other]
    names = [f"b_{AXES[i]}" if i != other else f"b_{AXES[i]}={alpha[other]}" for i in range(d)]
    return MomentPanel(m[tuple(index)], fixed[tuple(index)], AXES[pair[0]], AXES[pair[1]], f"M[{', '.join(names)}]",
                       (alpha[pair[0]], alpha[pair[1]]))


def _wrap(text: str, width_in: float) -> list[str]:
    """Lines of ``text`` that fit a figure ``width_in`` inches wide at font size 9."""
    import textwrap

    return textwrap.wrap(text, max(40, int(width_in * 14)))


def _num(v: float) -> str:
    """A short label for a cell: ``0`` for tiny values, else 2 or 3 decimals."""
    if abs(v) < 5e-4:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3f}"


def _annotate(ax, values: np.ndarray, lim: float, skip: np.ndarray | None = None) -> None:
    n = values.shape[0]
    size = 8 if n <= 3 else 6
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if skip is not None and skip[i, j]:
                continue
            v = float(values[i, j])
            ax.text(j, i, _num(v), ha="center", va="center", fontsize=size,
                    color="white" if abs(v) > 0.6 * lim else "black")


def _stencil_axes(ax, n: int, rows: str, cols: str) -> None:
    c = n // 2
    ax.set_xticks(range(n), [str(k - c) for k in range(n)], fontsize=7)
    ax.set_yticks(range(n), [str(k - c) for k in range(n)], fontsize=7)
    ax.set_xlabel(f"{cols} offset", fontsize=7, labelpad=1)
    ax.set_ylabel(f"{rows} offset", fontsize=7, labelpad=1)


def layer_caption(layer: PDELayer) -> str:
    """One line of a layer's learned coefficients: lambda mean/max and k per axis."""
    info = layer.describe()
    k = info["k_mean_per_axis"]
    text = (f"lambda mean {info['lambda_mean']:.3g}, max {info['lambda_max']:.3g}; k (mean over channels) "
            + ", ".join(f"{AXES[i]} {v:.3g}" for i, v in enumerate(k)))
    if "advection_abs_mean" in info:
        text += f"; |advection| {info['advection_abs_mean']:.3g}, |mixed| {info['mixed_abs_mean']:.3g}"
    return text


@torch.no_grad()
def plot_pde_kernels(layer: PDELayer, path: str | Path, title: str | None = None) -> Path:
    """Each learned stencil of a PDE layer beside its moment matrix.

    One row per kernel of the layer's :class:`MomentKernels` bank (its first group): the
    stencil in grid units (``q = A^-1 M A^-T`` before the division by ``h^alpha``), as an image
    with its numbers on a diverging colour scale centred at 0 (in 3D its central slice
    through each pair of axes), then the moment slice of :func:`moment_panel`: fixed entries
    hatched with their value, free (trained) entries coloured by value. The row's title
    names the derivative; the figure's title gives the layer's solver and learned
    coefficients (:func:`layer_caption`).

    Args:
        layer: a (trained) :class:`PDELayer`.
        path: the PNG to write.
        title: first line of the figure title (e.g. the model and position).

    Returns:
        ``path``.
    """
    bank = layer.stencils
    q = bank.kernels(physical=False)[0].detach().cpu().numpy()  # (T, n, ..., n)
    q_std = bank.standard_kernels(physical=False).detach().cpu().numpy()
    n_kernels = q.shape[0]
    views = len(stencil_slices(q[0]))
    cols = views + 1
    n = q.shape[-1]
    cell = 2.55 if n <= 3 else 3.3  # inches per panel
    width = max(cell * cols, 6.5)
    head = title or "PDE layer"
    groups = f", group 1 of {bank.groups}" if bank.groups > 1 else ""
    lines = _wrap(f"{head}: {layer.solver}, {layer.operator}, {layer.steps} steps of dt {layer.dt:g}; "
                  f"{bank.size}-tap stencils of order {bank.order}{groups}, grid units", width) + _wrap(layer_caption(layer), width)
    top = 0.2 * len(lines) + 0.2
    fig, axes = _subplots(n_kernels, cols, figsize=(width, cell * n_kernels + top), squeeze=False)
    for t in range(n_kernels):
        alpha = bank.derivatives[t]
        name = derivative_name(alpha)
        lim = float(np.abs(q[t]).max()) or 1.0
        for v, (label, rows, cols_axis, arr) in enumerate(stencil_slices(q[t])):
            ax = axes[t][v]
            ax.imshow(arr, cmap="RdBu_r", vmin=-lim, vmax=lim)
            _annotate(ax, arr, lim)
            _stencil_axes(ax, arr.shape[0], rows, cols_axis)
            ax.set_title(f"{name}: {label}" if v == 0 else label, fontsize=8, fontweight="bold" if v == 0 else None)
        dev = float(np.abs(q[t] - q_std[t]).max())
        axes[t][0].annotate(f"max |q - central difference| = {dev:.3g}", xy=(0, 0), xycoords="axes fraction",
                            xytext=(0, -24), textcoords="offset points", fontsize=6.5, va="top")
        panel = moment_panel(bank, t)
        ax = axes[t][views]
        free_vals = panel.values[~panel.fixed]
        mlim = float(np.abs(free_vals).max()) if free_vals.size else 0.0
        mlim = mlim or 1.0
        shown = np.ma.masked_array(panel.values, mask=panel.fixed)
        cmap = matplotlib.colormaps["PuOr_r"].with_extremes(bad="#e6e6e6")
        ax.imshow(shown, cmap=cmap, vmin=-mlim, vmax=mlim)
        for i, j in np.argwhere(panel.fixed):
            strong = (int(i), int(j)) == panel.alpha
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#555555",
                                   linewidth=2.0 if strong else 0.6))
            ax.text(j, i, f"{float(panel.values[i, j]):g}", ha="center", va="center", fontsize=8 if n <= 3 else 7,
                    fontweight="bold", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85})
        _annotate(ax, panel.values, mlim, skip=panel.fixed)
        m = panel.values.shape[0]
        ax.set_xticks(range(m), [str(k) for k in range(m)], fontsize=7)
        ax.set_yticks(range(m), [str(k) for k in range(m)], fontsize=7)
        ax.set_xlabel(f"order b_{panel.cols}", fontsize=7, labelpad=1)
        ax.set_ylabel(f"order b_{panel.rows}", fontsize=7, labelpad=1)
        ax.set_title(f"moments {panel.title}\nhatched: fixed; free |max| {float(np.abs(free_vals).max()) if free_vals.size else 0:.3g}",
                     fontsize=7.5)
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - top / (cell * n_kernels + top)))
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _array(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def channel_change(before, after) -> np.ndarray:
    """``||after_c - before_c||_2`` over the whole field, per channel ``c``; ``(C,)``.

    Args:
        before, after: ``(C, *S)`` arrays or tensors of one shape.

    Raises:
        ValueError: shapes differ, or no spatial axes.
    """
    b, a = _array(before), _array(after)
    if b.shape != a.shape or b.ndim < 2:
        raise ValueError(f"before and after must be (C, *S) of one shape, got {b.shape} and {a.shape}")
    return np.sqrt(((a.astype(np.float64) - b) ** 2).reshape(b.shape[0], -1).sum(axis=1))


def most_changed_channels(before, after, channels: int = 4) -> list[int]:
    """The ``channels`` channels whose field the layer changes most (:func:`channel_change`),
    largest change first (ties: lower index first)."""
    change = channel_change(before, after)
    order = np.argsort(-change, kind="stable")
    return [int(c) for c in order[: max(1, int(channels))]]


def plot_pde_features(before, after, path: str | Path, channels: int = 4, rotate: bool = True,
                      title: str | None = None) -> Path:
    """Feature maps before and after a PDE layer, for the channels it changes most.

    One row per channel picked by :func:`most_changed_channels` (change measured over the
    whole field): before, after (one grey scale per channel, shared by both) and after -
    before (diverging scale centred at 0). 3D fields show their central slice along the
    last axis (the axial slice of a volume).

    Args:
        before, after: ``(C, *S)`` features (2 or 3 spatial dims), arrays or tensors.
        path: the PNG to write.
        channels: how many channels to show.
        rotate: show ``rot90`` of each slice (as the data format's figures do).
        title: figure title.

    Returns:
        ``path``.
    """
    b, a = _array(before), _array(after)
    change = channel_change(b, a)
    picked = most_changed_channels(b, a, channels)
    if b.ndim == 4:
        z = b.shape[-1] // 2
        b, a = b[..., z], a[..., z]
        where = f"central slice z={z} of {b.shape[-2]}x{b.shape[-1]}x{_array(before).shape[-1]}"
    elif b.ndim == 3:
        where = f"{b.shape[-2]}x{b.shape[-1]}"
    else:
        raise ValueError(f"features must be (C, X, Y) or (C, X, Y, Z), got {b.shape}")
    show = (lambda x: np.rot90(x)) if rotate else (lambda x: x)
    lines = (_wrap(title, 8.4) if title else []) + [f"{len(picked)} of {change.shape[0]} channels, most changed first; {where}"]
    top = 0.2 * len(lines) + 0.2
    fig, axes = _subplots(len(picked), 3, figsize=(8.4, 2.55 * len(picked) + top), squeeze=False)
    norms = np.sqrt((_array(before).astype(np.float64) ** 2).reshape(change.shape[0], -1).sum(axis=1))
    for r, c in enumerate(picked):
        lo, hi = float(min(b[c].min(), a[c].min())), float(max(b[c].max(), a[c].max()))
        if hi <= lo:
            hi = lo + 1.0
        diff = a[c] - b[c]
        lim = float(np.abs(diff).max()) or 1.0
        for k, (arr, name, kw) in enumerate((
            (b[c], "before", {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (a[c], "after", {"cmap": "gray", "vmin": lo, "vmax": hi}),
            (diff, "after - before", {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}),
        )):
            ax = axes[r][k]
            im = ax.imshow(show(arr), **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"channel {c}: {name}", fontsize=8)
            if k:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        rel = change[c] / norms[c] if norms[c] > 0 else float("nan")
        axes[r][0].set_ylabel(f"||after - before|| {change[c]:.3g}\n({rel:.1%} of ||before||)", fontsize=7)
    fig.suptitle("\n".join(lines), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - top / (2.55 * len(picked) + top)))
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@torch.no_grad()
def pde_layer_summary(model: nn.Module) -> dict[str, dict]:
    """JSON-able description of every PDE layer of a model, by position.

    Per position: :meth:`PDELayer.describe` (solver, operator, steps, dt, spacing, lambda
    mean/max, k per axis, ...), the layer's channels, stencil size, order and groups, and per
    kernel: its derivative (name and multi-index), the magnitude of its free (trained)
    moments over all groups (RMS and max of ``|mask * M_free|``), the largest deviation of
    its stencil from the central difference (grid units), and its moments ``M``
    (``[group][b_1]...[b_d]``).

    Raises:
        ValueError: the model has no PDE layers.
    """
    layers = pde_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no PDE layers (PDELayer): nothing to summarise")
    out: dict[str, dict] = {}
    for position, layer in layers.items():
        bank = layer.stencils
        info = layer.describe()
        moments = bank.moments().detach().cpu()  # (G, T, n...)
        free = (bank.mask.double() * bank.m_free.double()).detach().cpu()
        q = bank.kernels(physical=False).detach().cpu()
        q_std = bank.standard_kernels(physical=False).detach().cpu()
        kernels = []
        for t, alpha in enumerate(bank.derivatives):
            f = free[:, t]
            n_free = int((bank.mask[t] != 0).sum())
            kernels.append({
                "derivative": derivative_name(alpha),
                "alpha": list(alpha),
                "free_moments": n_free,
                "free_moment_rms": float(f.pow(2).sum() / max(1, n_free * f.shape[0])) ** 0.5,
                "free_moment_abs_max": float(f.abs().max()),
                "stencil_deviation_abs_max": float((q[:, t] - q_std[t]).abs().max()),
                "moments": moments[:, t].tolist(),
            })
        out[position] = {**info, "channels": layer.channels, "embed": layer.embed, "kernel_size": bank.size,
                         "order": bank.order, "groups": bank.groups, "kernels": kernels}
    return out


def layer_input(image: np.ndarray, spec: TaskSpec, centre: Sequence[int] | None = None) -> torch.Tensor:
    """The model input on which a layer's features are shown, ``(1, C, *S)`` float32.

    Follows the model's sampling (``spec.mode``): ``slices``: the slice ``z = centre[-1]``
    (default: the middle one), resized as in training when ``spec.resize``; ``patches``: a
    crop of the training patch size ``spec.spatial_size`` centred at ``centre`` (default:
    the volume's centre), shifted to lie inside the volume (a smaller volume is taken whole);
    ``whole``: the whole volume.

    Args:
        image: ``(C, X, Y, Z)`` normalised case (as :meth:`Predictor.preprocess` returns it,
            or :func:`pdeseg.data.pipeline.sampling.case_volume`).
        spec: the model's preprocessing spec.
        centre: a voxel ``(x, y, z)``.

    Raises:
        ValueError: ``image`` is not ``(C, X, Y, Z)``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got {image.shape}")
    spatial = image.shape[1:]
    centre = [s // 2 for s in spatial] if centre is None else [int(c) for c in centre]
    if spec.mode == "slices":
        z = min(max(centre[-1], 0), spatial[-1] - 1)
        x = torch.from_numpy(np.ascontiguousarray(image[..., z]))[None]
        if spec.resize and spec.spatial_size:
            x = F.interpolate(x, size=tuple(spec.spatial_size), mode="bilinear", align_corners=False)
        return x
    if spec.mode == "patches" and spec.spatial_size:
        index = [slice(None)]
        for c, s, p in zip(centre, spatial, spec.spatial_size):
            size = min(int(p), s)
            start = min(max(c - size // 2, 0), s - size)
            index.append(slice(start, start + size))
        image = image[tuple(index)]
    return torch.from_numpy(np.ascontiguousarray(image))[None]


def foreground_centre(label: np.ndarray | None, z: int | None = None) -> list[int] | None:
    """A voxel ``(x, y, z)`` to centre a shown crop on: the centroid of the labelled voxels of
    slice ``z`` (of the whole label when ``z`` is None), or None without foreground."""
    if label is None:
        return None
    lab = np.asarray(label) > 0
    if z is not None:
        xs, ys = np.nonzero(lab[..., z])
        if xs.size:
            return [int(round(xs.mean())), int(round(ys.mean())), int(z)]
    pts = np.argwhere(lab)
    if not pts.size:
        return None
    return [int(round(v)) for v in pts.mean(axis=0)]
