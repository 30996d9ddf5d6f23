"""The docs say what the code does: every documented default is the configuration's, every module path and local
link resolves, the README's command table is the command line's, the README stays a front door, and its API
example runs."""

import argparse
import ast
import importlib
import inspect
import re
from pathlib import Path

import pydantic
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
GUIDES = [README, *sorted((ROOT / "docs").glob("*.md"))]  # the benchmark pages quote output of older layouts
MAX_README_BYTES = 15_000

DEFAULT_ROW = re.compile(r"^\| `(dode(?:\.\w+)+)` \| `(\w+)` \| `([^`]*)` \|", re.MULTILINE)  # | owner | field | default |
DOTTED = re.compile(r"(?<![\w/.])dode(?:\.[A-Za-z_]\w*)+")
FILE_PATH = re.compile(r"(?<![\w/.])((?:dode|flows|bench|tests|data)/[\w./-]*\w(?:/|\.py|\.yaml|\.json|\.png|\.md))")
LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMAND_ROW = re.compile(r"^\| `dode ([\w-]+)([^`]*)` \|(.*)$", re.MULTILINE)


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def resolve(path: str) -> object:
    """The object a dotted ``dode...`` path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


def documented_defaults() -> dict[str, dict[str, str]]:
    """owner -> {field: default as written} from every defaults table of the guides."""
    tables: dict[str, dict[str, str]] = {}
    for page in GUIDES:
        for owner, field, default in DEFAULT_ROW.findall(text(page)):
            tables.setdefault(owner, {})[field] = default
    return tables


def actual_defaults(owner: object) -> dict[str, object]:
    """A configuration's field defaults (pydantic) or a function's keyword defaults."""
    if isinstance(owner, type) and issubclass(owner, pydantic.BaseModel):
        defaults = {name: f.get_default(call_default_factory=True) for name, f in owner.model_fields.items()}
        return {name: d.model_dump() if isinstance(d, pydantic.BaseModel) else d for name, d in defaults.items()}
    return {name: p.default for name, p in inspect.signature(owner).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_the_defaults_tables_cover_the_configurations():
    owners = set(documented_defaults())
    for config in ("FitConfig", "TeacherConfig", "SamplingConfig"):
        assert any(o.endswith("." + config) for o in owners), f"no defaults table of {config}"


@pytest.mark.parametrize("owner", sorted(documented_defaults()))
def test_each_documented_default_is_the_configurations(owner):
    written = documented_defaults()[owner]
    actual = actual_defaults(resolve(owner))
    assert set(written) == set(actual), f"{owner}: documented {sorted(written)}, has {sorted(actual)}"
    for field, default in written.items():
        assert ast.literal_eval(default) == actual[field], f"{owner}.{field}: docs say {default}, code {actual[field]!r}"


def dotted_paths() -> list[tuple[str, str]]:
    entry_point_groups = {importlib.import_module("dode.cli").ENTRY_POINTS}  # e.g. dode.commands: not a module
    found = {(page.relative_to(ROOT).as_posix(), path.removesuffix(".py"))
             for page in PAGES for path in DOTTED.findall(text(page))}
    return sorted((page, path) for page, path in found if path not in entry_point_groups)


@pytest.mark.parametrize(("page", "path"), dotted_paths())
def test_every_module_path_in_the_docs_imports(page, path):
    resolve(path)


def test_every_file_path_in_the_guides_exists():
    missing = [f"{page.name}: {p}" for page in GUIDES for p in FILE_PATH.findall(text(page)) if not (ROOT / p).exists()]
    assert not missing, missing


def test_every_local_link_in_the_docs_exists():
    missing = []
    for page in PAGES:
        for link in LINK.findall(text(page)):
            if link.startswith(("http://", "https://")):
                continue
            target, _, anchor = link.partition("#")
            file = (page.parent / target).resolve() if target else page
            if not file.exists():
                missing.append(f"{page.name}: {link}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                missing.append(f"{page.name}: {link} (no such heading)")
    assert not missing, missing


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text(page), flags=re.DOTALL), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_readme_command_table_is_the_command_line():
    from dode.cli import build_parser
    from dode.pipeline.runs import STAGES

    rows = {name: (rest, what) for name, rest, what in COMMAND_ROW.findall(text(README))}
    commands = subcommands(build_parser())
    assert set(rows) == set(commands), f"README's table {sorted(rows)}, dode has {sorted(commands)}"
    actions = rows["artifacts"][0].strip().replace("\\|", "|").split("|")
    assert set(actions) == set(subcommands(commands["artifacts"])), actions
    assert set(re.findall(r"`([\w-]+)`", rows["run"][1].split(";")[0])) == set(STAGES)


def test_the_readme_is_a_front_door():
    assert len(README.read_bytes()) <= MAX_README_BYTES


def test_the_readme_api_example_runs():
    section = text(README).split("## Python API", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    torch.manual_seed(0)
    names: dict[str, object] = {}
    exec(compile(snippet, "README.md", "exec"), names)  # noqa: S102 -- the README's own example, run as written
    lam, x0, base = names["lam"], names["x0"], names["base"]
    assert len(lam.values) == 5 and x0.shape == base.shape == (64, *names["model"].shape)
    assert torch.isfinite(x0).all() and lam.guard["chosen"] in lam.guard["minus_base"].keys() | {"base"}


def test_the_docs_use_new_module_paths_and_list_every_old_one_once():
    from dode.compat import MOVED, new_home

    design = text(ROOT / "docs/design.md")
    aliases = design.split("## Old module paths", 1)[1].split("\n## ", 1)[0]
    assert {p for p in DOTTED.findall(aliases) if new_home(p)} == set(MOVED)
    elsewhere = [(page.name, p) for page in PAGES for p in DOTTED.findall(text(page).replace(aliases, ""))
                 if new_home(p.removesuffix(".py"))]
    assert not elsewhere, f"old module paths (aliases) outside docs/design.md's table: {elsewhere}"
