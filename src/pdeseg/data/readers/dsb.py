"""Reader for the 2018 Data Science Bowl nuclei set (Caicedo et al., Nat. Methods 2019).

Layout (``stage1_train``, with the community mask fixes)::

    dsb2018/
      domains.tsv                        image_id <tab> domain [<tab> more columns]
      stage1_train/
        <id>/images/<id>.png             RGBA or RGB (the alpha channel is dropped)
        <id>/masks/<mask-id>.png         one 0/255 mask per nucleus
      stage1_test/                       (prediction input) <id>/images/<id>.png, no masks

The dsb2018 folder is read as its ``stage1_train``, or, without one, as its only stage folder
(``stage1_test``); with several stage folders and no ``stage1_train`` the reader asks for one
of them. One image folder is one case (:class:`~pdeseg.data.readers.cells.ImageCase`, id = the folder name).
Its objects are the nuclei: the mask files, in sorted file-name order, become ids 1..N of one
instance image (:class:`DsbNuclei`). Rules:

* **Overlaps.** The fixed masks can overlap by a few pixels (3 pixels in 2 of the 223
  images here). A pixel claimed by several nuclei goes to the **smallest** of them (by pixel
  count; between equal sizes, to the first in file order), so that a small nucleus is never
  swallowed by a big neighbour. The number of such pixels is logged (and returned by
  :func:`assemble_nuclei`). A nucleus left with no pixel of its own (a duplicate mask) is an
  error naming its file.
* **Empty masks.** An all-zero mask describes no nucleus: it is left out with a warning naming
  the file, and the ids stay consecutive (1..N over the non-empty masks).
* **Domains.** Each image's domain comes from ``domains.tsv`` (in ``root`` or beside
  ``stage1_train``; the ``domains`` option names another file). A header line is required with
  the columns ``image_id`` and ``domain`` (extra columns are ignored). An image missing from
  the table gets domain ``''`` and one warning lists such images; ids in the table without
  an image folder give one warning. Without a table every domain is ``''``.

Checked when listing (a case error, recorded in ``skipped`` when given): the ``images/`` folder
and its ``<id>.<ext>`` file (a single image file named after the folder), and with
``require_label`` a ``masks/`` folder holding at least one mask. Checked when loading: mask
files readable, binary (0 and one other value) and of the image's size.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdeseg.data.readers.cells import (
    CellDataError,
    ImageCase,
    binary_mask,
    check_channels,
    check_targets,
    find_image_files,
    read_image_file,
)

log = logging.getLogger(__name__)

DOMAINS_FILE = "domains.tsv"
_LAYOUT = ("stage1_train/<id>/images/<id>.png and stage1_train/<id>/masks/<mask-id>.png "
           "(root = the dsb2018 folder, one stage folder such as stage1_train or stage1_test, or one <id> folder)")
#: The download's stage folders (``stage1_train``, ``stage1_test``, ``stage2_test_final``).
_STAGE = re.compile(r"stage\d+_\w+")


@dataclass(frozen=True)
class DsbNuclei:
    """The ``objects`` reader of a DSB image: its per-nucleus mask files, assembled into one
    instance image by :func:`assemble_nuclei` (a class, not a closure, so that cases pickle
    into DataLoader workers)."""

    mask_files: tuple[Path, ...]

    def __call__(self, shape: tuple[int, int]) -> np.ndarray:
        instances, overlap = assemble_nuclei(self.mask_files, shape)
        if overlap:
            folder = self.mask_files[0].parent if self.mask_files else "?"
            log.info("%s: %d pixel(s) claimed by several nuclei, each given to the smallest", folder, overlap)
        return instances


def assemble_nuclei(mask_files: Sequence[Path], shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """One instance image from one binary mask file per nucleus.

    Args:
        mask_files: the nuclei, in id order (id ``k`` is the ``k``-th non-empty mask).
        shape: the image's ``(H, W)``; every mask must have it.

    Returns:
        ``(instances, overlap)``: ``(H, W)`` int32 (0 background, 1..N), and the number of
        pixels claimed by more than one mask (each given to the smallest nucleus claiming it;
        equal sizes: the first).

    Raises:
        CellDataError: an unreadable or non-binary mask, a mask of another size than the
            image, or a nucleus left without any pixel (covered by smaller or equal ones).
    """
    shape = tuple(int(s) for s in shape)
    pixels: list[np.ndarray] = []  # flat indices of each nucleus
    files: list[Path] = []
    for path in mask_files:
        data = read_image_file(path)
        if data.shape[:2] != shape:
            raise CellDataError(f"{path}: nucleus mask of size {data.shape[:2]} for an image of size {shape}")
        mask = binary_mask(data, path, "nucleus mask")
        if not mask.any():
            warnings.warn(f"{path}: empty nucleus mask (all zero), left out", stacklevel=2)
            continue
        pixels.append(np.flatnonzero(mask))
        files.append(path)
    flat = np.zeros(shape[0] * shape[1], np.int32)
    if not pixels:
        return flat.reshape(shape), 0
    claims = np.bincount(np.concatenate(pixels), minlength=flat.size)
    sizes = np.array([len(p) for p in pixels])
    # paint the largest first and the smallest last, so the smallest keeps contested pixels;
    # among equal sizes the first file is painted last and wins
    order = np.lexsort((np.arange(len(pixels)), sizes))[::-1]
    for k in order:
        flat[pixels[k]] = k + 1
    counts = np.bincount(flat, minlength=len(pixels) + 1)
    lost = np.flatnonzero(counts[1:] == 0)
    if len(lost):
        raise CellDataError(f"{files[lost[0]]}: nucleus entirely covered by other (smaller or equal, earlier) nuclei's "
                            f"masks: a duplicate mask?")
    return flat.reshape(shape), int((claims > 1).sum())


# --------------------------------------------------------------------------------------
# domains table
# --------------------------------------------------------------------------------------


def read_domains_tsv(path: Path, id_columns: Sequence[str] = ("image_id",)) -> dict[str, str]:
    """``image id -> domain`` from a tab-separated table with a header line.

    Args:
        id_columns: accepted names of the id column (the first present is used).

    Raises:
        CellDataError: missing or unreadable file, no header, no id or ``domain`` column, an
            id listed twice with different domains.
    """
    path = Path(path)
    if not path.is_file():
        raise CellDataError(f"{path}: domains table not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CellDataError(f"{path}: cannot read domains table ({type(exc).__name__}: {exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise CellDataError(f"{path}: empty domains table (expected a header with {id_columns[0]} and domain)")
    header = [h.strip() for h in rows[0]]
    id_col = next((header.index(c) for c in id_columns if c in header), None)
    if id_col is None or "domain" not in header:
        raise CellDataError(f"{path}: the domains table needs a tab-separated header with columns "
                            f"{' or '.join(id_columns)} and domain, got {header}")
    dom_col = header.index("domain")
    domains: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(id_col, dom_col):
            raise CellDataError(f"{path}: line {line} has {len(row)} column(s), expected at least {max(id_col, dom_col) + 1}")
        key, domain = row[id_col].strip(), row[dom_col].strip()
        if key in domains and domains[key] != domain:
            raise CellDataError(f"{path}: {key} is listed twice with domains {domains[key]!r} and {domain!r}")
        domains[key] = domain
    return domains


def resolve_domains(option: str | Path | None, candidates: Sequence[Path], base: Path) -> Path | None:
    """The domains table to read: ``option`` (relative paths tried against ``base`` first) or
    the first existing candidate; None when there is none.

    Raises:
        CellDataError: ``option`` names a file that does not exist.
    """
    if option:
        path = Path(option).expanduser()
        if not path.is_absolute() and (base / path).is_file():
            return base / path
        if not path.is_file():
            raise CellDataError(f"data.format_options.domains: domains table {path} not found")
        return path
    return next((c for c in candidates if c.is_file()), None)


def apply_domains(cases: list[ImageCase], table: dict[str, str] | None, path: Path | None,
                  known: Sequence[str] = ()) -> None:
    """Set each case's domain from ``table`` (warning once about images missing from it and
    once about table ids that are neither a case nor in ``known``, e.g. skipped cases)."""
    if table is None:
        return
    missing = []
    for case in cases:
        if case.case_id in table:
            case.domain = table[case.case_id]
        else:
            missing.append(case.case_id)
    if missing:
        warnings.warn(f"{path}: {len(missing)} image(s) not listed, given domain '': {_some(missing)}", stacklevel=3)
    found = {c.case_id for c in cases} | set(known)
    extra = [k for k in table if k not in found]
    if extra:
        warnings.warn(f"{path}: {len(extra)} listed image id(s) not found: {_some(extra)}", stacklevel=3)


def _some(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# --------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------


def _case_from_folder(folder: Path, require_label: bool, targets: str) -> ImageCase:
    image_id = folder.name
    images_dir = folder / "images"
    if not images_dir.is_dir():
        if any((sub / "images").is_dir() for sub in folder.iterdir() if sub.is_dir()):
            raise CellDataError(f"{folder} is a folder of DSB image folders (<id>/images/<id>.png), not one image "
                                f"folder: pass {folder} itself as the input")
        raise CellDataError(f"{images_dir}: missing images/ folder (a DSB image folder <id> holds "
                            f"images/<id>.png, here images/{image_id}.png, as in stage1_train/<id>/images/<id>.png)")
    files = find_image_files(images_dir)
    if not files:
        raise CellDataError(f"{images_dir}: no image file (expected {image_id}.png)")
    named = [f for f in files if f.stem == image_id]
    if not named:
        raise CellDataError(f"{files[0]}: image id {files[0].stem!r} differs from its folder name {image_id!r}")
    if len(files) > 1:
        other = next(f for f in files if f != named[0])
        raise CellDataError(f"{other}: a second image file in {images_dir} (expected only {named[0].name})")
    masks_dir = folder / "masks"
    masks = tuple(find_image_files(masks_dir)) if masks_dir.is_dir() else ()
    if not masks and require_label:
        raise CellDataError(f"{masks_dir}: {'no mask files' if masks_dir.is_dir() else 'missing masks/ folder'} "
                            f"(expected one <mask-id>.png per nucleus)")
    return ImageCase(image_id, folder, named[0], targets=targets, objects=DsbNuclei(masks) if masks else None,
                     label_files=masks)


def _stage_folder(root: Path) -> Path:
    """The folder of image folders below ``root``: ``stage1_train`` when there is one (the
    labelled images), else the only stage folder (``stage1_test``, ...), else ``root`` itself.

    Raises:
        CellDataError: several stage folders and no ``stage1_train`` (the message names them).
    """
    stages = [f for f in sorted(root.iterdir()) if f.is_dir() and _STAGE.fullmatch(f.name)]
    if (root / "stage1_train").is_dir():
        if len(stages) > 1:
            log.info("%s: reading stage1_train (pass another stage folder itself to read it instead)", root)
        return root / "stage1_train"
    if len(stages) > 1:
        raise CellDataError(f"{root} holds the DSB stage folders {', '.join(f.name for f in stages)}: pass the one to "
                            f"read as the input (e.g. {stages[0]})")
    return stages[0] if stages else root


def find_dsb_cases(root: str | Path, modalities: Sequence[str] = ("grey",), require_label: bool = True,
                   skipped: dict[str, str] | None = None, targets: str = "semantic",
                   domains: str | Path | None = None) -> list[ImageCase]:
    """DSB 2018 images under ``root`` (the dsb2018 folder, one of its stage folders, or one image
    folder), sorted by id. In the dsb2018 folder the images of ``stage1_train`` are read, or,
    without it, those of its only stage folder (``stage1_test``, say).

    Args:
        modalities: channels (see :data:`pdeseg.data.readers.cells.CHANNELS`).
        require_label: every image needs a ``masks/`` folder with at least one mask; without
            it, images without masks are unlabelled cases.
        skipped: when given, an inconsistent image folder is left out and recorded here
            (folder name -> reason) instead of stopping the listing.
        targets: ``semantic`` or ``boundary`` (see :mod:`pdeseg.data.readers.cells`).
        domains: another domains table than ``domains.tsv`` (see the module docstring).

    Raises:
        CellDataError: missing root or no images, several stage folders and no
            ``stage1_train``, a bad domains table, (without ``skipped``) an inconsistent image
            folder.
        DataError: an unknown ``targets`` value.
    """
    check_targets(targets)
    check_channels(modalities)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CellDataError(f"data folder not found: {root}")
    single = (root / "images").is_dir() and not (root / "stage1_train").is_dir()  # one image folder
    stage = root.parent if single else _stage_folder(root)
    folders = [root] if single else [f for f in sorted(stage.iterdir()) if f.is_dir() and not f.name.startswith(".")]
    cases = []
    for folder in folders:
        try:
            cases.append(_case_from_folder(folder, require_label, targets))
        except CellDataError as exc:
            if skipped is None:
                raise
            skipped[folder.name] = str(exc)
    if not cases and not skipped:
        raise CellDataError(f"{root}: no DSB 2018 images found (expected {_LAYOUT})")
    table_path = resolve_domains(domains, [root / DOMAINS_FILE, stage.parent / DOMAINS_FILE], root)
    table = read_domains_tsv(table_path) if table_path else None
    if single and table is not None:  # one image folder: only its row of the table matters
        table = {k: v for k, v in table.items() if k == root.name}
    apply_domains(cases, table, table_path, [f.name for f in folders])
    return sorted(cases, key=lambda c: c.case_id)
