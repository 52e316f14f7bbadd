"""The study commands, each parser beside its handler: ``demo`` (synthetic data, end to end), ``compare``
(models over seeds), ``ablate`` (a grid of variants) and ``robustness`` (test-time perturbations and
training-label fractions). Each writes a folder with tables and an HTML report (:mod:`pdeseg.experiments`).
"""

from __future__ import annotations

import argparse

from pdeseg.cli.options import _load_cfg, _non_negative_int, _positive_int


def add_demo(sub) -> None:
    s = sub.add_parser("demo", help="synthetic data -> train UNet and PDE-UNet -> evaluate -> table and figures")
    s.add_argument("--out", default="demo_out", help="output folder (default: demo_out, or demo_cells_out with --cells)")
    s.add_argument(
        "--cells",
        action="store_true",
        help="the microscopy demo: a synthetic cell phantom with three cell types (images + COCO json), "
        "trained on two and tested on the unseen third, plain loss vs PDE penalties",
    )
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--epochs", type=_positive_int, default=None, help="default 6 (8 with --cells)")
    s.add_argument("--cases", type=_positive_int, default=12)
    s.add_argument("--seed", type=_non_negative_int, default=0)
    s.set_defaults(func=cmd_demo)


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


def add_compare(sub) -> None:
    s = sub.add_parser("compare", help="train every model of a config over several seeds; table, statistics, report")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="comparison folder (rerun the same command to continue it)")
    s.add_argument("--data", help="data folder (overrides data.root)")
    s.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds (default 3)")
    s.add_argument("--first-seed", type=_non_negative_int, default=0)
    s.add_argument("--models", help="comma-separated registered models (default: the config's)")
    s.add_argument("--baseline", help="model the others are compared with (default: the first)")
    s.add_argument(
        "--scope",
        default=None,
        choices=["slices", "volume"],
        help="score the config's slice selection or whole volumes (default: slices for slice models, "
        "volume for patch and whole-volume models)",
    )
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_compare)


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


def add_ablate(sub) -> None:
    s = sub.add_parser("ablate", help="train a grid of model variants (e.g. paper 003's); table, curves, report")
    s.add_argument("--config", required=True)
    s.add_argument(
        "--grid",
        nargs="+",
        metavar="KEY=V1,V2",
        help="model keywords (activation=relu,prelu dropout=0,0.3 norm=batch,none) or dotted config keys; "
        "without --grid, the named variants of the config's ablation section",
    )
    s.add_argument("--out", required=True, help="ablation folder (rerun the same command to continue it)")
    s.add_argument(
        "--variants", metavar="A,B,...", help="run only these named variants of the config's ablation section, the first as the baseline"
    )
    s.add_argument("--data", help="data folder (overrides data.root)")
    s.add_argument("--model", help="model to vary (default: the config's first)")
    s.add_argument("--seeds", type=_positive_int, default=1, help="seeds per variant (>= 2 to measure seed noise)")
    s.add_argument("--first-seed", type=_non_negative_int, default=0)
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_ablate)


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


def add_robustness(sub) -> None:
    s = sub.add_parser(
        "robustness",
        help="models under test-time noise / bias fields and with fewer training labels; tables, paired tests, figures, report",
    )
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True, help="study folder (rerun the same command to continue it)")
    s.add_argument("--data", help="data folder (overrides data.root)")
    s.add_argument("--seeds", type=_positive_int, default=3, help="number of seeds (default 3)")
    s.add_argument("--first-seed", type=_non_negative_int, default=0)
    s.add_argument(
        "--study",
        default="both",
        choices=["noise", "fraction", "both"],
        help="test-time perturbations, training-label fractions, or both (default)",
    )
    s.add_argument("--noise", metavar="KIND,...", help="perturbations: gaussian, rician, bias (default: all three; no rician for CT)")
    s.add_argument(
        "--levels",
        metavar="L,...",
        help="perturbation levels >= 0: noise sd as a share of the 99th "
        "percentile intensity, or sd of the log bias field (default 0,0.05,0.1,0.2)",
    )
    s.add_argument("--fractions", metavar="F,...", help="training fractions in (0, 1] (default 0.1,0.25,0.5,1)")
    s.add_argument("--baseline", help="model the others are compared with (default: the first)")
    s.add_argument("--noise-seed", type=_non_negative_int, default=0, help="seed of the perturbations (with case id and kind)")
    s.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from pdeseg.experiments.robustness import parse_list, parse_numbers, run_robustness

    cfg = _load_cfg(args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    result = run_robustness(
        cfg,
        args.out,
        seeds,
        args.study,
        None if args.noise is None else parse_list(args.noise, "--noise"),
        parse_numbers(args.levels, "--levels"),
        parse_numbers(args.fractions, "--fractions"),
        args.baseline,
        args.noise_seed,
        progress=not args.no_progress,
    )
    for name in ("noise.md", "fraction.md"):
        if (result.out_dir / name).is_file():
            print((result.out_dir / name).read_text())
    print(f"report: {(result.out_dir / 'report.html').resolve()}")
    return 0
