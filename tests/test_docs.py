"""The documentation cannot rot: the site (mkdocs.yml, docs/) builds in strict mode, a broken link fails that
build, the generated reference pages follow the code, the example blocks marked runnable run, and the README
stays a front page whose test command is the one CI runs."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RUNNABLE = "# runnable"
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2: not a warning of this site

mkdocs = pytest.importorskip("mkdocs", reason="the docs build needs the docs extra: pip install -e '.[docs]'")


def _hooks():
    spec = importlib.util.spec_from_file_location("pdeseg_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"), "-d", str(site)],
                          cwd=root, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = _build(ROOT, out)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_site_builds_strictly_with_every_page_of_the_nav(site):
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(entry):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from pages(value)
        else:
            for item in entry:
                yield from pages(item)

    for page in pages(nav):
        stem = page.removesuffix(".md")
        html = stem.removesuffix("index") + "index.html" if stem.endswith("index") else stem + "/index.html"
        assert (site / html).is_file(), f"{page} is in the nav but was not built"


def test_cli_reference_lists_every_command_and_option(site):
    import argparse

    from pdeseg.cli import build_parser

    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        assert f"pdeseg {name}" in html, name
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):  # -h on every command: said once on the page
                continue
            for option in action.option_strings:
                assert f"<code>{option}</code>" in html, f"pdeseg {name} {option} missing from the CLI reference"


def test_config_reference_has_every_field_with_its_description_from_the_code(site):
    from pdeseg.config import ExperimentConfig

    html = (site / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    rows = _hooks().config_rows(ExperimentConfig)
    assert len(rows) > 60
    for row in rows:
        assert f"<code>{row['key']}</code>" in html, row["key"]
        assert row["description"], f"config field {row['key']} has no description in src/pdeseg/config.py"
    # one field checked end to end: its comment in config.py is on the built page
    source = (ROOT / "src" / "pdeseg" / "config.py").read_text()
    comment = re.search(r"^    val_batch_size: .*#\s*(.+)$", source, re.M).group(1).strip()
    assert comment in html


def test_a_new_config_field_appears_in_the_built_site_without_editing_a_page(tmp_path, monkeypatch):
    """Build the site in this process with one field added to the schema: its key, type, default and description
    are on the config page, generated from the code."""
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    import pdeseg.config as cfg

    class Train(cfg.TrainConfig):
        probe_patience: int = Field(7, ge=1, description="probe: epochs without improvement before stopping early")

    class Experiment(cfg.ExperimentConfig):
        train: Train = Field(default_factory=Train)

    monkeypatch.setattr(cfg, "ExperimentConfig", Experiment)
    monkeypatch.setenv("NO_MKDOCS_2_WARNING", "1")
    build(load_config(str(ROOT / "mkdocs.yml"), site_dir=str(tmp_path / "site"), strict=True))
    html = (tmp_path / "site" / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    row = re.search(r"<code>train\.probe_patience</code>.*?</tr>", html, re.S)
    assert row, "the new field is not on the generated config page"
    assert "probe: epochs without improvement before stopping early" in row.group(0)
    assert "<code>7</code>" in row.group(0) and "&gt;= 1" in row.group(0)


def test_a_broken_link_fails_the_strict_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("mkdocs.yml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, copy / name)
    page = copy / "docs" / "getting-started.md"
    page.write_text(page.read_text() + "\nSee [the missing page](tutorials/no-such-page.md).\n")
    done = _build(copy, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr

    page.write_text(page.read_text().replace("tutorials/no-such-page.md", "tutorials/msd-3d.md#no-such-heading"))
    done = _build(copy, tmp_path / "site2")
    assert done.returncode != 0, "a link to a missing heading must fail the build too"
    assert "no-such-heading" in done.stdout + done.stderr


def _runnable_blocks() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(DOCS.rglob("*.md")):
        for lang, code in re.findall(r"^```(python|bash)\n(.*?)^```", path.read_text(encoding="utf-8"), re.S | re.M):
            if code.startswith(RUNNABLE):
                found.append((f"{path.relative_to(DOCS)}:{len(found)}", lang, code))
    return found


BLOCKS = _runnable_blocks()


def test_some_examples_are_marked_runnable():
    assert len(BLOCKS) >= 3, "docs/ should mark its cheap examples '# runnable' so that the tests run them"


@pytest.mark.parametrize("where,lang,code", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_runnable_example_runs_as_written(tmp_path, where, lang, code):
    bin_dir = str(Path(sys.executable).parent)  # the venv's pdeseg comes first, as after activating it
    env = {**ENV, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PDESEG_REPO": str(ROOT)}
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{where} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_version_and_changelog_agree():
    import pdeseg

    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert pdeseg.__version__ == version, "bump the version in pyproject.toml and src/pdeseg/__init__.py together"
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text(), f"CHANGELOG.md has no heading for {version}"


def test_readme_is_a_front_page_whose_test_command_is_what_ci_runs():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "README.md is the front page: move details into docs/"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text, "the README's test command must be exactly the command .ci/run runs"


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "benchmarks/README.md"])
def test_relative_links_outside_the_site_resolve(name):
    """README, CONTRIBUTING and the changelog are read on the repository's page, outside the site build: their
    relative links must point at files that exist."""
    path = ROOT / name
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{name} links to {target}, which does not exist"


def _documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s+#", line)[0].strip()
                if line.startswith("pdeseg "):
                    found.append((str(path.relative_to(ROOT)), line))
    return found


def test_every_documented_pdeseg_command_parses(capsys):
    """Every `pdeseg ...` line of the README and the docs is accepted by today's parser: a renamed or removed option
    or a newly required one fails here, not in a user's terminal."""
    import argparse
    import shlex

    from pdeseg.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    lines = _documented_commands()
    assert len(lines) > 40
    bad = []
    for where, line in lines:
        args = shlex.split(line)[1:]
        try:
            commands[args[0]].parse_args(args[1:])
        except (SystemExit, KeyError):
            bad.append(f"{where}: {line}\n    {capsys.readouterr().err.strip().splitlines()[-1:]}")
    assert not bad, "documented commands the CLI refuses:\n" + "\n".join(bad)
