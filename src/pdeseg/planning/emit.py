"""A plan as YAML with a reason beside each choice.

``plan_yaml(config, reasons, header)`` writes the config's sections in block style, lists of
numbers and small mappings in flow style, and appends ``# reason`` to the line of every
dotted key that has one (``data.spatial_size``, ``train.epochs``, a whole section such as
``postprocess``). The text reads back with ``yaml.safe_load`` to the same data (tested).
"""

from __future__ import annotations

from typing import Any

import yaml


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _inline(value: Any) -> bool:
    if isinstance(value, dict):
        return not value or all(not isinstance(v, (dict, list)) or _inline(v) for v in value.values()) and len(value) <= 4
    if isinstance(value, list):
        return all(not isinstance(v, (dict, list)) for v in value)
    return True


def _emit(data: dict[str, Any], reasons: dict[str, str], prefix: str, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for key, value in data.items():
        path = f"{prefix}{key}"
        note = f"  # {reasons[path]}" if path in reasons else ""
        if isinstance(value, dict) and value and not (_inline(value) and not any(f"{path}." in r for r in reasons)):
            out.append(f"{pad}{key}:{note}")
            _emit(value, reasons, f"{path}.", indent + 1, out)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out.append(f"{pad}{key}:{note}")
            for item in value:
                out.append(f"{pad}  - {_flow(item)}")
        else:
            out.append(f"{pad}{key}: {_flow(value)}{note}")


def plan_yaml(config: dict[str, Any], reasons: dict[str, str], header: list[str] | None = None) -> str:
    """The YAML text of ``config`` with ``reasons`` as end-of-line comments."""
    out = [f"# {line}" if line else "#" for line in (header or [])]
    _emit(config, reasons, "", 0, out)
    return "\n".join(out) + "\n"
