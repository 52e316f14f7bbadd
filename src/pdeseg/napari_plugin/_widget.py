"""The dock widget: choose a shipped model (``pdeseg models``) or a checkpoint and an image
layer, press Segment.

The work runs in a napari worker thread (the GUI stays responsive), reports its progress in
the widget's bar, and ends by adding a Labels layer (cells or classes, with the image's
scale and translation) and, when asked, one Image layer per class probability. Every error
(a missing or broken checkpoint, a layer the model cannot take) is shown as one napari
error notification; nothing is raised into napari.
"""

from __future__ import annotations

import logging
import numpy as np
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                            QPushButton, QVBoxLayout, QWidget)

from pdeseg.napari_plugin._segment import CHECKPOINT_FILE, model_choices

log = logging.getLogger(__name__)


def _one_line(exc: BaseException) -> str:
    from pdeseg.errors import PdesegError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"pdeseg: {text}" if isinstance(exc, PdesegError) else f"pdeseg: {type(exc).__name__}: {text}"


class SegmentWidget(QWidget):
    """Segment the chosen image layer with a pdeseg checkpoint (see the module docstring).

    Args:
        napari_viewer: the viewer (napari passes it).
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self._segmenters: dict = {}
        self.model = QComboBox()  # the shipped models whose weights are installed, or a checkpoint file
        self.model.addItems(model_choices())
        self.model.currentTextChanged.connect(self._model_chosen)
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText("best.pt of a pdeseg run")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint)
        row.addWidget(browse)
        self.layer = QComboBox()
        self.probabilities = QCheckBox("add probability maps")
        self.tta = QCheckBox("test-time mirroring")
        self.run_button = QPushButton("Segment")
        self.run_button.clicked.connect(self.run)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("")
        form = QFormLayout()
        form.addRow("model", self.model)
        form.addRow("checkpoint", row)
        form.addRow("image layer", self.layer)
        layout = QVBoxLayout()
        layout.addLayout(form)
        layout.addWidget(self.probabilities)
        layout.addWidget(self.tta)
        layout.addWidget(self.run_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.setLayout(layout)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.reordered):
            event.connect(self._refresh_layers)
        self._refresh_layers()

    # --- choices -------------------------------------------------------------------------

    def _model_chosen(self, text: str) -> None:
        self.checkpoint.setEnabled(text == CHECKPOINT_FILE)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "pdeseg checkpoint", "", "checkpoints (*.pt);;all files (*)")
        if path:
            self.checkpoint.setText(path)

    def _image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.layer.clear()
        self.layer.addItems(names)
        if current in names:
            self.layer.setCurrentText(current)
        elif self.viewer.layers.selection.active is not None and self.viewer.layers.selection.active.name in names:
            self.layer.setCurrentText(self.viewer.layers.selection.active.name)

    # --- running -------------------------------------------------------------------------

    def _error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(message)
        self.run_button.setEnabled(True)
        show_error(message)

    def run(self):
        """Start segmenting the chosen layer in a worker thread; returns the worker (or None
        when the choices are incomplete, after a notification)."""
        from napari.qt.threading import create_worker

        name = self.layer.currentText()
        layer = next((l for l in self._image_layers() if l.name == name), None)
        if layer is None:
            self._error("pdeseg: choose an image layer to segment")
            return None
        chosen = self.model.currentText()
        checkpoint = self.checkpoint.text().strip() if chosen in ("", CHECKPOINT_FILE) else chosen
        if not checkpoint:
            self._error("pdeseg: choose a checkpoint (best.pt of a pdeseg run)")
            return None
        self.run_button.setEnabled(False)
        self.progress.setValue(0)
        self.status.setText(f"segmenting {name} ...")
        worker = create_worker(self._work, checkpoint, layer.data, bool(layer.rgb), name, tuple(layer.scale),
                               self.probabilities.isChecked(), self.tta.isChecked(), _start_thread=False,
                               _ignore_errors=True)  # ours: one notification (napari would add a traceback)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda result: self._on_done(result, layer))
        worker.errored.connect(lambda exc: self._error(_one_line(exc)))
        self.worker = worker
        worker.start()
        return worker

    def _segmenter(self, checkpoint: str, tta: bool):
        import pdeseg

        from pdeseg.pretrained import resolve

        key = (str(resolve(checkpoint).expanduser().resolve()), tta)
        if key not in self._segmenters:
            self._segmenters.clear()
            self._segmenters[key] = pdeseg.load(checkpoint, tta=tta)
        return self._segmenters[key]

    def _work(self, checkpoint, data, rgb, name, scale, probabilities, tta):
        """Runs in the worker thread: yields ``(fraction, message)``, returns the Segmentation."""
        from pdeseg.napari_plugin._segment import segment_layer

        import queue
        import threading

        yield 0.0, "loading the checkpoint"
        segmenter = self._segmenter(checkpoint, tta)
        steps: queue.Queue = queue.Queue()
        box: dict = {}

        def compute() -> None:  # the progress callback runs here; the generator relays it live
            try:
                box["result"] = segment_layer(segmenter, data, rgb=rgb, name=name, scale=scale,
                                              probabilities=probabilities, progress=lambda f, m: steps.put((f, m)))
            except BaseException as exc:  # handed to the worker's errored signal below
                box["error"] = exc
            finally:
                steps.put(None)

        thread = threading.Thread(target=compute, name="pdeseg-segment", daemon=True)
        thread.start()
        while (step := steps.get()) is not None:
            yield step
        thread.join()
        if "error" in box:
            raise box["error"]
        yield 1.0, "done"
        return box["result"]

    def _on_progress(self, step) -> None:
        fraction, message = step
        self.progress.setValue(int(round(100 * fraction)))
        self.status.setText(message)

    def _on_done(self, result, layer) -> None:
        from napari.utils.notifications import show_info

        scale = tuple(layer.scale)[-result.labels.ndim:]
        translate = tuple(layer.translate)[-result.labels.ndim:]
        kind = "cells" if result.instances else "classes"
        self.viewer.add_labels(result.labels, name=f"{layer.name} {kind}", scale=scale, translate=translate)
        for cls, prob in result.probabilities.items():
            self.viewer.add_image(prob, name=f"{layer.name} P({cls})", scale=scale, translate=translate,
                                  colormap="magma", contrast_limits=(0.0, 1.0), blending="additive", visible=False)
        count = f"{int(np.unique(result.labels[result.labels > 0]).size)} cells" if result.instances else "classes"
        self.progress.setValue(100)
        self.status.setText(f"{layer.name}: {count}" + (f"; {result.note}" if result.note else ""))
        self.run_button.setEnabled(True)
        if result.note:
            show_info(f"pdeseg: {result.note}")
