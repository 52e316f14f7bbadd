"""Deterministic patient-level splits (a patient's slices never land on two sides)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
#: The split of planned runs and of ``export-nnunet`` without a config: train / val / test by case.
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def _scaled_counts(counts: list[int], n: int) -> list[int]:
    """Scale counts proportionally to ``n`` cases (largest remainder, each non-zero part >= 1)."""
    total = sum(counts)
    raw = [c * n / total for c in counts]
    out = [int(np.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - out[i], reverse=True)[: n - sum(out)]:
        out[i] += 1
    for i in (1, 2):  # keep val/test non-empty when asked for and possible
        if counts[i] > 0 and out[i] == 0 and out[0] > 1:
            out[i], out[0] = 1, out[0] - 1
    return out


def split_cases(
    case_ids: list[str],
    fractions: list[float] | None = None,
    counts: list[int] | None = None,
    seed: int = 0,
    scale_counts: bool = True,
) -> dict[str, list[str]]:
    """Split case ids into train/val/test deterministically (sorted ids, seeded permutation).

    Args:
        case_ids: unique patient/case ids.
        fractions: three fractions summing to 1 (val and test are rounded, at least one
            case each when the fraction is > 0 and there are >= 3 cases).
        counts: three counts; scaled proportionally if they do not sum to ``len(case_ids)``
            and ``scale_counts`` is true.
        seed: permutation seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: duplicate ids, too few cases, or counts that do not fit.
    """
    ids = sorted(case_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("split_cases: duplicate case ids")
    if (fractions is None) == (counts is None):
        raise ValueError("split_cases: give exactly one of fractions or counts")
    if counts is not None:
        if sum(counts) != n:
            if not scale_counts:
                raise ValueError(f"split counts {counts} sum to {sum(counts)} but there are {n} cases")
            counts = _scaled_counts(list(counts), n)
        n_train, n_val, n_test = counts
    else:
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 3:
            n_val = max(n_val, 1 if fractions[1] > 0 else 0)
            n_test = max(n_test, 1 if fractions[2] > 0 else 0)
        n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split leaves no training case ({n} cases, val {n_val}, test {n_test})")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    parts = {
        "train": shuffled[:n_train],
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val : n_train + n_val + n_test],
    }
    return {k: sorted(v) for k, v in parts.items()}


def split_by_domain(
    domains: dict[str, str],
    train_domains: list[str],
    test_domains: list[str],
    val_domains: list[str] | None = None,
    fractions: list[float] | None = None,
    counts: list[int] | None = None,
    seed: int = 0,
    scale_counts: bool = True,
) -> dict[str, list[str]]:
    """Split cases by their domain (unseen-domain protocols): cases of ``test_domains`` are
    the test set, cases of ``val_domains`` validation, and the cases of ``train_domains`` are
    split by ``fractions`` / ``counts`` as in :func:`split_cases` (their val and test parts
    join validation and test). Cases of other domains are left out.

    Args:
        domains: case id -> domain.

    Raises:
        ValueError: a named domain with no case (the message lists the domains present).
    """
    present = sorted(set(domains.values()))
    for name in [*train_domains, *test_domains, *(val_domains or [])]:
        if name not in present:
            raise ValueError(f"no case of domain {name!r}; the cases' domains are {', '.join(map(repr, present))}")
    pick = lambda names: sorted(i for i, d in domains.items() if d in set(names))  # noqa: E731
    inner = split_cases(pick(train_domains), fractions, counts, seed, scale_counts)
    return {"train": inner["train"], "val": sorted(inner["val"] + pick(val_domains or [])),
            "test": sorted(inner["test"] + pick(test_domains))}


def kfold_splits(case_ids: list[str], k: int, seed: int = 0, val_fraction: float = 0.1) -> list[dict[str, list[str]]]:
    """Patient-level k-fold cross-validation: the cases, in a seeded permutation of their sorted
    ids, are cut into ``k`` folds of sizes differing by at most one; fold ``i`` tests on part
    ``i``, and validates on ``round(val_fraction * n)`` cases (at least 1 when
    ``val_fraction > 0``) drawn with the same seed from the other parts, which train on the rest.
    Every case is a test case in exactly one fold, and no case is on two sides of a fold.

    Args:
        case_ids: unique patient/case ids.
        k: number of folds, ``2 <= k <= len(case_ids)``.
        val_fraction: share of all cases used for validation in each fold, in ``[0, 1)``.

    Returns:
        one ``{"train", "val", "test"}`` split per fold, each list sorted.

    Raises:
        ValueError: duplicate ids, ``k`` out of range, or no training case left.
    """
    ids = sorted(case_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("kfold_splits: duplicate case ids")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n:
        raise ValueError(f"folds must be a whole number from 2 to the number of cases ({n}), got {k!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    shuffled = [ids[i] for i in rng.permutation(n)]
    parts = [shuffled[i::k] for i in range(k)]
    n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 else 0
    folds = []
    for i, test in enumerate(parts):
        rest = [c for j, part in enumerate(parts) if j != i for c in part]
        if len(rest) - n_val < 1:
            raise ValueError(f"fold {i} leaves no training case ({n} cases, {k} folds, {n_val} for validation)")
        order = np.random.default_rng([seed, i]).permutation(len(rest))
        val = [rest[j] for j in order[:n_val]]
        train = [rest[j] for j in order[n_val:]]
        folds.append({"train": sorted(train), "val": sorted(val), "test": sorted(test)})
    return folds


def save_split(split: dict[str, list[str]], path: str | Path) -> None:
    Path(path).write_text(json.dumps(split, indent=1))


def load_split(path: str | Path) -> dict[str, list[str]]:
    data = json.loads(Path(path).read_text())
    missing = [k for k in SPLITS if k not in data]
    if missing:
        raise ValueError(f"{path}: split file lacks {missing}")
    return data
