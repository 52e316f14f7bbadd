"""The figures of the studies (``compare``, ``ablate``) that need a model: they load the
runs' checkpoints, predict through :class:`~pdeseg.inference.predict.Predictor` (its one
decode step), and hand the arrays (images, labels, predictions, probabilities, cells) to
:mod:`pdeseg.viz`, which draws them and never runs a model.

Every function draws from what a study has on disk (run folders, cached cases) and returns
``(relative path, caption)`` pairs for the report; none of them trains or scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pdeseg.checkpoint import load_checkpoint, model_from_checkpoint
from pdeseg.config import ExperimentConfig
from pdeseg.data.formats import get_format
from pdeseg.data.pipeline.cache import CachedCase
from pdeseg.data.pipeline.sampling import case_volume, evaluation_slices
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor
from pdeseg.viz.study_figures import Figures, display_slice


def slice_prediction(predictor: Predictor, case: CachedCase, z: int) -> np.ndarray:
    """Predicted classes of slice ``z`` of a cached case: a slice model sees that slice alone
    (a 2.5D one with its neighbours), a volumetric or triplanar one segments the whole volume
    and the slice is taken from it."""
    if predictor.spec.mode == "slices" and list(predictor.spec.slice_axes) == [2]:
        n, depth = predictor.spec.context_slices, case.image.shape[0]
        lo, hi = max(0, z - n), min(depth, z + n + 1)  # beyond these the edges repeat, as for the whole volume
        image = np.asarray(case.image[lo:hi], dtype=np.float32).transpose(1, 2, 3, 0)  # (C, X, Y, hi - lo)
        return predictor.predict_volume(image)[..., z - lo]
    image, _ = case_volume(case)
    return predictor.predict_volume(image)[..., z]


def cable_effect(block, image: np.ndarray) -> np.ndarray:
    """The output ``(C, H, W)`` of a (trained) cable block on a normalised slice ``(C, H, W)``, for
    :func:`pdeseg.viz.pde_effect.plot_cable_effect`."""
    import torch

    with torch.no_grad():
        return block.float().eval()(torch.from_numpy(np.asarray(image, dtype=np.float32))[None])[0].numpy()


def pde_layer_figures(
    out: Path,
    cfg: ExperimentConfig,
    scope: str,
    name: str,
    predictor: Predictor,
    case: CachedCase | None,
    seed0: int,
    best: dict[int, Path],
) -> tuple[Figures, dict[str, Any]]:
    """What the PDE layers of model ``name`` (a PDE3D-UNet) learned, for the first seed: the
    stencils and moments of each layer, and its features before and after it on ``case``
    (the first shown test case; a training-patch-sized crop centred on the tumour in its
    display slice, or that slice for a slice model).

    Args:
        best: the model's ``best.pt`` per seed.

    Returns:
        ``(figures, {seed: pde_layer_summary})`` over every seed the model was trained with.
    """
    from pdeseg.viz.pde_effect import (
        file_part,
        foreground_centre,
        layer_input,
        pde_layer_summary,
        pde_layers,
        plot_pde_features,
        plot_pde_kernels,
    )

    figures = []
    model = predictor.model
    for position, layer in pde_layers(model).items():
        rel = f"figures/pde_kernels_{file_part(name)}_{file_part(position)}.png"
        plot_pde_kernels(layer, out / rel, title=f"{name} (seed {seed0}), PDE layer at {position}")
        figures.append(
            (
                rel,
                f"Learned stencils of the PDE layer of {name} at position {position} (seed {seed0}): each "
                "kernel (grid units; central slices through each axis pair in 3D) beside its moment matrix, "
                "whose hatched entries the moment constraint fixes and whose coloured entries were trained; "
                "title: the learned diffusion number lambda and coefficients k per axis.",
            )
        )
    if case is not None:
        z = display_slice(case, cfg, scope)
        image, label = case_volume(case)
        x = layer_input(image, predictor.spec, foreground_centre(label, z) or [s // 2 for s in image.shape[1:-1]] + [z])
        device = next(model.parameters()).device
        feats = model.features_around(x.to(device))
        rotate = get_format(cfg.data.format).display_rotate
        where = (
            f"slice {z}"
            if predictor.spec.mode == "slices"
            else (
                f"a {'x'.join(map(str, x.shape[2:]))} crop centred, as far as the volume allows, on the tumour of slice {z}"
                if predictor.spec.mode == "patches"
                else "the whole volume"
            )
        )
        for position, (before, after) in feats.items():
            rel = f"figures/pde_features_{file_part(name)}_{file_part(position)}.png"
            plot_pde_features(
                before[0],
                after[0],
                out / rel,
                rotate=rotate,
                title=f"{name} (seed {seed0}), PDE layer at {position}, on {case.case_id} ({where})",
            )
            figures.append(
                (
                    rel,
                    f"Features before and after the PDE layer of {name} at position {position} on {case.case_id} "
                    f"({where}; seed {seed0}): the channels the layer changes most, before, after (one grey "
                    "scale per channel) and the difference.",
                )
            )
    summaries = {str(seed): pde_layer_summary(model_from_checkpoint(path)) for seed, path in best.items()}
    return figures, summaries


def cell_figures(out: Path, predictors: dict[str, Predictor], case: CachedCase, seed: int) -> Figures:
    """One figure per model on one 2D object image (microscopy): boundary errors at 2 px and
    the PDE penalty maps of its foreground probability (each model predicts here,
    :func:`pdeseg.inference.evaluate.draw_cell_case`; :mod:`pdeseg.viz` draws the arrays)."""
    from pdeseg.inference.evaluate import draw_cell_case
    from pdeseg.viz.pde_effect import file_part

    figures = []
    for name, predictor in predictors.items():
        rel = f"figures/cells_{file_part(name)}.png"
        draw_cell_case(predictor, case, out / rel, title=f"{case.case_id}{f', {case.domain}' if case.domain else ''}: {name} (seed {seed})")
        figures.append(
            (
                rel,
                f"{name} on {case.case_id} (seed {seed}): the image; boundary errors of the foreground at "
                "2 px (green matched, red false, blue missed, yellow the predicted cells' outlines); the "
                "foreground probability p = 1 - P(background); the phase-field energy density and the "
                "reaction-diffusion residual of p (options of the run's loss terms, else the defaults).",
            )
        )
    return figures


def compare_figures(out: Path, cfg: ExperimentConfig, scope: str, runs: dict[str, dict[int, Path]], shown: list[CachedCase]) -> Figures:
    """Loss curves, segmentation panel, the cable block's effect and coefficients (PDE-UNet)
    and the PDE layers' stencils, moments and features (PDE3D-UNet) of a comparison.

    Args:
        out: the comparison folder (figures go to ``figures/``; ``cable_coefficients.json`` and
            ``pde_layers.json`` beside them).
        runs: each model's run folder per seed (models in the table's order).
        shown: the cases drawn (the first test cases).
    """
    from pdeseg.viz.figures import plot_loss_curves, plot_segmentation_panel
    from pdeseg.viz.pde_effect import cable_block, pde_layers, plot_cable_coefficients, plot_cable_effect

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    names = list(runs)
    seed0 = min(s for seeds in runs.values() for s in seeds)
    figures = []
    histories = {n: load_checkpoint(runs[n][seed0] / "last.pt")["training"]["history"] for n in names}
    plot_loss_curves(histories, fig_dir / "loss_curves.png")
    figures.append(("figures/loss_curves.png", f"Training and validation loss per epoch (seed {seed0}); cf. paper 000 Fig. 4."))

    predictors = {n: Predictor.from_checkpoint(runs[n][seed0] / "best.pt", InferenceOptions(precision=cfg.train.precision)) for n in names}
    rows = []
    mods = list(cfg.data.modalities)
    shown_channel = mods.index("flair") if "flair" in mods else 0
    for case in shown:
        z = display_slice(case, cfg, scope)
        image = np.asarray(case.image[z], dtype=np.float32)  # (C, X, Y)
        preds = {n: slice_prediction(p, case, z) for n, p in predictors.items()}
        rows.append(
            {
                "case": f"{case.case_id} z={z}",
                "image": image[shown_channel],
                "channel": mods[shown_channel],
                "truth": np.asarray(case.label[z]),
                "predictions": preds,
            }
        )
    fmt = get_format(cfg.data.format)
    if rows:
        class_names = list(next(iter(predictors.values())).spec.class_names)  # one data set: the same for all
        plot_segmentation_panel(rows, fig_dir / "segmentations.png", class_names, fmt.display_rotate)
        figures.append(
            (
                "figures/segmentations.png",
                f"Test cases: {mods[shown_channel]}, ground truth and each model's prediction (seed {seed0}); cf. Fig. 5.",
            )
        )
    if shown and fmt.object_metrics:
        figures += cell_figures(out, predictors, shown[0], seed0)

    # dispatch on what the model's ``pde`` is: PDE-UNet's cable block, or PDE3D-UNet's PDE layers
    cable_models = [n for n, p in predictors.items() if cable_block(p.model) is not None]
    if cable_models and rows:
        name = cable_models[0]
        case = shown[0]
        z = display_slice(case, cfg, scope)
        block = cable_block(predictors[name].model).cpu()
        image = np.asarray(case.image[z], dtype=np.float32)
        plot_cable_effect(image, cable_effect(block, image), block.physical(), list(cfg.data.modalities), fig_dir / "cable_effect.png")
        figures.append(
            (
                "figures/cable_effect.png",
                f"The trained cable block of {name} on {case.case_id}, slice {z}: input, output and difference per modality; cf. Fig. 6.",
            )
        )
        coeffs = {seed: cable_block(model_from_checkpoint(run_dir / "best.pt")).physical() for seed, run_dir in runs[name].items()}
        plot_cable_coefficients(coeffs, list(cfg.data.modalities), fig_dir / "cable_coefficients.png")
        figures.append(("figures/cable_coefficients.png", f"Learned Phi, Psi and tau of {name} per modality, one marker per seed."))
        (out / "cable_coefficients.json").write_text(json.dumps({str(k): v for k, v in coeffs.items()}, indent=1))
    summaries = {}
    for name, p in predictors.items():
        if pde_layers(p.model):
            best = {seed: run_dir / "best.pt" for seed, run_dir in runs[name].items()}
            more, summaries[name] = pde_layer_figures(out, cfg, scope, name, p, shown[0] if shown else None, seed0, best)
            figures += more
    if summaries:  # {model: {seed: {position: layer summary}}}
        (out / "pde_layers.json").write_text(json.dumps(summaries, indent=1))
    return figures


def ablation_figures(
    out: Path,
    cfg: ExperimentConfig,
    histories: dict[str, list[list[dict[str, Any]]]],
    best: str,
    best_checkpoint: Path,
    cases: list[CachedCase],
) -> Figures:
    """Per-epoch curves of the best variant (paper 003 Fig. 2), validation Dice of every
    variant, and class-by-class masks of the best variant on test cases (Fig. 3).

    Args:
        histories: each variant's per-epoch history per seed (seeds in order).
        best: the best variant's name; best_checkpoint: its first seed's ``best.pt``.
        cases: the cases drawn (the first three are shown).
    """
    from pdeseg.viz.figures import plot_class_masks, plot_epoch_metrics, plot_variant_curves

    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures = []
    plot_epoch_metrics(histories[best][0], fig_dir / "best_curves.png", title=best)
    figures.append(
        (
            "figures/best_curves.png",
            f"Best variant ({best}), first seed: loss, pixel accuracy, mean IoU and "
            "Dice per epoch on train and validation; cf. paper 003 Fig. 2.",
        )
    )
    plot_variant_curves(histories, fig_dir / "variants_val_dice.png")
    figures.append(("figures/variants_val_dice.png", "Validation Dice per epoch of every variant (mean over seeds)."))
    fmt = get_format(cfg.data.format)
    predictor = Predictor.from_checkpoint(best_checkpoint, InferenceOptions(precision=cfg.train.precision))
    rows = [ablation_panel(predictor, case, cfg) for case in cases[:3]]
    plot_class_masks(rows, predictor.spec.class_names, fig_dir / "class_masks.png", fmt.display_rotate)
    figures.append(
        (
            "figures/class_masks.png",
            f"Best variant on test cases: {(cfg.data.modalities or ['channel 0'])[0]}, manual mask, each predicted "
            "class, and the composite; cf. paper 003 Fig. 3.",
        )
    )
    return figures


def ablation_panel(predictor: Predictor, case: CachedCase, cfg: ExperimentConfig) -> dict[str, Any]:
    """The selected slice of ``case`` with the most tumour, fitted as in training, with its
    prediction (a volumetric model segments the whole volume; its slice is shown)."""
    if predictor.spec.mode != "slices" or predictor.spec.context_slices or list(predictor.spec.slice_axes) != [2]:
        z = display_slice(case, cfg, "volume")
        image = np.asarray(case.image[z], dtype=np.float32)
        return {
            "case": f"{case.case_id} z={z}",
            "image": image[0],
            "truth": np.asarray(case.label[z]),
            "prediction": slice_prediction(predictor, case, z),
        }
    ds = evaluation_slices([case], predictor.spec)
    label = np.asarray(case.label)
    z = max((z for _, _, z in ds.items), key=lambda z: int((label[z] > 0).sum()))
    item = ds[[z for _, _, z in ds.items].index(z)]
    image = item["image"].numpy()
    classes = predictor.predict_volume(image[..., None])[..., 0]
    return {"case": f"{case.case_id} z={z}", "image": image[0], "truth": item["label"].numpy(), "prediction": classes}
