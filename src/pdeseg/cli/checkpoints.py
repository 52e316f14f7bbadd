"""The commands about models rather than data, each parser beside its handler: ``export`` (a checkpoint's
network as ONNX or TorchScript), ``inspect`` (what a checkpoint's PDE layers learned) and ``models``
(the shipped pretrained models, registered networks, loss terms and data formats; one model's card).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pdeseg.cli.options import _positive_int


def add_export(sub) -> None:
    s = sub.add_parser(
        "export",
        help="write a checkpoint's network for deployment (ONNX or TorchScript, any spatial "
        "size) with pdeseg_export.json: preprocessing, classes, output head, windows",
    )
    s.add_argument("--checkpoint", required=True, help="a pdeseg checkpoint (best.pt)")
    s.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    s.add_argument("--out", required=True, help="folder for model.onnx / model.pt and pdeseg_export.json")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    s.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pdeseg.inference.export import export_checkpoint

    model, manifest = export_checkpoint(args.checkpoint, args.format, args.out, overwrite=args.overwrite)
    print(f"wrote {model.resolve()} and {manifest.resolve()}")
    return 0


def add_inspect(sub) -> None:
    s = sub.add_parser(
        "inspect",
        help="what a checkpoint's PDE layers learned: stencils beside their moments, "
        "coefficients (JSON), and features before and after each layer on an input case",
    )
    s.add_argument("--checkpoint", required=True, help="a pde3d_unet (PDE layers) or pde_unet (cable block) checkpoint")
    s.add_argument(
        "--input",
        help="a case folder or a folder of cases (the checkpoint's data format) to show the "
        "features on; without it, only the stencils and the summary",
    )
    s.add_argument("--case", help="which case of an --input folder (default: the first)")
    s.add_argument("--out", required=True, help="output folder (files of the same names are replaced)")
    s.add_argument("--channels", type=_positive_int, default=4, help="feature channels shown per layer, the most changed ones (default 4)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from pdeseg.experiments.inspect_pde import inspect_checkpoint

    written = inspect_checkpoint(args.checkpoint, args.out, args.input, args.case, args.device, args.channels)
    for path in written:
        print(path)
    print(f"wrote {len(written)} file(s) to {Path(args.out).expanduser().resolve()}")
    return 0


def add_models(sub) -> None:
    s = sub.add_parser(
        "models",
        help="list the pretrained models shipped with pdeseg, the registered networks and "
        "their parameter counts; with a NAME, print that pretrained model's card",
    )
    s.add_argument("name", nargs="?", metavar="NAME", help="a pretrained model (e.g. nuclei): print its model card")
    s.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from pdeseg import pretrained

    if args.name is not None:  # one shipped model's card
        pretrained.entry(args.name)
        installed = pretrained.PRETRAINED[args.name].installed
        print(pretrained.card_text(pretrained.read_card(args.name)), end="")
        print(
            f"\nweights: {pretrained.PRETRAINED[args.name].weights}"
            if installed
            else f"\nweights: not installed ({pretrained.not_installed_message(args.name)})"
        )
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
    print(
        f"{'model':<{width}} {'dims':<6} {'parameters':>12}  description (parameters: default widths, 2D unless "
        "3D-only, 4 modalities in, 4 classes out)"
    )
    for name, entry in MODELS.items():
        dims = 2 if 2 in entry.dims else entry.dims[0]
        try:
            n = f"{count_parameters(build_model(name, spatial_dims=dims, in_channels=4, out_channels=4)):,}"
        except ImportError as exc:  # an optional dependency of one baseline is missing
            n, entry_note = "n/a", f" [{exc}]"
        else:
            entry_note = ""
        print(f"{name:<{width}} {','.join(map(str, entry.dims)):<6} {n:>12}  {entry.description}{entry_note}")
    print(
        "\nloss terms (loss.terms: [{name, weight, ...options}]; any term may add start_epoch, ramp_epochs: "
        "a warm-up schedule of its weight):"
    )
    loss_width = max(10, *(len(name) for name in LOSSES))
    for name, entry in LOSSES.items():
        print(f"  {name:<{loss_width}} {entry.description}")
    print("\ndata formats (data.format):")
    for name, fmt in FORMATS.items():
        print(f"  {name:<11} {fmt.description}")
    return 0
