"""Which data format a folder holds, from its layout alone (no image is read).

Used by ``pdeseg fingerprint``, ``plan``, ``export-nnunet`` and ``train --data`` without a
config. The rules, tried in this order (the first that matches wins):

=============  ==================================================================
format         marker
=============  ==================================================================
msd            ``dataset.json`` beside ``imagesTr/``
dsb2018        ``stage1_train/`` (or ``domains.tsv`` with image folders holding ``images/`` and ``masks/``)
drive          ``1st_manual/`` in the folder or in its ``training/``
livecell       ``images/`` beside a ``*.json`` file (COCO annotations) in the folder or in
               ``annotations/`` or one folder below it (LIVECell's release keeps
               ``annotations/LIVECell/livecell_coco_{train,val,test}.json``)
isbi_em        ``images/`` and ``labels/``
cell_folder    ``images/`` and ``masks/``
lgg            folders holding ``*_mask.tif`` files (or ``kaggle_3m/``)
brats          folders holding ``*_flair.nii[.gz]``, ``*-t2f.nii.gz`` or ``*_seg.nii[.gz]``
=============  ==================================================================

A folder that matches none gets a :class:`~pdeseg.errors.DataError` that says what was
looked for and how to name the format (``--format``).
"""

from __future__ import annotations

from pathlib import Path

from pdeseg.errors import DataError

_BRATS_PATTERNS = ("*_flair.nii*", "*-t2f.nii*", "*_seg.nii*", "*-seg.nii*")


def _subfolders(root: Path, limit: int = 50) -> list[Path]:
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            out.append(p)
            if len(out) >= limit:
                break
    return out


def _has(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(p), None) is not None for p in patterns)


def detect_format(root: str | Path) -> str:
    """The registered format name of the data set at ``root``.

    Raises:
        DataError: ``root`` is missing, empty, or matches no known layout.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError(f"{root} is empty: point --data at a data set folder")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "msd"
    if (root / "stage1_train").is_dir():
        return "dsb2018"
    if (root / "domains.tsv").is_file() and any((f / "images").is_dir() and (f / "masks").is_dir() for f in _subfolders(root)):
        return "dsb2018"
    if (root / "1st_manual").is_dir() or (root / "training" / "1st_manual").is_dir():
        return "drive"
    if (root / "images").is_dir():
        if any(next(root.glob(p), None) is not None for p in ("*.json", "annotations/*.json", "annotations/*/*.json")):
            return "livecell"
        if (root / "labels").is_dir():
            return "isbi_em"
        if (root / "masks").is_dir():
            return "cell_folder"
    if (root / "kaggle_3m").is_dir():
        return "lgg"
    folders = [root, *_subfolders(root)]
    if any(_has(f, ("*_mask.tif",)) for f in folders):
        return "lgg"
    if any(_has(f, _BRATS_PATTERNS) for f in folders):
        return "brats"
    raise DataError(
        f"{root}: no known data layout (looked for an MSD/nnU-Net task with dataset.json and imagesTr/, BraTS case "
        "folders, LGG *_mask.tif slices, DSB stage1_train/, DRIVE 1st_manual/, images/ with labels/, masks/ or a COCO "
        "json); name the format with --format")
