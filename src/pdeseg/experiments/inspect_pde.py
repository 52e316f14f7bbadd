"""``pdeseg inspect``: what the PDE modules of one trained checkpoint learned.

For a PDE3D-UNet (paper 001), per PDE layer: its learned stencils beside their moment
matrices (``pde_kernels_<position>.png``) and, when an input case is given, its features
before and after the layer on that case (``pde_features_<position>.png``); the layers'
coefficients and moments in ``pde_layers.json``. For a PDE-UNet (paper 000): the cable
block's coefficients (``cable_coefficients.json``) and, with an input, its effect on each
modality (``cable_effect.png``).

The input is read through the checkpoint's data format and preprocessed exactly as for
prediction (:meth:`~pdeseg.inference.predict.Predictor.preprocess`); the features are shown
on what the model would see: the middle slice (slice models), a training-patch-sized crop at
the volume's centre (patch models) or the whole volume.

Files of those names in the output folder are replaced.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pdeseg.checkpoint import load_checkpoint
from pdeseg.data.case import LoadedCase
from pdeseg.errors import CheckpointError, DataError, RunFolderError
from pdeseg.inference.options import InferenceOptions
from pdeseg.inference.predict import Predictor

log = logging.getLogger(__name__)


def read_case(predictor: Predictor, input_path: str | Path, case_id: str | None = None) -> LoadedCase:
    """One case (images only) of a case folder or a folder of cases, in the checkpoint's format.

    Args:
        input_path: a case folder or a folder of cases.
        case_id: which case of a folder (default: the first).

    Raises:
        DataError: the folder is missing or holds no readable case, or has no case ``case_id``.
    """
    skipped: dict[str, str] = {}
    cases = predictor.format.find_cases(input_path, predictor.modalities, require_label=False, skipped=skipped)
    if not cases:
        reasons = "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in skipped.items())
        raise DataError(f"--input {input_path}: no readable {predictor.format.name} case" + (f" ({reasons})" if reasons else ""))
    if case_id is not None:
        chosen = [c for c in cases if c.case_id == case_id]
        if not chosen:
            shown = ", ".join(c.case_id for c in cases[:10]) + (", ..." if len(cases) > 10 else "")
            raise DataError(f"--case {case_id}: not among the cases of {input_path} ({shown})")
        case = chosen[0]
    else:
        case = cases[0]
        if len(cases) > 1:
            log.info("%s holds %d cases; showing %s (choose another with --case)", input_path, len(cases), case.case_id)
    return case.load(predictor.modalities, with_label=False)


def _out_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(f"--out {out}: a part of the path is a file") from None
    except OSError as exc:
        raise RunFolderError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    return out


def inspect_checkpoint(checkpoint: str | Path, out_dir: str | Path, input_path: str | Path | None = None,
                       case_id: str | None = None, device: str = "auto", channels: int = 4) -> list[Path]:
    """Figures and a JSON summary of the PDE layers (or the cable block) of a checkpoint.

    Args:
        checkpoint: a pdeseg checkpoint of a model with PDE layers (``pde3d_unet``) or a
            cable block (``pde_unet``).
        out_dir: output folder (created; files of the same names are replaced).
        input_path: a case folder or a folder of cases to show the features on (optional).
        case_id: which case of ``input_path`` (default: the first).
        device: where to run the model.
        channels: feature channels shown per layer (the most changed).

    Returns:
        the files written.

    Raises:
        CheckpointError: unreadable checkpoint, or a model without PDE layers or cable block.
        DataError: the input cannot be found or read.
        RunFolderError: the output folder cannot be created.
        DeviceError: ``device`` is not available.
    """
    from pdeseg.experiments.figures import cable_effect
    from pdeseg.viz.pde_effect import (cable_block, file_part, layer_input, pde_layer_summary, pde_layers, plot_cable_effect,
                                       plot_pde_features, plot_pde_kernels)

    path = Path(checkpoint)
    predictor = Predictor.from_checkpoint(path, InferenceOptions(device=device, precision="32"))
    model, name = predictor.model, predictor.name
    layers, cable = pde_layers(model), cable_block(model)
    if not layers and cable is None:
        raise CheckpointError(f"{path}: model {name!r} has no PDE layers to inspect (pde3d_unet's PDE layers or "
                              "pde_unet's cable block)")
    image = None
    if input_path is not None:  # read the input before anything is written
        loaded = read_case(predictor, input_path, case_id)
        image = predictor.preprocess(loaded)  # (C, X, Y, Z)
        shown_case = loaded.case.case_id
    out = _out_folder(out_dir)
    epoch = (load_checkpoint(path).get("training") or {}).get("epoch")
    head = {"checkpoint": str(path.resolve()), "model": name, "epoch": epoch}
    written: list[Path] = []
    if layers:
        for position, layer in layers.items():
            written.append(plot_pde_kernels(layer, out / f"pde_kernels_{file_part(position)}.png",
                                            title=f"{name}, PDE layer at {position}"))
        summary = out / "pde_layers.json"
        summary.write_text(json.dumps({**head, "layers": pde_layer_summary(model)}, indent=1))
        written.append(summary)
        if image is not None:
            x = layer_input(image, predictor.spec)
            feats = model.features_around(x.to(predictor.device))
            where = "middle slice" if predictor.spec.mode == "slices" else (
                f"central {'x'.join(map(str, x.shape[2:]))} crop" if predictor.spec.mode == "patches" else "whole volume")
            for position, (before, after) in feats.items():
                written.append(plot_pde_features(before[0], after[0], out / f"pde_features_{file_part(position)}.png",
                                                 channels, predictor.format.display_rotate,
                                                 title=f"{name}, PDE layer at {position}, on {shown_case} ({where})"))
    if cable is not None:
        coeffs = out / "cable_coefficients.json"
        coeffs.write_text(json.dumps({**head, "modalities": predictor.modalities, "coefficients": cable.physical()}, indent=1))
        written.append(coeffs)
        if image is not None:
            x = layer_input(image, predictor.spec)[0].numpy()  # (C, H, W): the slice the model sees
            block = cable.cpu().float()
            written.append(plot_cable_effect(x, cable_effect(block, x), block.physical(), predictor.modalities,
                                             out / "cable_effect.png"))
    return written

