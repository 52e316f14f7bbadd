"""The one decode step (issue 34): logits become classes, probabilities and cells in
``pdeseg.inference.decode`` only, checked over the source; and what it does, on tiny tensors."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from pdeseg.data.pipeline.representations import Representation
from pdeseg.inference.decode import Segmentation, decode, decode_batch
from pdeseg.nn.output import background_logits, class_probabilities, make_head
from pdeseg.nn.postprocess import PostProcessing

SRC = Path(__file__).resolve().parents[1] / "src" / "pdeseg"

#: Functions of pdeseg.nn.output that turn logits into labels or probabilities.
DECODERS = {"predicted_classes", "class_probabilities", "labels_from_region_probabilities", "region_probabilities", "extra_maps"}
#: Words that name a model's output in an expression handed to argmax / softmax / sigmoid.
OUTPUT_WORDS = ("logit", "prob", "output", "predict", "network", "model")


def _scanned() -> list[Path]:
    paths = [SRC / "api.py"]
    for package in ("inference", "experiments", "viz", "napari_plugin"):
        paths += sorted((SRC / package).rglob("*.py"))
    return [p for p in paths if p != SRC / "inference" / "decode.py"]


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def decoding_outside(source: str) -> list[str]:
    """Where ``source`` turns a model's output into labels itself: an import or call of a
    :data:`DECODERS` function, a call of a representation's ``.instances(...)``, or an
    ``argmax`` / ``softmax`` / ``sigmoid`` of an expression that names a model's output
    (``np.argmax`` of a label count, say, is not decoding and is not flagged)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "pdeseg.nn.output":
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names if a.name in DECODERS]
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name in DECODERS:
            found.append(f"line {node.lineno}: calls {name}")
        elif name == "instances" and isinstance(node.func, ast.Attribute):
            found.append(f"line {node.lineno}: calls .instances() of a representation")
        elif name in ("argmax", "softmax", "sigmoid"):
            target = (
                node.func.value if isinstance(node.func, ast.Attribute) and not node.args else (node.args[0] if node.args else node.func)
            )
            text = ast.unparse(target).lower()
            if any(word in text for word in OUTPUT_WORDS):
                found.append(f"line {node.lineno}: {name} of {ast.unparse(target)}")
    return found


def test_the_source_check_finds_decoding_and_ignores_other_code():
    bad = """
from pdeseg.nn.output import predicted_classes, head_of
a = predicted_classes(logits, head)
b = out.class_probabilities(x)
c = rep.instances(cell, classes, maps)
d = logits.argmax(dim=1)
e = torch.argmax(self.predict_logits(x), dim=1)
f = torch.softmax(model_output, 1)
"""
    assert len(decoding_outside(bad)) == 7, decoding_outside(bad)
    fine = """
from pdeseg.nn.output import head_of, mean_output
z = int(np.argmax((label > 0).sum(axis=(0, 1))))
n = case.instances
k = np.argmax(np.bincount(lab.ravel())[1:])
"""
    assert decoding_outside(fine) == []


def test_no_module_above_decode_turns_logits_into_labels_itself():
    scanned = _scanned()
    assert len(scanned) > 20 and SRC / "inference" / "predict.py" in scanned and SRC / "inference" / "score.py" in scanned
    offences = {str(p.relative_to(SRC)): hits for p in scanned if (hits := decoding_outside(p.read_text()))}
    assert not offences, f"decode through pdeseg.inference.decode only: {offences}"
    assert decoding_outside((SRC / "inference" / "decode.py").read_text()), "the check sees decode.py's own decoding"


def test_segmentation_is_reexported_by_predict():
    from pdeseg.inference import predict

    assert predict.Segmentation is Segmentation


def test_decode_takes_the_heads_rule_and_resamples_to_the_output_grid():
    head = make_head("softmax", 3)
    logits = torch.zeros(3, 4, 4, 2)
    logits[1, :2] = 5.0  # class 1 in the first half of x, class 2 in the second
    logits[2, 2:] = 5.0
    seg = decode(logits, head, out_shape=(8, 6, 3), with_probabilities=True)
    assert seg.classes.shape == (8, 6, 3) and seg.classes.dtype == np.uint8
    assert (seg.classes[:4] == 1).all() and (seg.classes[4:] == 2).all()
    assert seg.probabilities.shape == (3, 8, 6, 3) and seg.probabilities.dtype == np.float32
    np.testing.assert_allclose(seg.probabilities.sum(0), 1.0, atol=1e-5)
    assert seg.instances is None  # no representation: no cells
    same = decode(logits, head)
    assert same.classes.shape == (4, 4, 2) and same.probabilities is None
    sigmoid = decode(torch.tensor([[[-1.0, 2.0]]]), make_head("sigmoid", 2))
    assert sigmoid.classes.tolist() == [[0, 1]]


def test_decode_pastes_a_crop_box_back_with_background_outside():
    head = make_head("softmax", 2)
    logits = torch.tensor([-5.0, 5.0]).view(2, 1, 1, 1).expand(2, 2, 3, 2).clone()  # class 1 everywhere in the box
    box = ((1, 3), (2, 5), (0, 2))
    seg = decode(logits, head, box=box, full_shape=(4, 6, 2), with_probabilities=True)
    assert seg.classes.shape == (4, 6, 2)
    assert seg.classes.sum() == 2 * 3 * 2 and (seg.classes[1:3, 2:5] == 1).all()
    outside = class_probabilities(background_logits(head, 2, (1, 1, 1))[None], head)[0, :, 0, 0, 0].numpy()
    np.testing.assert_allclose(seg.probabilities[:, 0, 0, 0], outside)
    assert seg.probabilities[1, 1, 2, 0] > 0.99
    with pytest.raises(ValueError, match="full_shape"):
        decode(logits, head, box=box)


def test_decode_applies_post_processing_to_the_classes_but_not_the_probabilities():
    head = make_head("softmax", 2)
    logits = torch.full((2, 10, 10, 1), -5.0)
    logits[0] = 5.0
    logits[1, 1:6, 1:6] = 5.0  # a large component ...
    logits[0, 1:6, 1:6] = -5.0
    logits[1, 8, 8] = 5.0  # ... and a one-pixel island
    logits[0, 8, 8] = -5.0
    plain = decode(logits, head)
    kept = decode(logits, head, postprocessing=PostProcessing(min_component_fraction=0.5), with_probabilities=True)
    assert plain.classes[8, 8, 0] == 1 and kept.classes[8, 8, 0] == 0 and kept.classes.sum() == 25
    assert kept.probabilities[1, 8, 8, 0] > 0.99  # probabilities are the model's, before the rules
    off = decode(logits, head, postprocessing=PostProcessing())
    np.testing.assert_array_equal(off.classes, plain.classes)


def test_decode_finds_the_cells_of_a_cell_head_slice_by_slice():
    head = make_head("softmax", 2)
    logits = torch.full((2, 12, 12, 2), -5.0)
    logits[0] = 5.0
    for z in range(2):
        for x0, y0 in ((1, 1), (7, 7)):  # two separate cells in each slice
            logits[1, x0 : x0 + 4, y0 : y0 + 4, z] = 5.0
            logits[0, x0 : x0 + 4, y0 : y0 + 4, z] = -5.0
    rep = Representation("semantic")
    seg = decode(logits, head, representation=rep, min_size=1)
    assert seg.instances.shape == (12, 12, 2) and seg.instances.dtype == np.int32
    for z in range(2):  # ids restart in each slice
        assert sorted(np.unique(seg.instances[..., z]).tolist()) == [0, 1, 2]
    assert (seg.instances > 0).sum() == (seg.classes > 0).sum() == 2 * 2 * 16
    assert decode(logits, head, representation=rep, with_cells=False).instances is None
    big = decode(logits, head, representation=rep, min_size=17)  # every cell is 16 pixels: all dropped
    assert big.instances.max() == 0
    valid = np.ones((12, 12, 2), bool)
    valid[6:] = False  # outside (a tile's padding): background before the cells are found
    half = decode(logits, head, representation=rep, valid=valid, min_size=1)
    assert half.classes[6:].max() == 0 and sorted(np.unique(half.instances[..., 0]).tolist()) == [0, 1]


def test_decode_batch_is_the_heads_rule_per_item():
    head = make_head("softmax", 3)
    logits = torch.randn(4, 3, 5, 6)
    np.testing.assert_array_equal(decode_batch(logits, head).numpy(), logits.argmax(dim=1).numpy())
    for i in range(4):
        np.testing.assert_array_equal(decode(logits[i], head).classes, decode_batch(logits, head)[i].numpy())
