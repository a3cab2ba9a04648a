"""env.yml (conda) and pyproject.toml (pip) must install the same packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name.strip().lower())}=={version.strip()}"


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {_normalise(d) for d in deps}


def _env_yml_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "env.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1, "env.yml must have exactly one pip section"
    return {_normalise(r) for r in pip_sections[0] if "==" in r}


def test_env_yml_and_pyproject_pin_the_same_packages():
    assert _env_yml_requirements() == _pyproject_requirements()


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        assert "==" in dep, f"{dep} is not pinned with =="


def test_env_yml_installs_the_project_and_python_311():
    text = (ROOT / "env.yml").read_text()
    assert "python=3.11" in text
    assert "-e ." in text


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
