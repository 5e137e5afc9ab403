"""The distributions as an index would serve them: built with ``python -m build``, checked by ``twine``, the
wheel installed (not editable) into a fresh virtual environment and used from there.

The fresh environment reuses this test environment's installed dependencies (Airflow is not installed again)
through a ``.pth`` line naming this environment's site-packages. Such a line only appends the directory to
``sys.path``: the ``.pth`` files inside it, among them the editable install's hook pointing at this checkout,
are not processed, so the provider can only come from the wheel, which the test checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

import airflow_provider_carerix

ROOT = Path(__file__).resolve().parent.parent
EXCLUDED_TOP_LEVEL = ("tests", "benchmarks", "scripts")
CONSOLE_SCRIPTS = ("carerix-webhooks", "carerix-receiver", "carerix-emulator")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build`` of this checkout: the sdist, and the wheel built from that sdist.

    Built from a copy holding only the files git knows (tracked, or new and not ignored), as a clean clone
    would: setuptools also reads a local ``*.egg-info/SOURCES.txt`` left by an editable install, which would
    hide a data file missing from the package configuration.
    """
    source = tmp_path_factory.mktemp("source")
    listed = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, source, cwd=out)
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def fresh_env(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A new venv with the wheel installed into it (``--no-deps``); dependencies from this environment."""
    base = tmp_path_factory.mktemp("fresh")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=base)
    python = venv / "bin" / "python"
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=base).strip()
    )
    (site / "_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", dists["wheel"],
        cwd=base,
    )  # fmt: skip
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(base), "AIRFLOW_HOME": str(base / "airflow")}
    return {"python": python, "bin": venv / "bin", "site": site, "env": env, "cwd": base}


def _metadata(dists: dict[str, Path]) -> Any:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(wheel.read(name).decode())


def test_twine_check_passes(dists: dict[str, Path]) -> None:
    output = _run(
        sys.executable, "-m", "twine", "check", "--strict", dists["wheel"], dists["sdist"], cwd=ROOT
    )
    assert output.count("PASSED") == 2


def test_metadata_is_what_an_index_shows(dists: dict[str, Path]) -> None:
    metadata = _metadata(dists)
    assert metadata["Name"] == "airflow-provider-carerix"
    assert metadata["Version"] == airflow_provider_carerix.__version__  # the one version source
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    classifiers = metadata.get_all("Classifier")
    assert {"Framework :: Apache Airflow", "Framework :: Apache Airflow :: Provider"} <= set(classifiers)
    assert {f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12, 13)} <= set(classifiers)
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression replaces them
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert {"Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    assert metadata["Requires-Python"] == ">=3.10"
    assert set(metadata.get_all("Provides-Extra")) >= {"postgres"}


def _package_files() -> set[str]:
    """Every file of the package in this checkout (code and data such as the UI page), as wheel paths."""
    package = ROOT / "airflow_provider_carerix"
    return {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_wheel_holds_the_package_py_typed_and_license_only(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
    assert "airflow_provider_carerix/py.typed" in names
    assert _package_files() <= set(names), sorted(_package_files() - set(names))  # data files too
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    top_level = {n.split("/", 1)[0] for n in names}
    assert top_level == {"airflow_provider_carerix", f"airflow_provider_carerix-{_version()}.dist-info"}


def test_sdist_holds_the_package_license_and_changelog_not_tests(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = [n.split("/", 1)[1] for n in sdist.getnames() if "/" in n]
    assert "airflow_provider_carerix/py.typed" in names
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= set(names)
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    for excluded in EXCLUDED_TOP_LEVEL:
        assert not [n for n in names if n == excluded or n.startswith(f"{excluded}/")], excluded


def _version() -> str:
    return airflow_provider_carerix.__version__


_PROBE = """
import importlib, json
from importlib.metadata import distribution, entry_points

[ep] = [e for e in entry_points(group="apache_airflow_provider") if e.dist.name == "airflow-provider-carerix"]
info = ep.load()()
paths = [m for key in ("hooks", "operators", "sensors", "triggers") for e in info.get(key, []) for m in e["python-modules"]]
paths += [c["hook-class-name"] for c in info.get("connection-types", [])]
paths += [p["plugin-class"] for p in info.get("plugins", [])]
files = {}
for path in paths:
    try:
        module = importlib.import_module(path)
    except ImportError:
        module_name, _, name = path.rpartition(".")
        module = importlib.import_module(module_name)
        assert isinstance(getattr(module, name), type), path
    files[path] = module.__file__
dist = distribution("airflow-provider-carerix")
for entry_point in dist.entry_points:  # console scripts, provider info, the Airflow plugin
    loaded = entry_point.load()
    files[f"{entry_point.group}:{entry_point.name}"] = importlib.import_module(loaded.__module__).__file__
print(json.dumps({"files": files, "dist": str(dist.locate_file("")), "version": info["versions"][0]}))
"""


def _expected_paths() -> set[str]:
    from importlib.metadata import distribution

    from airflow_provider_carerix.get_provider_info import get_provider_info

    info = get_provider_info()
    paths = {
        m
        for key in ("hooks", "operators", "sensors", "triggers")
        for e in info.get(key, [])
        for m in e["python-modules"]
    }
    paths |= {c["hook-class-name"] for c in info.get("connection-types", [])}
    paths |= {p["plugin-class"] for p in info.get("plugins", [])}
    paths |= {f"{ep.group}:{ep.name}" for ep in distribution("airflow-provider-carerix").entry_points}
    return paths


def test_every_provider_info_path_imports_from_the_installed_wheel(fresh_env: dict[str, Any]) -> None:
    result = json.loads(_run(fresh_env["python"], "-c", _PROBE, cwd=fresh_env["cwd"], env=fresh_env["env"]))
    site = fresh_env["site"]
    assert Path(result["dist"]) == site  # the wheel's metadata, not the editable install's
    assert result["version"] == _version()
    assert set(result["files"]) == _expected_paths()
    assert {"console_scripts:carerix-webhooks", "apache_airflow_provider:provider_info"} <= set(
        result["files"]
    )
    for path, file in result["files"].items():
        assert Path(file).is_relative_to(site / "airflow_provider_carerix"), (path, file)
        assert not Path(file).is_relative_to(ROOT), (path, file)


@pytest.mark.parametrize("script", CONSOLE_SCRIPTS)
def test_console_scripts_of_the_wheel_run(fresh_env: dict[str, Any], script: str) -> None:
    executable = fresh_env["bin"] / script
    assert executable.exists(), f"{script} was not installed by the wheel"
    assert executable.read_text().startswith(f"#!{fresh_env['python']}")
    output = _run(executable, "--help", cwd=fresh_env["cwd"], env=fresh_env["env"])
    assert "Usage:" in output or "usage:" in output
