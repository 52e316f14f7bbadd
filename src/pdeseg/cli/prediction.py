"""The commands that run a model on images, each parser beside its handler: ``evaluate`` (score a
checkpoint or an ensemble on a split or folder) and ``predict`` (segment a folder, a file, DICOM, or an
OME-TIFF / OME-Zarr image tile by tile) and its OME options; the options both share are in
:mod:`pdeseg.cli.inference_options`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pdeseg.cli.inference_options import _add_checkpoints, _add_inference_options, _inference_options
from pdeseg.cli.options import _diameter, _distance_mm, _non_negative_int, _positive_int

log = logging.getLogger("pdeseg")


def add_evaluate(sub) -> None:
    s = sub.add_parser("evaluate", help="score a checkpoint (or an ensemble) on a split or folder")
    _add_checkpoints(s, " (then with --split all --data FOLDER)", pretrained=True)
    s.add_argument("--data", help="BraTS folder (default: the one the model was trained on)")
    s.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    s.add_argument(
        "--scope", default="volume", choices=["volume", "slices"], help="volume: whole volumes in 3D; slices: the config's slice selection"
    )
    s.add_argument(
        "--grid",
        choices=["input", "cache"],
        default=None,
        help="input (default in volume scope): each case segmented as predict writes it and scored against "
        "its original label on its own grid and spacing; cache: on the normalised, cropped and resampled "
        "cache grid that training validates on (faster where data.target_spacing resamples; slices "
        "scope always scores there)",
    )
    s.add_argument(
        "--diameter",
        type=_diameter,
        metavar="PX|auto|off",
        help="cell models, input grid: the objects' diameter in pixels, as predict --diameter (each image "
        "rescaled to the training object size and the cells mapped back); default as predict: auto "
        "for models that state their training object size, off for others",
    )
    s.add_argument("--hd95", action="store_true", help="also compute HD95 (mm) per region (slower)")
    s.add_argument(
        "--surface-tolerance",
        type=_distance_mm,
        metavar="MM",
        help="also compute the surface Dice per region at this tolerance in mm (slower)",
    )
    s.add_argument("--out", help="output folder (default: next to the checkpoint)")
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=["auto", "32", "bf16-mixed"])
    s.add_argument("--save-predictions", action="store_true", help="also write <case>_seg.nii.gz (or per-slice masks)")
    s.add_argument(
        "--figures",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="overlays (truth red, prediction green) and class-mask figure for the first N cases",
    )
    s.add_argument("--figure-cases", metavar="ID,ID", help="the same figures for these cases (comma-separated ids)")
    _add_inference_options(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pdeseg.inference.evaluate import evaluate_checkpoint, summary_markdown

    if args.model is not None:  # a shipped model: its weights; results in the current folder, never the package's
        from pdeseg.pretrained import weights_of

        args.checkpoint = [str(weights_of(args.model))]
        out = args.out or f"eval_{args.model}_{args.split}_{args.scope}"
    else:
        first = Path(args.checkpoint[0])  # results go next to the checkpoint, or into the folder of runs
        out = args.out or str((first if first.is_dir() else first.parent) / f"eval_{args.split}_{args.scope}")
    summary = evaluate_checkpoint(
        args.checkpoint,
        out,
        _inference_options(args),
        data_root=args.data,
        split=args.split,
        scope=args.scope,
        with_hd95=args.hd95,
        save_predictions=args.save_predictions,
        progress=not args.no_progress,
        figures=args.figures,
        figure_cases=args.figure_cases.split(",") if args.figure_cases else None,
        surface_tolerance_mm=args.surface_tolerance,
        grid=args.grid,
    )
    print(summary_markdown(summary))
    print(f"per-case metrics: {Path(out) / 'per_case.csv'}\nsummary: {Path(out) / 'summary.json'}")
    if args.figures or args.figure_cases:
        print(f"figures: {Path(out) / 'figures'}")
    return 0


def add_predict(sub) -> None:
    from pdeseg.data.formats import FORMATS  # not the registry: parsing arguments needs no torch

    s = sub.add_parser("predict", help="segment volumes into <case>_seg.nii.gz, or slices into mask images")
    _add_checkpoints(s, pretrained=True)
    s.add_argument(
        "--diameter",
        type=_diameter,
        metavar="PX|auto|off",
        help="cell models: the objects' diameter in pixels; each image is rescaled so that its objects have "
        "the size the model was trained at, and the cells mapped back. auto: estimated in each image "
        "(the default for models that state their training object size, such as the shipped ones); "
        "off: segment at the image's own scale (the default for other checkpoints)",
    )
    s.add_argument("--input", required=True, help="a case folder or a folder of case folders")
    s.add_argument("--output", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=["auto", "32", "bf16-mixed"])
    s.add_argument(
        "--label-convention",
        choices=FORMATS["brats"].write_options["convention"],
        help="BraTS labels to write (default: the input's: ET=4, or ET=3 for BraTS-GLI 2023 data)",
    )
    s.add_argument("--batch-size", type=_positive_int, default=16, help="slices or windows per forward pass (>= 1)")
    s.add_argument(
        "--mask-format",
        choices=FORMATS["lgg"].write_options["mask_format"],
        help="per-slice masks for slice data sets such as LGG (default png; 0/255 for binary tasks)",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that an earlier pdeseg predict wrote (they carry its marker); a file "
        "pdeseg did not write, and an input case's own files, are never replaced",
    )
    s.add_argument(
        "--shard",
        metavar="I/N",
        help="segment only shard I of N (0 <= I < N) of the inputs: round robin over the sorted names, so N "
        "copies (e.g. a SLURM array, --shard $SLURM_ARRAY_TASK_ID/N) share a folder with no file twice",
    )
    _add_ome_options(s)
    s.add_argument(
        "--input-format",
        choices=["dicom"],
        help="read --input as DICOM series (default: DICOM when it holds DICOM files, else the model's format)",
    )
    s.add_argument(
        "--series",
        action="append",
        metavar="CHANNEL=PATTERN[,PATTERN]",
        help="DICOM, several channels: SeriesDescription glob patterns (case-insensitive) of a channel's series "
        "in each study (repeat per channel; tried before the built-in rules for the BraTS channels flair, t1, t1ce, "
        "t2, which still apply)",
    )
    s.add_argument(
        "--gantry-tilt",
        choices=FORMATS["dicom"].read_options["gantry_tilt"],
        help="DICOM: refuse a gantry-tilted stack (default) or resample it onto an orthogonal grid",
    )
    s.add_argument(
        "--output-format",
        choices=FORMATS["dicom"].write_options["output_format"],
        help="DICOM input: write a DICOM-SEG per case (default), the NIfTI label map, or both",
    )
    s.add_argument(
        "--seg-type",
        choices=FORMATS["dicom"].write_options["seg_type"],
        help="DICOM-SEG: binary masks (default) or fractional class probabilities",
    )
    _add_inference_options(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit 0 when every case was written, 1 when some were skipped (bad input files) and
    others written, 2 when none could be written (or the run was refused)."""
    from pdeseg.data.detect import route_input
    from pdeseg.inference.folder import predict_folder
    from pdeseg.inference.shard import parse_shard

    shard = parse_shard(args.shard)
    if args.model is not None:  # a shipped model: its weights file (an unknown or missing one exits 2, named)
        from pdeseg.pretrained import weights_of

        args.checkpoint = [str(weights_of(args.model))]
    if args.input_format is None and Path(args.input).expanduser().exists() and route_input(args.input).format == "ome":
        return _predict_ome(args, shard)
    ome_set = [f"--{k.replace('_', '-')}" for k in ("channel", "level", "dask_workers", "dask_scheduler") if getattr(args, k) is not None]
    if ome_set:
        from pdeseg.errors import ConfigError

        raise ConfigError(f"{ome_set[0]} applies to OME-TIFF / OME-Zarr inputs; {args.input} holds none")
    dicom_read = {"series": args.series, "gantry_tilt": args.gantry_tilt}
    report = predict_folder(
        args.checkpoint,
        args.input,
        args.output,
        _inference_options(args),
        progress=not args.no_progress,
        overwrite=args.overwrite,
        shard=shard,
        convention=args.label_convention,
        mask_format=args.mask_format,
        input_format=args.input_format,
        read_options=dicom_read if any(v is not None for v in dicom_read.values()) else None,
        output_format=args.output_format,
        seg_type=args.seg_type,
    )
    return _prediction_exit(report, shard, "case", f"to {Path(args.output).resolve()}")


def _prediction_exit(report, shard, unit: str, where: str) -> int:
    """Exit code of a prediction run (and its last lines): 0 every ``unit`` written (or a shard
    that holds none), 1 some skipped beside written ones, 2 nothing written."""
    if shard is not None and not report.written and not report.skipped:
        print(f"shard {shard[0]}/{shard[1]}: no {unit} falls to this shard")
        return 0
    if not report.written:
        log.error("no segmentation written: every %s was skipped (%s)", unit, report.summary())
        return 2
    print(f"wrote {len(report.written)} segmentation(s) {where}")
    if report.skipped:
        print(
            f"skipped {len(report.skipped)} {unit}(s) that could not be read, segmented or written: "
            f"{', '.join(report.skipped)} (reasons logged above)"
        )
        return 1
    return 0


def _predict_ome(args: argparse.Namespace, shard) -> int:
    from pdeseg.inference.ome_predict import predict_ome

    report = predict_ome(
        args.checkpoint,
        args.input,
        args.output,
        _inference_options(args),
        channels=args.channel,
        level=args.level,
        output=args.ome_output,
        labels_name=args.labels_name,
        tile=args.tile,
        halo=args.halo,
        shard=shard,
        overwrite=args.overwrite,
        dask_workers=args.dask_workers,
        dask_address=args.dask_scheduler,
        progress=not args.no_progress,
    )
    return _prediction_exit(report, shard, "image", ": " + ", ".join(str(p) for p in report.written))


def _add_ome_options(s: argparse.ArgumentParser) -> None:
    """OME-TIFF / OME-Zarr inputs: segmented tile by tile, in one process or on Dask."""
    g = s.add_argument_group("OME-TIFF / OME-Zarr inputs (segmented tile by tile in bounded memory; 2D slice models)")
    g.add_argument(
        "--channel",
        nargs="+",
        metavar="NAME",
        help="the image's channel(s) to read, by name, one per model channel (default: by the model's channel names, or the only channel)",
    )
    g.add_argument(
        "--level",
        type=_non_negative_int,
        metavar="N",
        help="pyramid level to segment (default: the coarsest as fine as the model's training pixel size, else 0)",
    )
    g.add_argument(
        "--ome-output",
        choices=("auto", "tiff", "zarr"),
        default="auto",
        help="zarr: a labels group inside the input OME-Zarr; tiff: <output>/<image>_instances.ome.tif "
        "(default: zarr for OME-Zarr inputs, tiff for OME-TIFF)",
    )
    g.add_argument("--labels-name", default="pdeseg", help="name of the labels group in an OME-Zarr (default pdeseg)")
    g.add_argument("--tile", type=_positive_int, default=1024, metavar="PX", help="tile core size (default 1024)")
    g.add_argument(
        "--halo",
        type=_non_negative_int,
        default=64,
        metavar="PX",
        help="context segmented around each tile; cells must fit in it (default 64)",
    )
    g.add_argument("--dask-workers", type=_positive_int, metavar="N", help="run the tiles on a local Dask cluster of N worker processes")
    g.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run the tiles on this dask.distributed scheduler (tcp://host:8786); workers must see the files",
    )
