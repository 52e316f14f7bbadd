"""MkDocs hooks: the reference pages that are generated from the code at build time.

A page holds a marker comment where generated Markdown goes:

* ``<!-- generated: cli -->``: every ``pdeseg`` command and option, from ``pdeseg.cli.build_parser()``;
* ``<!-- generated: config -->``: every config key with its type, default, constraints and description, from
  the pydantic schema in ``pdeseg.config`` (the description is the field's ``description``, else the comment on
  its line or the comment lines right above it in ``config.py``);
* ``<!-- generated: formats -->``: the registered data formats and their reading options;
* ``<!-- generated: changelog -->``: ``CHANGELOG.md``.

Nothing here is kept by hand: a new option, config field or format shows up in the next build. A config field
without any description is logged as a warning, which fails the strict build (tests/test_docs.py).
"""

from __future__ import annotations

import argparse
import inspect
import io
import logging
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.pdeseg")
ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- generated: (\w+) -->")


# --- CLI ---------------------------------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return parser._get_formatter()._expand_help(action)  # %(default)s and friends, as --help prints them


def _option_rows(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> list[str]:
    rows = []
    for a in actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) or a.help == argparse.SUPPRESS:
            continue
        if a.option_strings:
            name = ", ".join(f"`{o}`" for o in a.option_strings)
        else:
            name = f"`{a.metavar or a.dest}` (positional)"
        if a.choices is not None:
            value = " \\| ".join(f"`{c}`" for c in a.choices)
        elif a.nargs == 0:
            value = "flag"
        else:
            metavar = a.metavar if isinstance(a.metavar, str) else a.dest.upper()
            value = f"`{metavar}`" + (" ..." if a.nargs in ("*", "+") else "")
        if a.required:
            default = "required"
        elif a.default in (None, False, argparse.SUPPRESS) or a.nargs == 0:
            default = ""
        else:
            default = f"`{a.default}`"
        rows.append(f"| {name} | {_cell(value)} | {_cell(default)} | {_cell(_help(parser, a))} |")
    return rows


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for group in parser._action_groups:
        rows = _option_rows(parser, group._group_actions)
        if not rows:
            continue
        if group.title not in ("options", "optional arguments", "positional arguments"):
            out += [f"**{group.title}**" + (f": {group.description}" if group.description else ""), ""]
        out += ["| argument | value | default | what it does |", "|---|---|---|---|", *rows, ""]
    return out


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """Markdown for every sub-command of ``parser``: its summary, usage and an options table."""
    out = [parser.description or "", ""]
    out += _options_table(parser)
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {c.dest: c.help for sp in subs for c in sp._choices_actions}
    for sp in subs:
        for name, sub in sp.choices.items():
            out += [f"## pdeseg {name}", "", _cell(summaries.get(name) or sub.description or ""), ""]
            if sub.description and sub.description != summaries.get(name):
                out += [sub.description, ""]
            usage = sub.format_usage().replace("usage: ", "", 1).strip()
            out += ["```text", usage, "```", ""]
            out += _options_table(sub)
    return "\n".join(out)


# --- config ------------------------------------------------------------------------------------------------------

_CONSTRAINTS = {
    "gt": ">",
    "ge": ">=",
    "lt": "<",
    "le": "<=",
    "min_length": "at least {} items",
    "max_length": "at most {} items",
    "pattern": "matches `{}`",
}


def _constraint_text(metadata: list[Any]) -> list[str]:
    out = []
    for m in metadata:
        for attr, fmt in _CONSTRAINTS.items():
            value = getattr(m, attr, None)
            if value is None:
                continue
            out.append(fmt.format(value) if "{}" in fmt else f"{fmt} {value}")
    return out


def type_text(annotation: Any) -> str:
    """A readable type: ``int > 0``, ``list[float] (3 items) | None``, ``"slices" | "patches"``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        extra = []
        for m in meta:
            extra += _constraint_text([m]) + _constraint_text(list(getattr(m, "metadata", []) or []))
        return type_text(base) + (f" ({', '.join(extra)})" if extra else "")
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in typing.get_args(annotation))
    if origin in (list, tuple, dict, set):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def field_comments(cls: type) -> dict[str, str]:
    """The comments that document ``cls``'s fields in its source: the one on the field's line, after the value,
    and the comment lines right above the field."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    above: list[str] = []
    found: dict[str, str] = {}
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^    (\w+)\s*:", line)
        if match:
            parts = list(above)
            if number in comments and not stripped.startswith("#"):
                parts.append(comments[number].lstrip("#").strip())
            if parts:
                found[match.group(1)] = " ".join(parts)
        above = []
    return found


def _default_text(field: Any) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(exclude_defaults=True) | {"name": getattr(v, "name", None)} for v in value]
        value = [{k: v for k, v in d.items() if v is not None} for d in value]
    return f"`{value!r}`".replace("'", "") if value not in ("",) else '`""`'


def _sections(annotation: Any) -> list[type]:
    """The config sections (pydantic models) a field's type holds: ``X``, ``X | None``, ``list[X]``."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _sections(arg)
    return found


def config_rows(model: type, prefix: str = "", seen: set[type] | None = None) -> list[dict[str, str]]:
    """One row per field of ``model`` and of every section below it: key, type, default, description, and the
    section's docstring for section rows."""
    seen = set() if seen is None else seen
    comments: dict[str, str] = {}
    for cls in reversed(model.__mro__):  # a subclass's comments over its bases'
        if "__annotations__" in vars(cls):
            comments |= {k: v for k, v in field_comments(cls).items() if k in vars(cls).get("__annotations__", {})}
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sections = [s for s in _sections(field.annotation) if s not in seen]
        list_of = typing.get_origin(field.annotation) is list or "list[" in type_text(field.annotation)
        description = field.description or comments.get(name, "")
        if sections and not description:
            description = (inspect.getdoc(sections[0]) or "").split("\n\n")[0]
        constraints = _constraint_text(list(field.metadata))
        kind = type_text(field.annotation) + (f" ({', '.join(constraints)})" if constraints else "")
        rows.append({"key": key, "type": kind, "default": _default_text(field), "description": description, "section": bool(sections)})
        for section in sections:
            rows += config_rows(section, f"{key}[]." if list_of else f"{key}.", seen | {model})
    return rows


def config_markdown(model: type) -> str:
    """The config reference table of ``model`` (``ExperimentConfig``)."""
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    missing = []
    for row in config_rows(model):
        if not row["description"]:
            missing.append(row["key"])
        key = f"**`{row['key']}`**" if row["section"] else f"`{row['key']}`"
        out.append(f"| {key} | {_cell(row['type'])} | {_cell(row['default'])} | {_cell(row['description'])} |")
    if missing:
        log.warning(
            "config fields without a description (add a comment or Field(description=...) in src/pdeseg/config.py): %s", ", ".join(missing)
        )
    return "\n".join(out) + "\n"


# --- data formats ------------------------------------------------------------------------------------------------


def formats_markdown() -> str:
    from pdeseg.data.formats import FORMATS

    out = ["| `data.format` | what it reads | channels | classes | reading options (`data.format_options`) |", "|---|---|---|---|---|"]
    for name, f in sorted(FORMATS.items()):
        options = ", ".join(
            f"`{k}`" + (f": {' / '.join(map(str, v))}" if isinstance(v, (tuple, list)) else "") for k, v in (f.read_options or {}).items()
        )
        out.append(
            f"| `{name}` | {_cell(f.description)} | {_cell(', '.join(f.modalities) or 'from the data')} | "
            f"{_cell(', '.join(f.class_names) or 'from the data')} | {_cell(options)} |"
        )
    return "\n".join(out) + "\n"


# --- hook --------------------------------------------------------------------------------------------------------


def generated(kind: str) -> str:
    if kind == "cli":
        from pdeseg.cli import build_parser

        return cli_markdown(build_parser())
    if kind == "config":
        from pdeseg.config import ExperimentConfig

        return config_markdown(ExperimentConfig)
    if kind == "formats":
        return formats_markdown()
    if kind == "changelog":
        text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
        # links into docs/ from the repository root become links relative to this page (docs/changelog.md)
        return text.replace("](docs/", "](")
    raise ValueError(f"unknown generated block {kind!r}")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda m: generated(m.group(1)), markdown)
