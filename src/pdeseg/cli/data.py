"""The data-set commands, each parser beside its handler: ``phantom`` (write a synthetic data set),
``fingerprint`` (measure one) and ``export-nnunet`` (write one as an nnU-Net v2 raw folder with
pdeseg's split).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdeseg.cli.options import (
    _add_format_options,
    _check_output_file,
    _format_options,
    _non_negative_int,
    _positive_int,
    _spacing_mm,
)


def add_phantom(sub) -> None:
    s = sub.add_parser(
        "phantom", help="write a synthetic data set (BraTS-like, LGG-like, an MSD-layout MRI or CT task, or cell images with COCO json)"
    )
    s.add_argument("--out", required=True)
    s.add_argument("--cases", type=_positive_int, default=12, help="cases (livecell: images per cell type)")
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument(
        "--shape",
        type=_positive_int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="volume size (default 128 128 48; msd: 36 48 36 for mri, 96 96 32 for ct)",
    )
    s.add_argument(
        "--format",
        default="brats",
        choices=["brats", "lgg", "msd", "livecell"],
        help="the phantom's layout: BraTS NIfTI folders, LGG kaggle_3m TIFF slices, an MSD / nnU-Net task "
        "folder, or LIVECell-style cell images (3 cell types) with COCO json",
    )
    s.add_argument(
        "--kind",
        default="mri",
        choices=["mri", "ct"],
        help="msd: a hippocampus-like MRI task, or a liver-CT-like task in Hounsfield units on an anisotropic grid",
    )
    s.add_argument("--layout", default="msd", choices=["msd", "nnunet"], help="msd: MSD (nnU-Net v1) dataset.json; nnunet: nnU-Net v2")
    s.add_argument(
        "--spacing",
        type=_spacing_mm,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="msd: voxel size in mm (default 1 1 1 for mri, 0.8 0.8 2.5 for ct)",
    )
    s.set_defaults(func=cmd_phantom)


def cmd_phantom(args: argparse.Namespace) -> int:
    from pdeseg.errors import ConfigError
    from pdeseg.data.files import check_output_folder
    from pdeseg.data.phantoms.brats import write_lgg_phantom_dataset, write_phantom_dataset

    check_output_folder(args.out, "--out")  # not below a file, writable: before any case is made

    if args.format == "msd":
        from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

        try:
            out = write_msd_phantom_dataset(
                args.out, n_cases=args.cases, seed=args.seed, kind=args.kind, layout=args.layout, shape=args.shape, spacing=args.spacing
            )
        except ValueError as exc:
            raise ConfigError(f"phantom: {exc}") from None
        print(f"wrote {args.cases} labelled synthetic {args.kind.upper()} cases (+2 in imagesTs), {args.layout} layout, to {out.resolve()}")
        return 0
    if args.kind != "mri" or args.layout != "msd" or args.spacing:
        raise ConfigError("phantom: --kind, --layout and --spacing apply to --format msd only")
    if args.format == "livecell":
        from pdeseg.data.phantoms.cells import CELL_TYPES, write_cell_phantom

        if args.shape is not None:
            raise ConfigError("phantom: --shape is a volume size; the cell phantom's images are 128x128")
        try:
            out = write_cell_phantom(args.out, n_per_type=args.cases, seed=args.seed)
        except ValueError as exc:
            raise ConfigError(f"phantom: {exc}") from None
        print(
            f"wrote {args.cases} synthetic cell images per type ({', '.join(CELL_TYPES)}) with LIVECell-style COCO "
            f"annotations to {out.resolve()}"
        )
        return 0
    args.shape = args.shape or [128, 128, 48]
    write = write_lgg_phantom_dataset if args.format == "lgg" else write_phantom_dataset
    try:
        paths = write(args.out, n_cases=args.cases, seed=args.seed, shape=tuple(args.shape))
    except ValueError as exc:
        raise ConfigError(f"phantom: {exc}") from None
    if args.format == "lgg":
        print(f"wrote {len(paths)} synthetic LGG patients (kaggle_3m TIFF layout) to {(Path(args.out) / 'kaggle_3m').resolve()}")
        return 0
    print(f"wrote {len(paths)} synthetic BraTS-like cases to {Path(args.out).resolve()}")
    return 0


def add_fingerprint(sub) -> None:
    s = sub.add_parser("fingerprint", help="measure a data set: shapes, spacings, intensities, classes, objects")
    s.add_argument("--data", required=True, help="data folder (any format pdeseg reads; detected from its layout)")
    _add_format_options(s, plan=False)
    s.add_argument("--refresh", action="store_true", help="measure again instead of reading the cached fingerprint")
    s.add_argument("--json", metavar="PATH", help="also write the fingerprint as JSON (outside the data set)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier --json of pdeseg fingerprint")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_fingerprint)


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from pdeseg import __version__
    from pdeseg.data.detect import detect_format
    from pdeseg.data.fingerprint import fingerprint_dataset

    _check_output_file(args.json, args, "--json")
    fmt = args.format or detect_format(args.data)
    fp = fingerprint_dataset(
        fmt, args.data, None, _format_options(args), args.cache_dir, progress=not args.no_progress, refresh=args.refresh
    )
    print(fp.summary())
    if args.json:
        import json

        from pdeseg.data.files import write_atomically
        from pdeseg.errors import RunFolderError

        data = {"written_by": f"pdeseg {__version__} fingerprint", **fp.to_dict()}
        try:
            write_atomically(Path(args.json).expanduser(), lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
        except OSError as exc:
            raise RunFolderError(f"--json {args.json}: cannot write ({exc.strerror or exc})") from None
        print(f"fingerprint: {Path(args.json).expanduser().resolve()}")
    return 0


def add_export_nnunet(sub) -> None:
    from pdeseg.data.formats import FORMATS  # not the registry: parsing arguments needs no torch

    s = sub.add_parser(
        "export-nnunet",
        help="write a data set as an nnU-Net v2 raw folder (dataset.json, imagesTr, labelsTr) with pdeseg's split as splits_final.json",
    )
    s.add_argument("--data", required=True, help="data folder (any format pdeseg reads)")
    s.add_argument("--out", required=True, metavar="nnUNet_raw/DatasetNNN_Name", help="the folder to write")
    s.add_argument(
        "--config", help="take format, channels and split from this config (default: the plan's split, 0.7/0.1/0.2 by case, seed 0)"
    )
    s.add_argument("--format", choices=sorted(FORMATS), help="the data format (default: detected from the layout)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing export")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_export_nnunet)


def cmd_export_nnunet(args: argparse.Namespace) -> int:
    from pdeseg.config import load_config
    from pdeseg.config import DataConfig, SplitConfig
    from pdeseg.data.detect import detect_format
    from pdeseg.data.export_nnunet import export_nnunet
    from pdeseg.data.formats import get_format
    from pdeseg.data.pipeline.prepare import draw_split
    from pdeseg.data.pipeline.splits import DEFAULT_FRACTIONS

    if args.config:
        if args.format:
            from pdeseg.errors import ConfigError

            raise ConfigError("--format with --config: the config's data.format decides")
        d = load_config(args.config, [f"data.root={args.data}"]).data
    else:
        d = DataConfig(
            root=args.data, format=args.format or detect_format(args.data), split=SplitConfig(fractions=list(DEFAULT_FRACTIONS), seed=0)
        )
    fmt = get_format(d.format)
    fmt.check_read_options(d.format_options)
    info = fmt.dataset_info(d.root, d.format_options)
    modalities = fmt.channels(info, d.modalities)
    split = draw_split(d, fmt.find_cases(d.root, modalities, True, **d.format_options))
    fmt_name, options = d.format, dict(d.format_options)
    report = export_nnunet(
        fmt_name, args.data, args.out, split, modalities, options, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(
        f"wrote {report.num_cases} cases ({len(report.channel_names)} channel(s), {len(report.labels)} labels) to "
        f"{Path(report.out_dir).resolve()}"
        + (f"; {len(report.renamed)} case ids renamed for nnU-Net (see dataset.json)" if report.renamed else "")
    )
    if report.splits_file:
        print(
            f"pdeseg's split: {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test cases; "
            f"copy {report.splits_file} to $nnUNet_preprocessed/{Path(report.out_dir).name}/ after "
            "nnUNetv2_plan_and_preprocess and train fold 0 to use it"
        )
    return 0
