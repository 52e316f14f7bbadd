"""Command line: ``pdeseg {demo,compare,ablate,robustness,phantom,train,evaluate,predict,inspect,models}``.

A thin layer over the Python API; every command logs progress to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

log = logging.getLogger("pdeseg")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def cmd_models(args: argparse.Namespace) -> int:
    from pdeseg import pretrained

    if args.name is not None:  # one shipped model's card
        pretrained.entry(args.name)
        installed = pretrained.PRETRAINED[args.name].installed
        print(pretrained.card_text(pretrained.read_card(args.name)), end="")
        print(f"\nweights: {pretrained.PRETRAINED[args.name].weights}" if installed
              else f"\nweights: not installed ({pretrained.not_installed_message(args.name)})")
        return 0
    print("pretrained models (predict --model NAME, pdeseg.load(NAME), train --init NAME; pdeseg models NAME shows the card):")
    for name, e in pretrained.PRETRAINED.items():
        try:
            summary = pretrained.card_summary(pretrained.read_card(name))
        except pretrained.CheckpointError as exc:
            summary = f"no readable card ({exc})"
        state = "installed" if e.installed else "weights not installed"
        print(f"  {name:<12} [{state}] {e.description}\n  {'':<12} {summary}")
    print()
    return _list_architectures()


def _list_architectures() -> int:
    from pdeseg.data.formats import FORMATS
    from pdeseg.losses.registry import LOSSES
    from pdeseg.nn.models import MODELS, build_model, count_parameters

    width = max(12, *(len(name) for name in MODELS))
    print(f"{'model':<{width}} {'dims':<6} {'parameters':>12}  description (parameters: default widths, 2D unless "
          "3D-only, 4 modalities in, 4 classes out)")
    for name, entry in MODELS.items():
        dims = 2 if 2 in entry.dims else entry.dims[0]
        try:
            n = f"{count_parameters(build_model(name, spatial_dims=dims, in_channels=4, out_channels=4)):,}"
        except ImportError as exc:  # an optional dependency of one baseline is missing
            n, entry_note = "n/a", f" [{exc}]"
        else:
            entry_note = ""
        print(f"{name:<{width}} {','.join(map(str, entry.dims)):<6} {n:>12}  {entry.description}{entry_note}")
    print("\nloss terms (loss.terms: [{name, weight, ...options}]; any term may add start_epoch, ramp_epochs: "
          "a warm-up schedule of its weight):")
    loss_width = max(10, *(len(name) for name in LOSSES))
    for name, entry in LOSSES.items():
        print(f"  {name:<{loss_width}} {entry.description}")
    print("\ndata formats (data.format):")
    for name, fmt in FORMATS.items():
        print(f"  {name:<11} {fmt.description}")
    return 0


def cmd_phantom(args: argparse.Namespace) -> int:
    from pdeseg.errors import ConfigError
    from pdeseg.data.files import check_output_folder
    from pdeseg.data.phantoms.brats import write_lgg_phantom_dataset, write_phantom_dataset

    check_output_folder(args.out, "--out")  # not below a file, writable: before any case is made

    if args.format == "msd":
        from pdeseg.data.phantoms.msd import write_msd_phantom_dataset

        try:
            out = write_msd_phantom_dataset(args.out, n_cases=args.cases, seed=args.seed, kind=args.kind, layout=args.layout,
                                            shape=args.shape, spacing=args.spacing)
        except ValueError as exc:
            raise ConfigError(f"phantom: {exc}") from None
        print(f"wrote {args.cases} labelled synthetic {args.kind.upper()} cases (+2 in imagesTs), {args.layout} layout, "
              f"to {out.resolve()}")
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
        print(f"wrote {args.cases} synthetic cell images per type ({', '.join(CELL_TYPES)}) with LIVECell-style COCO "
              f"annotations to {out.resolve()}")
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


def _load_cfg(args: argparse.Namespace):
    from pdeseg.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data}")
    if getattr(args, "out", None) and args.command == "train":
        overrides.append(f"output_dir={args.out}")
    return load_config(args.config, overrides)


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


def _plan_args(args: argparse.Namespace):
    """The plan of ``pdeseg plan`` and ``train --data`` without a config (see :mod:`pdeseg.planning`)."""
    from pdeseg.planning import plan_dataset

    options = _format_options(args)
    return plan_dataset(args.data, args.format, args.device or "auto", args.time_budget or "1h", options or None,
                        cache_dir=args.cache_dir, progress=not args.no_progress)


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


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from pdeseg import __version__
    from pdeseg.data.detect import detect_format
    from pdeseg.data.fingerprint import fingerprint_dataset

    _check_output_file(args.json, args, "--json")
    fmt = args.format or detect_format(args.data)
    fp = fingerprint_dataset(fmt, args.data, None, _format_options(args), args.cache_dir, progress=not args.no_progress,
                             refresh=args.refresh)
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


def cmd_plan(args: argparse.Namespace) -> int:
    from pdeseg.planning import write_plan

    _check_output_file(args.out, args, "--out")
    plan = _plan_args(args)
    out = write_plan(plan, Path(args.out).expanduser())
    print(plan.summary())
    print(f"plan: {out.resolve()}")
    print(f"train it: pdeseg train --config {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pdeseg.inference.export import export_checkpoint

    model, manifest = export_checkpoint(args.checkpoint, args.format, args.out, overwrite=args.overwrite)
    print(f"wrote {model.resolve()} and {manifest.resolve()}")
    return 0


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
        d = DataConfig(root=args.data, format=args.format or detect_format(args.data),
                       split=SplitConfig(fractions=list(DEFAULT_FRACTIONS), seed=0))
    fmt = get_format(d.format)
    fmt.check_read_options(d.format_options)
    info = fmt.dataset_info(d.root, d.format_options)
    modalities = fmt.channels(info, d.modalities)
    split = draw_split(d, fmt.find_cases(d.root, modalities, True, **d.format_options))
    fmt_name, options = d.format, dict(d.format_options)
    report = export_nnunet(fmt_name, args.data, args.out, split, modalities, options, overwrite=args.overwrite,
                           progress=not args.no_progress)
    print(f"wrote {report.num_cases} cases ({len(report.channel_names)} channel(s), {len(report.labels)} labels) to "
          f"{Path(report.out_dir).resolve()}" + (f"; {len(report.renamed)} case ids renamed for nnU-Net (see dataset.json)"
                                                if report.renamed else ""))
    if report.splits_file:
        print(f"pdeseg's split: {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test cases; "
              f"copy {report.splits_file} to $nnUNet_preprocessed/{Path(report.out_dir).name}/ after "
              "nnUNetv2_plan_and_preprocess and train fold 0 to use it")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pdeseg.build import resolve
    from pdeseg.errors import ConfigError
    from pdeseg.runtime import is_main_process
    from pdeseg.training.run import run_folder, train_models

    if args.config is None and args.init is not None:
        args.config = _init_config(args)
    elif args.init is not None:
        args.set = [*(args.set or []), f"train.init={args.init}"]
    if args.config is None:
        if not args.data:
            raise ConfigError("train needs --config FILE, or --data DIR to plan a run from the data (pdeseg plan)")
        from pdeseg.planning import write_plan

        plan = _plan_args(args)
        out_dir = Path(args.out or plan.config["output_dir"]) / plan.config["name"]
        args.config = str(write_plan(plan, out_dir / "plan.yaml"))
        print(plan.summary(), flush=True)
        print(f"plan: {Path(args.config).resolve()} (edit it and train with --config to change it)", flush=True)
    elif args.time_budget is not None or args.format is not None or args.format_option or args.device is not None:
        raise ConfigError("--time-budget, --device, --format and --format-option plan a run from the data; with --config "
                          "the config decides (set train.epochs, train.device, data.format, data.format_options there)")
    exp = resolve(_load_cfg(args))
    cfg = exp.cfg
    models = [m for m in cfg.models if args.model is None or m.name == args.model]
    if not models:
        raise ConfigError(f"--model {args.model}: not in the config's models ({', '.join(m.name for m in cfg.models)})")
    if args.folds is not None:
        from pdeseg.experiments.crossval import check_crossval_config, run_crossval

        check_crossval_config(cfg, args.folds)
        if args.stop_after is not None or args.overwrite:
            raise ConfigError("--folds continues its folds by itself (rerun the same command); it takes no --stop-after "
                              "or --overwrite: use another output folder to start afresh")
        for m in models:
            out = run_folder(cfg, m) / f"cv{args.folds}"
            run_crossval(cfg, m, out, args.folds, progress=not args.no_progress, exp=exp)
            if is_main_process():
                print((out / "summary.md").read_text())
                print(f"out-of-fold rows: {out / 'oof_cases.csv'}")
        return 0
    runs = train_models(exp, models, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after,
                        overwrite=args.overwrite)
    for m in models:
        run_dir, result = runs[m.name]
        if is_main_process():
            shown = f"train loss {-result.best_score:.4f}" if cfg.train.monitor == "train_loss" else f"{cfg.train.monitor} {result.best_score:.4f}"
            print(f"{m.name}: best {shown} at epoch {result.best_epoch}; checkpoint {run_dir / 'best.pt'}")
    return 0


def _init_config(args: argparse.Namespace) -> str:
    """``train --init X`` without ``--config``: the weights' own training config (their task
    spec, network and schedule), named ``<name>_finetune``, with ``train.init`` set, written
    beside the run folders as ``<out>/<name>_finetune.yaml``; returns its path."""
    import yaml

    from pdeseg.errors import ConfigError
    from pdeseg.pretrained.init import init_checkpoint

    if not args.data:
        raise ConfigError("train --init without --config needs --data DIR: the images to fine-tune on")
    if args.time_budget is not None or args.format_option or args.device is not None:
        raise ConfigError("train --init keeps the model's task spec: --time-budget, --device and --format-option do not "
                          "apply (set train.epochs, train.device with --set)")
    where, ckpt = init_checkpoint(args.init)
    stored = ckpt.get("config")
    if not isinstance(stored, dict):
        raise ConfigError(f"--init {args.init}: {where} carries no training config; give --config")
    data = {**stored, "name": f"{stored.get('name', 'model')}_finetune",
            "train": {**stored.get("train", {}), "init": args.init}}
    data["data"] = {k: v for k, v in stored.get("data", {}).items() if k != "cache_dir"}  # the default cache
    if args.format is not None:
        data["data"]["format"] = args.format
    out = Path(args.out or data.get("output_dir") or "runs")
    path = out / f"{data['name']}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"fine-tuning config: {path.resolve()} (the weights' own; edit it and train with --config to change it)",
          flush=True)
    args.format = None
    return str(path)


def _inference_options(args: argparse.Namespace):
    """The one :class:`~pdeseg.inference.options.InferenceOptions` of a predict or evaluate call."""
    from pdeseg.inference.options import InferenceOptions

    return InferenceOptions(device=args.device, precision=args.precision, batch_size=getattr(args, "batch_size", 16),
                            overlap=args.overlap, tta=args.tta, stitch=args.stitch, postprocess=not args.no_postprocess,
                            skip_empty=not args.segment_empty_slices, compile=args.compile, backend=args.backend,
                            diameter=getattr(args, "diameter", None), crop=getattr(args, "crop", None))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pdeseg.inference.evaluate import evaluate_checkpoint, summary_markdown

    first = Path(args.checkpoint[0])  # results go next to the checkpoint, or into the folder of runs
    out = args.out or str((first if first.is_dir() else first.parent) / f"eval_{args.split}_{args.scope}")
    summary = evaluate_checkpoint(
        args.checkpoint, out, _inference_options(args), data_root=args.data, split=args.split, scope=args.scope,
        with_hd95=args.hd95, save_predictions=args.save_predictions, progress=not args.no_progress,
        figures=args.figures, figure_cases=args.figure_cases.split(",") if args.figure_cases else None,
        surface_tolerance_mm=args.surface_tolerance, grid=args.grid,
    )
    print(summary_markdown(summary))
    print(f"per-case metrics: {Path(out) / 'per_case.csv'}\nsummary: {Path(out) / 'summary.json'}")
    if args.figures or args.figure_cases:
        print(f"figures: {Path(out) / 'figures'}")
    return 0


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
    ome_set = [f"--{k.replace('_', '-')}" for k in ("channel", "level", "dask_workers", "dask_scheduler")
               if getattr(args, k) is not None]
    if ome_set:
        from pdeseg.errors import ConfigError

        raise ConfigError(f"{ome_set[0]} applies to OME-TIFF / OME-Zarr inputs; {args.input} holds none")
    dicom_read = {"series": args.series, "gantry_tilt": args.gantry_tilt}
    report = predict_folder(args.checkpoint, args.input, args.output, _inference_options(args),
                            progress=not args.no_progress, overwrite=args.overwrite, shard=shard,
                            convention=args.label_convention,
                            mask_format=args.mask_format, input_format=args.input_format,
                            read_options=dicom_read if any(v is not None for v in dicom_read.values()) else None,
                            output_format=args.output_format, seg_type=args.seg_type)
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
        print(f"skipped {len(report.skipped)} {unit}(s) that could not be read, segmented or written: "
              f"{', '.join(report.skipped)} (reasons logged above)")
        return 1
    return 0


def _predict_ome(args: argparse.Namespace, shard) -> int:
    from pdeseg.inference.ome_predict import predict_ome

    report = predict_ome(args.checkpoint, args.input, args.output, _inference_options(args), channels=args.channel,
                         level=args.level, output=args.ome_output, labels_name=args.labels_name, tile=args.tile,
                         halo=args.halo, shard=shard, overwrite=args.overwrite, dask_workers=args.dask_workers,
                         dask_address=args.dask_scheduler, progress=not args.no_progress)
    return _prediction_exit(report, shard, "image", ": " + ", ".join(str(p) for p in report.written))


def cmd_crossval(args: argparse.Namespace) -> int:
    from pdeseg.experiments.crossval import rescore_crossval

    result = rescore_crossval(args.cv_dir, args.name, args.tta, args.min_component_fraction, args.min_innermost_voxels,
                              args.against, args.data, progress=not args.no_progress)
    print((result.out_dir / "summary.md").read_text())
    print(f"per-case metrics: {result.out_dir / 'oof_cases.csv'}")
    return 0


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


def cmd_inspect(args: argparse.Namespace) -> int:
    from pdeseg.experiments.inspect_pde import inspect_checkpoint

    written = inspect_checkpoint(args.checkpoint, args.out, args.input, args.case, args.device, args.channels)
    for path in written:
        print(path)
    print(f"wrote {len(written)} file(s) to {Path(args.out).expanduser().resolve()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pdeseg.experiments.compare import run_compare

    cfg = _load_cfg(args)
    if args.models:
        wanted = args.models.split(",")
        unknown = [w for w in wanted if w not in {m.name for m in cfg.models}]
        if unknown:
            from pdeseg.config import ModelConfig

            cfg.models = cfg.models + [ModelConfig(name=w) for w in unknown]
        cfg.models = [m for m in cfg.models if m.name in wanted]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    result = run_compare(cfg, args.out, seeds, args.scope, args.baseline, progress=not args.no_progress)
    print((result.out_dir / "table.md").read_text())
    print((result.out_dir / "comparison.md").read_text())
    print(f"report: {(result.out_dir / 'report.html').resolve()}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from pdeseg.experiments.ablate import run_ablation

    cfg = _load_cfg(args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    only = [v.strip() for v in args.variants.split(",")] if args.variants else None
    result = run_ablation(cfg, args.out, args.grid, seeds, args.model, progress=not args.no_progress, only=only)
    print((result.out_dir / "results.md").read_text())
    print((result.out_dir / "noise.md").read_text())
    print(f"best by validation: {result.best}\nreport: {(result.out_dir / 'report.html').resolve()}")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from pdeseg.experiments.robustness import parse_list, parse_numbers, run_robustness

    cfg = _load_cfg(args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    result = run_robustness(cfg, args.out, seeds, args.study, None if args.noise is None else parse_list(args.noise, "--noise"),
                            parse_numbers(args.levels, "--levels"), parse_numbers(args.fractions, "--fractions"),
                            args.baseline, args.noise_seed, progress=not args.no_progress)
    for name in ("noise.md", "fraction.md"):
        if (result.out_dir / name).is_file():
            print((result.out_dir / name).read_text())
    print(f"report: {(result.out_dir / 'report.html').resolve()}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pdeseg.experiments.demo import run_cells_demo, run_demo

    if args.cells:
        out = args.out if args.out != "demo_out" else "demo_cells_out"
        report = run_cells_demo(out, epochs=args.epochs or 8, seed=args.seed, progress=not args.no_progress)
        print(f"\nReport: {report['report'].resolve()}\n")
        print(report["table"].read_text())
        noise = report["result"].out_dir / "noise.md"
        if noise.is_file():
            print(noise.read_text())
        print(f"Open the report in a browser: {report['report'].resolve()}")
        return 0

    report = run_demo(args.out, epochs=args.epochs or 6, cases=args.cases, seed=args.seed)
    floor = report["untrained"]
    print(f"\nReport: {report['report'].resolve()}\n")
    print(report["table"].read_text())
    print(report["comparison"].read_text())
    print(f"Untrained UNet on the same test cases: Dice {floor['dice_mean']:.3f}, WT {floor['dice_WT']:.3f} (the floor).")
    print(f"Open the report in a browser: {report['report'].resolve()}")
    return 0


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
_overlap = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)",
                    "must be >= 0 and < 1 (the share of a window its neighbour covers)")
_distance_mm = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a distance in mm", "must be a finite distance >= 0 (mm)")


def _add_checkpoints(s: argparse.ArgumentParser, note: str = "", pretrained: bool = False) -> None:
    where = s.add_mutually_exclusive_group(required=True) if pretrained else s
    where.add_argument("--checkpoint", required=not pretrained, nargs="+", metavar="CKPT",
                       help="a checkpoint; several, or a folder of runs (every best.pt below it, e.g. the folds of "
                            f"train --folds), for an ensemble whose class probabilities are averaged{note}")
    if pretrained:
        where.add_argument("--model", metavar="NAME",
                           help="a pretrained model shipped with pdeseg (nuclei, hippocampus; pdeseg models lists them "
                                "with their cards), in place of --checkpoint")


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


def _add_inference_options(s: argparse.ArgumentParser) -> None:
    """``--overlap``, ``--tta`` and ``--stitch`` (see :class:`pdeseg.inference.predict.Predictor`)."""
    from pdeseg.config import STITCH_MODES  # the leaf config: parsing arguments needs no torch

    s.add_argument("--overlap", type=_overlap, default=0.5, metavar="F",
                   help="sliding-window inference (patches models): share of a window that overlaps its neighbour, "
                        "0 <= F < 1 (default 0.5)")
    s.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the class probabilities over every mirroring of the spatial "
                        "axes (4 passes for 2D slices, 8 for 3D)")
    s.add_argument("--no-postprocess", action="store_true",
                   help="leave out the post-processing the checkpoint's config names (postprocess: main components, "
                        "small innermost region)")
    s.add_argument("--stitch", choices=STITCH_MODES, default="auto",
                   help="where sliding-window outputs are added up: on the GPU (device), in main memory (cpu, for "
                        "volumes too large for the GPU), or auto (the GPU when the output fits in its free memory)")
    s.add_argument("--segment-empty-slices", action="store_true",
                   help="slice models: also segment slices whose every channel is 0 (by default they are background "
                        "without running the network)")
    s.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (compiled at the first batch; pays on long runs, see "
                        "benchmarks/bench_predict.py)")
    crop = s.add_mutually_exclusive_group()
    crop.add_argument("--crop", dest="crop", action="store_const", const=True, default=None,
                      help="segment only each case's non-zero box (the brain of a skull-stripped scan) and paste the "
                           "result back on the input grid; same Dice, about 2.4x faster on BraTS (default: on for a model "
                           "trained with data.crop_nonzero and for skull-stripped BraTS models, off otherwise)")
    crop.add_argument("--no-crop", dest="crop", action="store_const", const=False,
                      help="segment the whole case, also for a model trained with data.crop_nonzero")
    s.add_argument("--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
                   help="run the network in PyTorch, or export it to ONNX when loaded and run it in ONNX Runtime (CPU, "
                        "fp32); auto (default): the faster measured, ONNX Runtime on a CPU that PyTorch would run in "
                        "fp32 (installed, its export reproducing PyTorch's logits), else PyTorch (bf16 on CPUs with bf16 "
                        "instructions); see benchmarks/bench_predict.py")


def _add_ome_options(s: argparse.ArgumentParser) -> None:
    """OME-TIFF / OME-Zarr inputs: segmented tile by tile, in one process or on Dask."""
    g = s.add_argument_group("OME-TIFF / OME-Zarr inputs (segmented tile by tile in bounded memory; 2D slice models)")
    g.add_argument("--channel", nargs="+", metavar="NAME",
                   help="the image's channel(s) to read, by name, one per model channel (default: by the model's channel "
                        "names, or the only channel)")
    g.add_argument("--level", type=_non_negative_int, metavar="N",
                   help="pyramid level to segment (default: the coarsest as fine as the model's training pixel size, "
                        "else 0)")
    g.add_argument("--ome-output", choices=("auto", "tiff", "zarr"), default="auto",
                   help="zarr: a labels group inside the input OME-Zarr; tiff: <output>/<image>_instances.ome.tif "
                        "(default: zarr for OME-Zarr inputs, tiff for OME-TIFF)")
    g.add_argument("--labels-name", default="pdeseg", help="name of the labels group in an OME-Zarr (default pdeseg)")
    g.add_argument("--tile", type=_positive_int, default=1024, metavar="PX", help="tile core size (default 1024)")
    g.add_argument("--halo", type=_non_negative_int, default=64, metavar="PX",
                   help="context segmented around each tile; cells must fit in it (default 64)")
    g.add_argument("--dask-workers", type=_positive_int, metavar="N",
                   help="run the tiles on a local Dask cluster of N worker processes")
    g.add_argument("--dask-scheduler", metavar="ADDRESS",
                   help="run the tiles on this dask.distributed scheduler (tcp://host:8786); workers must see the files")


def _add_format_options(s: argparse.ArgumentParser, plan: bool, defaults: bool = True) -> None:
    """``--format``, ``--format-option`` and the cache folder; with ``plan``, ``--device`` and ``--time-budget``."""
    from pdeseg.data.formats import FORMATS

    s.add_argument("--format", choices=sorted(FORMATS), help="the data format (default: detected from the layout)")
    s.add_argument("--format-option", nargs="*", metavar="KEY=VALUE", help="reading options of the format, e.g. targets=boundary")
    s.add_argument("--cache-dir", default="~/.cache/pdeseg", help="where cached cases and fingerprints go")
    if plan:
        s.add_argument("--device", default="auto" if defaults else None, choices=["auto", "cpu", "cuda"],
                       help="the device the plan is measured on and trains on (default auto)")
        s.add_argument("--time-budget", default="1h" if defaults else None, metavar="DURATION",
                       help="wall-clock training budget, e.g. 2h, 90m, 1h30m (default 1h); the epochs are chosen to fit it")


def build_parser() -> argparse.ArgumentParser:
    from pdeseg.data.formats import FORMATS  # not the registry: parsing arguments needs no torch

    p = argparse.ArgumentParser(prog="pdeseg", description="PDE-informed segmentation networks and losses, 2D and 3D.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="synthetic data -> train UNet and PDE-UNet -> evaluate -> table and figures")
    s.add_argument("--out", default="demo_out", help="output folder (default: demo_out, or demo_cells_out with --cells)")
    s.add_argument("--cells", action="store_true",
                   help="the microscopy demo: a synthetic cell phantom with three cell types (images + COCO json), "
                        "trained on two and tested on the unseen third, plain loss vs PDE penalties")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--epochs", type=_positive_int, default=None, help="default 6 (8 with --cells)")
    s.add_argument("--cases", type=_positive_int, default=12)
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("compare", help="train every model of a config over several seeds; table, statistics, report")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="comparison folder (rerun the same command to continue it)")
    s.add_argument("--data", help="data folder (overrides data.root)")
    s.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds (default 3)")
    s.add_argument("--first-seed", type=_non_negative_int, default=0)
    s.add_argument("--models", help="comma-separated registered models (default: the config's)")
    s.add_argument("--baseline", help="model the others are compared with (default: the first)")
    s.add_argument("--scope", default=None, choices=["slices", "volume"],
                   help="score the config's slice selection or whole volumes (default: slices for slice models, "
                        "volume for patch and whole-volume models)")
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("ablate", help="train a grid of model variants (e.g. paper 003's); table, curves, report")
    s.add_argument("--config", required=True)
    s.add_argument("--grid", nargs="+", metavar="KEY=V1,V2",
                   help="model keywords (activation=relu,prelu dropout=0,0.3 norm=batch,none) or dotted config keys; "
                        "without --grid, the named variants of the config's ablation section")
    s.add_argument("--out", required=True, help="ablation folder (rerun the same command to continue it)")
    s.add_argument("--variants", metavar="A,B,...",
                   help="run only these named variants of the config's ablation section, the first as the baseline")
    s.add_argument("--data", help="data folder (overrides data.root)")
    s.add_argument("--model", help="model to vary (default: the config's first)")
    s.add_argument("--seeds", type=_positive_int, default=1, help="seeds per variant (>= 2 to measure seed noise)")
    s.add_argument("--first-seed", type=_non_negative_int, default=0)
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_ablate)

    s = sub.add_parser("robustness", help="models under test-time noise / bias fields and with fewer training labels; "
                                          "tables, paired tests, figures, report")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="study folder (rerun the same command to continue it)")
    s.add_argument("--data", help="data folder (overrides data.root)")
    s.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds (default 3)")
    s.add_argument("--first-seed", type=_non_negative_int, default=0)
    s.add_argument("--study", default="both", choices=["noise", "fraction", "both"],
                   help="test-time perturbations, training-label fractions, or both (default)")
    s.add_argument("--noise", metavar="KIND,...",
                   help="perturbations: gaussian, rician, bias (default: all three; no rician for CT)")
    s.add_argument("--levels", metavar="L,...", help="perturbation levels >= 0: noise sd as a share of the 99th "
                   "percentile intensity, or sd of the log bias field (default 0,0.05,0.1,0.2)")
    s.add_argument("--fractions", metavar="F,...", help="training fractions in (0, 1] (default 0.1,0.25,0.5,1)")
    s.add_argument("--baseline", help="model the others are compared with (default: the first)")
    s.add_argument("--noise-seed", type=_non_negative_int, default=0, help="seed of the perturbations (with case id and kind)")
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_robustness)

    s = sub.add_parser("phantom", help="write a synthetic data set (BraTS-like, LGG-like, an MSD-layout MRI or CT task, "
                                       "or cell images with COCO json)")
    s.add_argument("--out", required=True)
    s.add_argument("--cases", type=_positive_int, default=12, help="cases (livecell: images per cell type)")
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.add_argument("--shape", type=_positive_int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                   help="volume size (default 128 128 48; msd: 36 48 36 for mri, 96 96 32 for ct)")
    s.add_argument("--format", default="brats", choices=["brats", "lgg", "msd", "livecell"],
                   help="the phantom's layout: BraTS NIfTI folders, LGG kaggle_3m TIFF slices, an MSD / nnU-Net task "
                        "folder, or LIVECell-style cell images (3 cell types) with COCO json")
    s.add_argument("--kind", default="mri", choices=["mri", "ct"],
                   help="msd: a hippocampus-like MRI task, or a liver-CT-like task in Hounsfield units on an anisotropic grid")
    s.add_argument("--layout", default="msd", choices=["msd", "nnunet"], help="msd: MSD (nnU-Net v1) dataset.json; nnunet: nnU-Net v2")
    s.add_argument("--spacing", type=_spacing_mm, nargs=3, default=None, metavar=("SX", "SY", "SZ"),
                   help="msd: voxel size in mm (default 1 1 1 for mri, 0.8 0.8 2.5 for ct)")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("fingerprint", help="measure a data set: shapes, spacings, intensities, classes, objects")
    s.add_argument("--data", required=True, help="data folder (any format pdeseg reads; detected from its layout)")
    _add_format_options(s, plan=False)
    s.add_argument("--refresh", action="store_true", help="measure again instead of reading the cached fingerprint")
    s.add_argument("--json", metavar="PATH", help="also write the fingerprint as JSON (outside the data set)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier --json of pdeseg fingerprint")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_fingerprint)

    s = sub.add_parser("plan", help="configure training from the data and this device: a YAML config with a reason "
                                    "beside every choice, and the expected time")
    s.add_argument("--data", required=True, help="data folder (any format pdeseg reads; detected from its layout)")
    _add_format_options(s, plan=True)
    s.add_argument("--out", default="plan.yaml", help="the config to write, outside the data set (default plan.yaml)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier plan of pdeseg plan in --out")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("export", help="write a checkpoint's network for deployment (ONNX or TorchScript, any spatial "
                                      "size) with pdeseg_export.json: preprocessing, classes, output head, windows")
    s.add_argument("--checkpoint", required=True, help="a pdeseg checkpoint (best.pt)")
    s.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    s.add_argument("--out", required=True, help="folder for model.onnx / model.pt and pdeseg_export.json")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("export-nnunet", help="write a data set as an nnU-Net v2 raw folder (dataset.json, imagesTr, "
                                             "labelsTr) with pdeseg's split as splits_final.json")
    s.add_argument("--data", required=True, help="data folder (any format pdeseg reads)")
    s.add_argument("--out", required=True, metavar="nnUNet_raw/DatasetNNN_Name", help="the folder to write")
    s.add_argument("--config", help="take format, channels and split from this config (default: the plan's split, "
                                    "0.7/0.1/0.2 by case, seed 0)")
    s.add_argument("--format", choices=sorted(FORMATS), help="the data format (default: detected from the layout)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing export")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_export_nnunet)

    s = sub.add_parser("train", help="train the config's models (one run folder each); with --data and no --config, "
                                     "plan the run from the data first")
    s.add_argument("--config", help="YAML experiment config (see configs/, or pdeseg plan); without it, --data is "
                                    "planned (pdeseg plan) and the plan trained")
    s.add_argument("--data", help="data folder (overrides data.root)")
    _add_format_options(s, plan=True, defaults=False)
    s.add_argument("--out", help="output folder (overrides output_dir)")
    s.add_argument("--model", help="train only this model of the config")
    s.add_argument("--resume", action="store_true", help="continue each run from its last.pt")
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=2")
    s.add_argument("--overwrite", action="store_true", help="start afresh in run folders that already hold a run")
    s.add_argument("--stop-after", type=_positive_int, metavar="N", help="stop after N epochs in this call (continue later with --resume)")
    s.add_argument("--init", metavar="NAME|CKPT",
                   help="fine-tune: start from a pretrained model's weights (pdeseg models) or a checkpoint's (train.init); "
                        "the config's network and task spec must match them. Without --config, the model's own training "
                        "config is used (with --data and --set)")
    s.add_argument("--folds", type=_folds, metavar="K",
                   help="patient-level K-fold cross-validation: train K runs in <run>/cv<K>/fold<i>/ and score every case "
                        "once, out of fold (rerun the same command to continue)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("crossval", help="score the out-of-fold cases of a finished train --folds again with test-time "
                                        "augmentation or post-processing; paired tests against another table")
    s.add_argument("cv_dir", help="the cv<K> folder of pdeseg train --folds K")
    s.add_argument("--name", required=True, help="sub-folder of cv_dir for this variant's oof_cases.csv and summary.md")
    s.add_argument("--tta", action="store_true", help="mirror test-time augmentation (the fold models segment again)")
    s.add_argument("--min-component-fraction", type=_fraction, metavar="F",
                   help="remove foreground components smaller than F times the largest (0 < F <= 1)")
    s.add_argument("--min-innermost-voxels", type=_innermost, metavar="N|auto",
                   help="relabel the innermost region (BraTS ET -> NCR) when under N voxels; auto: N chosen per fold "
                        "on the other folds' cases")
    s.add_argument("--against", metavar="PATH",
                   help="reference oof_cases.csv (or its folder) for the paired tests (default: the cross-validation's)")
    s.add_argument("--data", help="data folder (default: the one the runs were trained on)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_crossval)

    s = sub.add_parser("evaluate", help="score a checkpoint (or an ensemble) on a split or folder")
    _add_checkpoints(s, " (then with --split all --data FOLDER)")
    s.add_argument("--data", help="BraTS folder (default: the one the model was trained on)")
    s.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    s.add_argument("--scope", default="volume", choices=["volume", "slices"],
                   help="volume: whole volumes in 3D; slices: the config's slice selection")
    s.add_argument("--grid", choices=["input", "cache"], default=None,
                   help="input (default in volume scope): each case segmented as predict writes it and scored against "
                        "its original label on its own grid and spacing; cache: on the normalised, cropped and resampled "
                        "cache grid that training validates on (faster where data.target_spacing resamples; slices "
                        "scope always scores there)")
    s.add_argument("--diameter", type=_diameter, metavar="PX|auto|off",
                   help="cell models, input grid: the objects' diameter in pixels, as predict --diameter (each image "
                        "rescaled to the training object size and the cells mapped back); default as predict: auto "
                        "for models that state their training object size, off for others")
    s.add_argument("--hd95", action="store_true", help="also compute HD95 (mm) per region (slower)")
    s.add_argument("--surface-tolerance", type=_distance_mm, metavar="MM",
                   help="also compute the surface Dice per region at this tolerance in mm (slower)")
    s.add_argument("--out", help="output folder (default: next to the checkpoint)")
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=["auto", "32", "bf16-mixed"])
    s.add_argument("--save-predictions", action="store_true", help="also write <case>_seg.nii.gz (or per-slice masks)")
    s.add_argument("--figures", type=_non_negative_int, default=0, metavar="N",
                   help="overlays (truth red, prediction green) and class-mask figure for the first N cases")
    s.add_argument("--figure-cases", metavar="ID,ID", help="the same figures for these cases (comma-separated ids)")
    _add_inference_options(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("predict", help="segment volumes into <case>_seg.nii.gz, or slices into mask images")
    _add_checkpoints(s, pretrained=True)
    s.add_argument("--diameter", type=_diameter, metavar="PX|auto|off",
                   help="cell models: the objects' diameter in pixels; each image is rescaled so that its objects have "
                        "the size the model was trained at, and the cells mapped back. auto: estimated in each image "
                        "(the default for models that state their training object size, such as the shipped ones); "
                        "off: segment at the image's own scale (the default for other checkpoints)")
    s.add_argument("--input", required=True, help="a case folder or a folder of case folders")
    s.add_argument("--output", required=True)
    s.add_argument("--device", default="auto")
    s.add_argument("--precision", default="auto", choices=["auto", "32", "bf16-mixed"])
    s.add_argument("--label-convention", choices=FORMATS["brats"].write_options["convention"],
                   help="BraTS labels to write (default: the input's: ET=4, or ET=3 for BraTS-GLI 2023 data)")
    s.add_argument("--batch-size", type=_positive_int, default=16, help="slices or windows per forward pass (>= 1)")
    s.add_argument("--mask-format", choices=FORMATS["lgg"].write_options["mask_format"],
                   help="per-slice masks for slice data sets such as LGG (default png; 0/255 for binary tasks)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace output files that an earlier pdeseg predict wrote (they carry its marker); a file "
                        "pdeseg did not write, and an input case's own files, are never replaced")
    s.add_argument("--shard", metavar="I/N",
                   help="segment only shard I of N (0 <= I < N) of the inputs: round robin over the sorted names, so N "
                        "copies (e.g. a SLURM array, --shard $SLURM_ARRAY_TASK_ID/N) share a folder with no file twice")
    _add_ome_options(s)
    s.add_argument("--input-format", choices=["dicom"],
                   help="read --input as DICOM series (default: DICOM when it holds DICOM files, else the model's format)")
    s.add_argument("--series", action="append", metavar="CHANNEL=PATTERN[,PATTERN]",
                   help="DICOM, several channels: SeriesDescription glob patterns (case-insensitive) of a channel's series "
                        "in each study (repeat per channel; tried before the built-in rules for the BraTS channels flair, t1, t1ce, "
                        "t2, which still apply)")
    s.add_argument("--gantry-tilt", choices=FORMATS["dicom"].read_options["gantry_tilt"],
                   help="DICOM: refuse a gantry-tilted stack (default) or resample it onto an orthogonal grid")
    s.add_argument("--output-format", choices=FORMATS["dicom"].write_options["output_format"],
                   help="DICOM input: write a DICOM-SEG per case (default), the NIfTI label map, or both")
    s.add_argument("--seg-type", choices=FORMATS["dicom"].write_options["seg_type"],
                   help="DICOM-SEG: binary masks (default) or fractional class probabilities")
    _add_inference_options(s)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("inspect", help="what a checkpoint's PDE layers learned: stencils beside their moments, "
                                       "coefficients (JSON), and features before and after each layer on an input case")
    s.add_argument("--checkpoint", required=True, help="a pde3d_unet (PDE layers) or pde_unet (cable block) checkpoint")
    s.add_argument("--input", help="a case folder or a folder of cases (the checkpoint's data format) to show the "
                                   "features on; without it, only the stencils and the summary")
    s.add_argument("--case", help="which case of an --input folder (default: the first)")
    s.add_argument("--out", required=True, help="output folder (files of the same names are replaced)")
    s.add_argument("--channels", type=_positive_int, default=4, help="feature channels shown per layer, the most "
                                                                     "changed ones (default 4)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("models", help="list the pretrained models shipped with pdeseg, the registered networks and "
                                      "their parameter counts; with a NAME, print that pretrained model's card")
    s.add_argument("name", nargs="?", metavar="NAME", help="a pretrained model (e.g. nuclei): print its model card")
    s.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from pdeseg.errors import PdesegError

    # a user's mistake (config, data, checkpoint, device, folders) is reported in one line;
    # anything else is a bug in pdeseg and shows its traceback
    try:
        return args.func(args)
    except PdesegError as exc:
        if args.verbose:
            raise
        log.error("%s (run with -v for the traceback)", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
