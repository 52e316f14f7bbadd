"""Take the README's screenshot of the pdeseg napari widget on a real DSB 2018 image, headless.

    xvfb-run -a python docs/napari_screenshot.py --checkpoint runs/dsb/unet/best.pt \
        --data ../shared/data/dsb2018 --out docs/napari_widget.png

(QT_QPA_PLATFORM=offscreen is set here; Xvfb provides the OpenGL that napari's canvas needs.)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="the DSB 2018 folder")
    p.add_argument("--image", help="image id (default: the first 520x696 fluorescence image)")
    p.add_argument("--out", default="docs/napari_widget.png")
    args = p.parse_args()

    import napari
    import numpy as np
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    from pdeseg.napari_plugin._widget import SegmentWidget

    root = Path(args.data)
    rows = [line.split("\t") for line in (root / "domains.tsv").read_text().splitlines()[1:]]
    image_id = args.image or next(r[0] for r in rows if r[1] == "fluorescence" and r[2] == "520x696")
    png = root / "stage1_train" / image_id / "images" / f"{image_id}.png"
    viewer = napari.Viewer(show=False)
    viewer.window._qt_window.resize(1400, 860)
    viewer.add_image(np.asarray(Image.open(png)), name="DSB nuclei", rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (pdeseg)", area="right")
    widget.checkpoint.setText(str(args.checkpoint))
    widget.layer.setCurrentText("DSB nuclei")
    widget.probabilities.setChecked(True)
    worker = widget.run()
    start = time.time()
    while not widget.run_button.isEnabled() and time.time() - start < 300:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    assert worker is not None and "cells" in widget.status.text(), widget.status.text()
    viewer.layers["DSB nuclei cells"].contour = 2
    viewer.reset_view()
    for _ in range(10):
        QApplication.processEvents()
    viewer.screenshot(args.out, canvas_only=False)
    print(f"{args.out}: {widget.status.text()}")
    viewer.close()


if __name__ == "__main__":
    main()
