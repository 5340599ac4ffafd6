"""broomio.__version__ is the single source of the version: pyproject.toml reads it from
src/broomio/__init__.py (statically, as setuptools does), and an installed broomio's
distribution metadata agrees with the imported package."""

from __future__ import annotations

import ast
import os
import re
import tomllib
from importlib import metadata

import broomio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_is_a_release_string() -> None:
    assert isinstance(broomio.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", broomio.__version__)
    assert "__version__" in broomio.__all__


def test_pyproject_takes_the_version_from_the_package() -> None:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert "version" not in project["project"], "the version must not be repeated here"
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "broomio.__version__"}


def test_version_is_a_literal_setuptools_can_read_without_importing() -> None:
    """setuptools evaluates ``attr`` statically only if the assignment is a plain string
    literal; otherwise it would import broomio, which needs the compiled engine."""
    path = os.path.join(ROOT, "src", "broomio", "__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    values = [node.value.value for node in tree.body
              if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)
              and isinstance(node.value, ast.Constant)]
    assert values == [broomio.__version__]


def test_installed_metadata_matches() -> None:
    """When the imported broomio is an installed distribution (as in CI, after
    ``pip install .``), its metadata carries the same version."""
    try:
        dist = metadata.distribution("broomio")
    except metadata.PackageNotFoundError:
        return  # running from the source tree (PYTHONPATH=src): nothing installed
    init = os.path.realpath(str(dist.locate_file("broomio/__init__.py")))
    if init != os.path.realpath(broomio.__file__ or ""):
        return  # an installed copy exists, but this run imports the source tree
    assert dist.version == broomio.__version__


def test_changelog_has_this_version() -> None:
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        text = f.read()
    assert re.search(rf"^## \[{re.escape(broomio.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$",
                     text, re.M), "CHANGELOG.md has no section for this version"

