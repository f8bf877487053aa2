"""What users look for beside the code: the licence the README names, one version."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

import pipeline
from tests.conftest import ROOT


def test_the_license_file_is_the_apache_2_licence_the_project_declares() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache-2.0 ([LICENSE](LICENSE))" in (ROOT / "README.md").read_text()


def test_the_version_lives_in_one_place() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pipeline.__version__"}
    assert version("rankcal") == pipeline.__version__
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
