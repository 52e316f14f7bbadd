#!/usr/bin/env python
"""Write a shipped pretrained model from a trained run: ``weights.pt`` (float16 where measured exact
enough), ``card.yaml`` with its measured fields filled, and ``split.json``.

Measures, on the run's own split (``split.json`` beside the checkpoint; see
:mod:`pdeseg.pretrained.pack`): the training object size (cell models), float16 against float32
weights on the held-out cases, and the held-out scores of the very file written (fp32 on the CPU,
object size not rescaled). The card's hand-written fields (data, licence, recreate commands, inputs,
limits) are taken from the shipped card of ``--name`` (or ``--card``).

Usage (the recreate commands of the shipped cards; configs/pretrained_*.yaml)::

    python scripts/make_pretrained.py --name nuclei --checkpoint runs/pretrained/pretrained_nuclei/unet/best.pt \\
        --data ../shared/data/dsb2018 --out src/pdeseg/pretrained/nuclei

Then ``pdeseg models nuclei`` shows the card and ``pytest tests/test_pretrained.py`` checks that the
weights reproduce it on the shared data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the model's name (a shipped model: its card is the starting point)")
    p.add_argument("--checkpoint", required=True, help="the run's best.pt (its split.json beside it)")
    p.add_argument("--data", required=True, help="the data set the run was trained on")
    p.add_argument("--out", required=True, help="the model folder to write (src/pdeseg/pretrained/<name> to ship it)")
    p.add_argument("--card", help="the card to start from (default: the shipped card of --name)")
    p.add_argument("--split", default="test", choices=["val", "test"], help="the held-out split the card is scored on")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "float32"],
                   help="auto: float16 when the labels agree on >= 99.9 %% of held-out pixels and no class probability "
                        "moves by more than 0.02, else float32")
    p.add_argument("--object-diameter", type=float, help="training object size in px (default: measured on the train split)")
    p.add_argument("--spread", type=float, help="sd of the held-out score over the recreate's seeds, for the card")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    from pdeseg.errors import PdesegError
    from pdeseg.pretrained.pack import pack

    t0 = time.perf_counter()
    try:
        card = pack(args.checkpoint, args.out, name=args.name, data_root=args.data, card=args.card, split=args.split,
                    dtype=args.dtype, object_diameter=args.object_diameter, spread=args.spread, progress=True)
    except PdesegError as exc:
        logging.getLogger("pdeseg").error("%s", exc)
        return 2
    print(json.dumps({"held_out": card["held_out"], "weights": card["weights"], "inputs": card.get("inputs")}, indent=1))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
