"""Deploying: the buildpack's requirements.txt in step with pyproject.toml, the app built
and started as a Heroku-style buildpack does, scripts/serve on a fresh machine, and the
CLI that says its environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from presence.cli import main
from presence.settings import VARIABLES

from .utils import REPO, UNIT, free_port

# What a copy of the checkout leaves out: what the platform never has (a virtual
# environment, node modules, caches) or needs.
_NOT_COPIED = shutil.ignore_patterns(
    ".venv", "node_modules", ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache"
)


def _pins() -> list[Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    entries = [line.split("#", 1)[0].strip() for line in lines]
    return [Requirement(entry) for entry in entries if entry and entry != "."]


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(entry) for entry in project["dependencies"]]


def test_requirements_txt_pins_every_dependency_of_pyproject_and_nothing_else():
    """requirements.txt holds the project itself (".") and one exact pin for each of
    pyproject.toml's dependencies, with the same extras, inside its range."""
    text = (REPO / "requirements.txt").read_text()
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    assert "." in lines
    pins = {canonicalize_name(pin.name): pin for pin in _pins()}
    assert len(pins) == len(_pins()), "a dependency is pinned twice"
    declared = {canonicalize_name(req.name): req for req in _declared()}
    assert set(pins) == set(declared)
    for name, requirement in declared.items():
        pin = pins[name]
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{name} is not pinned exactly"
        assert requirement.specifier.contains(spec.version, prereleases=True), (
            f"{name}=={spec.version} is outside pyproject.toml's {requirement.specifier}"
        )
        assert pin.extras == requirement.extras, name


def test_pyproject_license_is_an_spdx_expression():
    """`license` is the SPDX string (the table form is deprecated by setuptools), and
    the build backend is new enough to read it."""
    document = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert document["project"]["license"] == "MIT"
    (backend,) = document["build-system"]["requires"]
    assert Requirement(backend).specifier.contains("77.0.0")


def test_the_procfile_serves_on_the_platform_port():
    """The Procfile's web process is `presence serve` on all addresses at $PORT."""
    assert (REPO / "Procfile").read_text().strip() == (
        "web: presence serve --host 0.0.0.0 --port $PORT"
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the checkout as a platform receives it: no .venv, no node modules."""
    target = tmp_path / "app"
    shutil.copytree(REPO, target, ignore=_NOT_COPIED)
    return target


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=100 * UNIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_answer(port: int, process: subprocess.Popen[bytes], seconds: float) -> float:
    """Polls /healthz until it answers 200; returns when (time.monotonic())."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode}")
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=UNIT * 10)
            if response.status_code == 200:
                return time.monotonic()
        except httpx.TransportError:
            pass
        time.sleep(UNIT)
    raise AssertionError(f"no answer on port {port} within {seconds:g} s")


def _clean_env(**changes: str) -> dict[str, str]:
    # Nothing of this test run's environment (its virtual environment, its settings).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PRESENCE_", "VIRTUAL_ENV", "PYTHON", "REDIS_", "PROMETHEUS_"))
    }
    env.update(changes)
    return env


@pytest.mark.slow
@pytest.mark.timeout(3000 * UNIT)
def test_the_app_builds_and_starts_as_the_buildpack_does(checkout, tmp_path, processes):
    """A fresh virtual environment, `pip install -r requirements.txt` in the app's
    folder, then the Procfile's command with PORT set: /healthz answers, the demo page
    is served from the built package, and the build warned of no deprecated license."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    build = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-v", "-r", "requirements.txt"],
        cwd=checkout,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "project.license` as a TOML table is deprecated" not in build.stdout + build.stderr
    command = (checkout / "Procfile").read_text().strip().removeprefix("web:").strip()
    port = free_port()
    env = _clean_env(PORT=str(port), PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=checkout,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    _first_answer(port, process, 300 * UNIT)
    page = httpx.get(f"http://127.0.0.1:{port}/chat", timeout=UNIT * 50)
    assert page.status_code == 200 and "<html" in page.text.lower()
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = dict(line.split("==", 1) for line in installed.splitlines() if "==" in line)
    versions = {canonicalize_name(name): version for name, version in versions.items()}
    for pin in _pins():
        assert versions.get(canonicalize_name(pin.name)) == next(iter(pin.specifier)).version


@pytest.mark.slow
@pytest.mark.timeout(3000 * UNIT)
def test_scripts_serve_on_a_fresh_checkout_answers_within_a_minute(checkout, processes):
    """scripts/serve in a checkout without .venv answers /healthz within a minute
    (scaled by PRESENCE_TEST_TIMEOUT_FACTOR), having installed none of the test, dev or
    bench tools and no node modules."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        ["scripts/serve", "--port", str(port)],
        cwd=checkout,
        env=_clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    answered = _first_answer(port, process, 600 * UNIT)
    assert answered - started < 600 * UNIT
    installed = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for extra in project["optional-dependencies"].values():
        for entry in extra:
            assert f"{canonicalize_name(Requirement(entry).name)}==" not in installed, entry
    assert not (checkout / "web" / "node_modules").exists()


# -- the CLI --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_lists_every_environment_variable_with_its_default(argv, capsys):
    """`presence --help` and `presence serve --help` list every variable the settings
    read, each with its default, from the one table in presence.settings."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for variable in VARIABLES:
        line = next(line for line in text.splitlines() if line.split()[:1] == [variable.name])
        assert variable.shown_default() in line, variable.name
    assert "SESSION_TTL_HOURS" in text and re.search(r"SESSION_TTL_HOURS\s+24\s", text)


def test_the_readme_configuration_table_has_every_variable():
    """Each variable the settings read is a row of the README's configuration table, and
    the table names no variable they do not read."""
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## Identity")]
    rows = set(re.findall(r"^\| `([A-Z_]+)`", table, re.M))
    rows |= set(re.findall(r"^\| `[A-Z_]+` / `([A-Z_]+)`", table, re.M))
    assert rows == {variable.name for variable in VARIABLES}


@pytest.mark.parametrize("argv", [[], ["--port", "{port}"]])
def test_python_m_presence_without_a_command_serves(argv, processes):
    """`python -m presence` (and flags without a command) serves, as `presence serve`."""
    port = free_port()
    args = [a.format(port=port) for a in argv]
    process = subprocess.Popen(
        [sys.executable, "-m", "presence", *args],
        cwd=REPO,
        env=_clean_env(PORT=str(port), PATH=os.environ["PATH"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    _first_answer(port, process, 150 * UNIT)


def test_an_unknown_command_says_which_to_give(capsys):
    """A command that does not exist is refused with the one there is."""
    with pytest.raises(SystemExit) as exit_:
        main(["start"])
    assert exit_.value.code == 2
    assert "serve" in capsys.readouterr().err
