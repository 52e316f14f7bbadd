"""Parsing COCO instance files of LIVECell's size within a stated memory bound.

LIVECell's release holds about 1.6 million outlines in json files of several hundred MB. A
plain ``json.load`` builds every coordinate as a Python float inside a Python list (about 32
bytes each, some 6 times the file's size in all, measured in
``benchmarks/bench_livecell_read.py``) and keeps that tree while the reader works.

:func:`load_coco` reads the top-level object one value at a time with
:meth:`json.JSONDecoder.raw_decode` and turns each element of ``annotations`` into its compact
form as soon as it is parsed, so only one annotation's Python objects exist at a time:

* the fields a reader of instance masks uses (``id``, ``image_id``, ``category_id``,
  ``segmentation``; ``bbox``, ``area``, ``iscrowd`` and the rest are dropped);
* a polygon segmentation as a tuple of float64 arrays, one per part (8 bytes a coordinate,
  exact: the same doubles ``pycocotools`` rasterises). A polygon that is not plain numbers (a
  string, a nested list, ``true``/``false``) is kept as parsed, so the reader's checks report
  it as before; RLE segmentations are kept as parsed (a string or a list of run lengths).

Peak memory is the file's text (one byte a character for ASCII json, held while parsing; the
bytes read are freed once decoded) plus the compact annotations (about 8 bytes a coordinate),
about 2.5 times the file's size at LIVECell's scale instead of 6 to 9 (numbers in the
benchmark's docstring and in the README). The values other than ``annotations`` (``images``,
``categories``, ``info``) are parsed whole; they are small.

Errors: :class:`json.JSONDecodeError` and :class:`UnicodeDecodeError` as the json module
raises them (callers name the file); a document that is not an object is returned as parsed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ANNOTATION_FIELDS", "compact_annotation", "compact_segmentation", "load_coco"]

#: The fields of an annotation kept by :func:`compact_annotation`.
ANNOTATION_FIELDS = ("id", "image_id", "category_id", "segmentation")

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def compact_segmentation(segmentation: Any) -> Any:
    """A polygon segmentation (a list of ``[x1, y1, x2, y2, ...]`` lists of numbers) as a tuple of
    float64 arrays; anything else (RLE, malformed polygons) unchanged."""
    if not (isinstance(segmentation, list) and segmentation and all(isinstance(p, list) for p in segmentation)):
        return segmentation
    parts = []
    for part in segmentation:
        if any(v is True or v is False for v in part):  # numpy would read them as 1.0 / 0.0
            return segmentation
        try:
            arr = np.array(part, dtype=np.float64)  # None becomes NaN: the finite check names it
        except (TypeError, ValueError):  # strings, nested lists: kept for the reader's own message
            return segmentation
        if arr.ndim != 1:
            return segmentation
        parts.append(arr)
    return tuple(parts)


def compact_annotation(annotation: Any) -> Any:
    """The fields of :data:`ANNOTATION_FIELDS`, the polygon compacted; a non-object unchanged."""
    if not isinstance(annotation, dict):
        return annotation
    out = {k: annotation[k] for k in ANNOTATION_FIELDS if k in annotation}
    if "segmentation" in out:
        out["segmentation"] = compact_segmentation(out["segmentation"])
    return out


class _Text:
    """A json text and a cursor, for reading the top-level object one value at a time."""

    def __init__(self, text: str):
        self.text, self.decoder = text, json.JSONDecoder()

    def skip(self, i: int) -> int:
        return _WHITESPACE.match(self.text, i).end()

    def char(self, i: int) -> str:
        return self.text[i] if i < len(self.text) else ""

    def value(self, i: int) -> tuple[Any, int]:
        return self.decoder.raw_decode(self.text, i)

    def expect(self, i: int, chars: str, what: str) -> str:
        c = self.char(i)
        if not c or c not in chars:
            raise json.JSONDecodeError(f"Expecting {what}", self.text, i)
        return c

    def elements(self, i: int, convert) -> tuple[list, int]:
        """A json array (or an object, whose values are taken in order) starting at ``i``, each
        element passed through ``convert`` as soon as it is parsed."""
        close = "]" if self.text[i] == "[" else "}"
        out: list = []
        i = self.skip(i + 1)
        if self.char(i) == close:
            return out, i + 1
        while True:
            if close == "}":
                key, i = self.value(i)
                if not isinstance(key, str):
                    raise json.JSONDecodeError("Expecting property name enclosed in double quotes", self.text, i)
                i = self.skip(i)
                self.expect(i, ":", "':' delimiter")
                i = self.skip(i + 1)
            item, i = self.value(i)
            out.append(convert(item))
            i = self.skip(i)
            if self.expect(i, "," + close, f"',' or '{close}'") == close:
                return out, i + 1
            i = self.skip(i + 1)


def load_coco(path: str | Path) -> Any:
    """Parse a COCO json file, compacting ``annotations`` element by element (see the module
    docstring). ``annotations`` given as an object keyed by id (as some LIVECell files do) comes
    back as the list of its values.

    Raises:
        OSError: the file cannot be read.
        UnicodeDecodeError, json.JSONDecodeError: not UTF-8 json.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    t = _Text(text)
    i = t.skip(0)
    if t.char(i) != "{":  # not an object: the json module's own result or error
        return json.loads(text)
    out: dict[str, Any] = {}
    i = t.skip(i + 1)
    if t.char(i) == "}":
        i += 1
    else:
        while True:
            key, i = t.value(i)
            if not isinstance(key, str):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
            i = t.skip(i)
            t.expect(i, ":", "':' delimiter")
            i = t.skip(i + 1)
            if key == "annotations" and t.char(i) in ("[", "{"):
                out[key], i = t.elements(i, compact_annotation)
            else:
                out[key], i = t.value(i)
            i = t.skip(i)
            if t.expect(i, ",}", "',' or '}'") == "}":
                i += 1
                break
            i = t.skip(i + 1)
    if t.skip(i) != len(text):
        raise json.JSONDecodeError("Extra data", text, t.skip(i))
    return out
