"""The Dockerfile, checked without a Docker engine.

The static checks read the Dockerfile: the production stage extends the official Airflow
image of the locked Airflow version, and its install step is one RUN between the
``# install-step:begin`` / ``# install-step:end`` markers (the sandbox stage's between
``# sandbox-step:...``).

The install checks then run those steps as they stand, with the Dockerfile's SHELL, in a
fresh virtual environment (activated as the official image activates its own: VIRTUAL_ENV,
its bin/ first on PATH), in a folder holding exactly the files the Dockerfile copies before
the step. They prove the production install from uv.lock works (the console script, the
pipeline, the Celery and Salesforce providers, a consistent environment) and leaves the
sandbox and the dev tools out. Unlike the image build (UV_NO_CACHE=1), they use the local
uv cache: each install takes a few seconds, the slowest tests of this file. They need uv
(.tools/bin/uv, which `make setup` installs, or uv on PATH) and skip without it, unless
HANDOFF_REQUIRE_TOOLS=1 or CI is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_STEP = "install-step"
SANDBOX_STEP = "sandbox-step"
DEVELOPMENT_COMMANDS = ("demo", "sandbox", "benchmark", "smtp-sink", "stack up")
DEVELOPMENT_MODULES = (
    "handoff.sandbox",
    "handoff.smtp_sink",
    "handoff.benchmark",
    "handoff.benchmark_naive",
    "handoff.stack",
    "aiosmtpd",
)
PRODUCTION_MODULES = (
    "handoff.pipeline",
    "handoff.redflags.steps",
    "handoff.reporting.daily",
    "airflow.providers.celery",
    "airflow.providers.salesforce",
)
STEP_TIMEOUT = 600
# Run by the installed environment: the names in an exported requirements file whose markers
# hold for its interpreter.
APPLICABLE_REQUIREMENTS = """
import json, sys
from packaging.requirements import Requirement

names = []
for line in open(sys.argv[1]).read().splitlines():
    if line[:1].isalnum():
        requirement = Requirement(line.rstrip(" \\\\"))
        if requirement.marker is None or requirement.marker.evaluate():
            names.append(requirement.name)
print(json.dumps(names))
"""


# -- the Dockerfile ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions as Docker reads them: comments dropped, continuation lines joined (the
    backslash and the line break removed, nothing added)."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not pending and not stripped):
            continue
        if not pending:
            start = number
        if re.search(r"\\[ \t]*$", raw):
            pending += re.sub(r"\\[ \t]*$", "", raw)
            continue
        keyword, _, args = (pending + raw).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARG defaults declared before the first FROM (usable in FROM lines)."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            values[name.strip()] = default.strip().strip('"')
    return values


def stages(instructions: list[Instruction]) -> list[Stage]:
    defaults = global_args(instructions)
    found: list[Stage] = []
    current: list[Instruction] = []
    header: tuple[str, str | None] | None = None
    for instruction in instructions + [Instruction("FROM", "", 0)]:
        if instruction.keyword != "FROM":
            current.append(instruction)
            continue
        if header is not None:
            found.append(Stage(header[0], header[1], tuple(current)))
        if not instruction.args:
            break
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m[1] or m[2]], words[0])
        name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None
        header, current = (base, name), []
    return found


def step(text: str, marker: str) -> Instruction:
    """The one instruction between ``# <marker>:begin`` and ``# <marker>:end``."""
    lines = text.splitlines()
    begin = [i for i, line in enumerate(lines) if line.strip() == f"# {marker}:begin"]
    end = [i for i, line in enumerate(lines) if line.strip() == f"# {marker}:end"]
    assert len(begin) == 1 and len(end) == 1 and begin[0] < end[0], (
        f"the Dockerfile needs exactly one `# {marker}:begin` ... `# {marker}:end` block"
    )
    block = parse_dockerfile("\n".join(lines[begin[0] + 1 : end[0]]))
    assert [i.keyword for i in block] == ["RUN"], (
        f"the {marker} block must be exactly one RUN, found {[i.keyword for i in block]}"
    )
    return block[0]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def production(dockerfile: str) -> Stage:
    named = {s.name: s for s in stages(parse_dockerfile(dockerfile))}
    assert "production" in named, f"no stage named production: {sorted(map(str, named))}"
    return named["production"]


def _locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


def test_production_stage_extends_the_official_airflow_image(
    dockerfile: str, production: Stage
) -> None:
    airflow = _locked_version("apache-airflow")
    match = re.fullmatch(r"apache/airflow:(3\.3\.\d+)(?:-python(3\.\d+))?", production.base)
    assert match, f"the production stage extends {production.base}, not apache/airflow:3.3.x"
    assert match[1] == airflow, (
        f"the image ships Airflow {match[1]} but uv.lock pins {airflow}: the install step would "
        "replace the image's own Airflow"
    )
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert match[2] == python, (
        f"the image runs Python {match[2]}; these tests prove the install on Python {python}"
    )

    all_stages = stages(parse_dockerfile(dockerfile))
    last = all_stages[-1]
    assert last.name == "production" or last.base == "production", (
        "a plain `docker build .` must give the production image (the last stage)"
    )
    named = {s.name: s for s in all_stages}
    assert named["sandbox"].base == "production", "the sandbox stage extends production"

    users = [i.args for i in production.instructions if i.keyword == "USER"]
    assert users and users[-1] == "airflow", f"the image must end as USER airflow, not {users}"
    for stage in all_stages[1:]:
        assert all(i.args == "airflow" for i in stage.instructions if i.keyword == "USER")


def test_uv_is_pinned_to_the_version_that_wrote_the_lock(production: Stage) -> None:
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", makefile, re.M)
    assert version, "the Makefile pins no UV_VERSION"
    copies = [
        i.args for i in production.instructions if i.keyword == "COPY" and "--from=" in i.args
    ]
    assert any(f"--from=ghcr.io/astral-sh/uv:{version[1]} " in c for c in copies), copies
    env = " ".join(i.args for i in production.instructions if i.keyword == "ENV")
    assert re.search(r"\bUV_NO_CACHE=1\b", env), "the image build keeps no uv cache"


def test_install_steps_install_the_lock_and_nothing_else(dockerfile: str) -> None:
    install = step(dockerfile, INSTALL_STEP).args
    export = re.search(r"uv export ([^&]*)", install)
    assert export, "the install step exports the lock with uv"
    for flag in ("--frozen", "--no-default-groups", "--no-emit-project"):
        assert flag in export[1], f"`uv export` in the install step lacks {flag}"
    installs = re.findall(r"uv pip install ([^&]*)", install)
    assert len(installs) == 2, f"expected the requirements, then the project: {installs}"
    assert all("--no-deps" in i for i in installs), "every install takes exactly the lock"
    assert installs[-1].split()[-1] == ".", "the project itself is installed last"

    sandbox = step(dockerfile, SANDBOX_STEP).args
    assert "--only-group sandbox" in sandbox and "--frozen" in sandbox
    assert "--no-deps" in sandbox


def test_image_bakes_in_the_code_and_sets_handoff_home(production: Stage) -> None:
    env = " ".join(i.args for i in production.instructions if i.keyword == "ENV")
    home = re.search(r"\bHANDOFF_HOME=(\S+)", env)
    assert home, "the image sets HANDOFF_HOME"
    targets = {}
    for instruction in production.instructions:
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            *sources, target = [w for w in instruction.args.split() if not w.startswith("--")]
            for source in sources:
                targets[source.rstrip("/")] = target.rstrip("/")
    assert targets.get("dags") == "/opt/airflow/dags"
    assert targets.get("plugins") == "/opt/airflow/plugins"
    assert targets.get("templates") == f"{home[1]}/templates"
    assert targets.get("include/config") == f"{home[1]}/include/config"


# -- the install step, run -------------------------------------------------------------------


def _uv() -> Path:
    for candidate in (ROOT / ".tools" / "bin" / "uv", shutil.which("uv")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    message = "uv is neither in .tools/bin (make setup installs it there) nor on PATH"
    if os.environ.get("HANDOFF_REQUIRE_TOOLS") == "1" or os.environ.get("CI"):
        pytest.fail(f"{message}, and HANDOFF_REQUIRE_TOOLS=1 or CI requires it")
    pytest.skip(message)


@dataclass
class Install:
    """A fresh virtual environment with one or more of the Dockerfile's steps run into it."""

    workdir: Path
    venv: Path
    env: dict[str, str]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=self.workdir,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )

    def python(self, code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "python"), "-c", code, *args, **env)

    def distributions(self) -> set[str]:
        code = (
            "import importlib.metadata as m, json; "
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
        )
        result = self.python(code)
        assert result.returncode == 0, result.stderr
        return {_normalized(name) for name in json.loads(result.stdout)}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _copy_context(production: Stage, workdir: Path) -> None:
    """The files the production stage copies from the build context before its install
    step, at the same places relative to its WORKDIR (the .dockerignore'd caches left out)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for instruction in production.instructions:
        if instruction.keyword == "RUN" and "uv export" in instruction.args:
            return
        if instruction.keyword != "COPY" or "--from=" in instruction.args:
            continue
        *sources, target = [w for w in instruction.args.split() if not w.startswith("--")]
        assert not target.startswith("/"), f"unexpected COPY before the install step: {target}"
        destination = workdir / target
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():  # COPY copies a folder's contents
                shutil.copytree(origin, destination, ignore=ignore, dirs_exist_ok=True)
            elif target.endswith("/") or target == "." or len(sources) > 1:
                destination.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination / origin.name)
            else:
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, destination)
    pytest.fail("the production stage has no install step")


def _shell(production: Stage) -> list[str]:
    shells = [i.args for i in production.instructions if i.keyword == "SHELL"]
    return json.loads(shells[-1]) if shells else ["/bin/sh", "-c"]


def _install(base: Path, production: Stage, dockerfile: str, markers: tuple[str, ...]) -> Install:
    uv = _uv()
    workdir, venv, home = base / "context", base / "venv", base / "home"
    workdir.mkdir()
    home.mkdir()
    _copy_context(production, workdir)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # As the official image: the virtual environment activated. Nothing of this process's own
    # environment (the project's venv, its PYTHONPATH, Airflow or handoff settings) leaks in.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "HANDOFF_", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"))
        and k != "PYTHONDONTWRITEBYTECODE"
        and k not in {"UV_NO_CACHE", "UV_PROJECT_ENVIRONMENT", "UV_COMPILE_BYTECODE", "UV_PYTHON"}
    }
    path = [str(venv / "bin"), str(uv.parent), env.get("PATH", "")]
    env.update(
        VIRTUAL_ENV=str(venv),
        PATH=os.pathsep.join(path),
        UV_PYTHON_DOWNLOADS="never",
        AIRFLOW_HOME=str(base / "airflow-home"),
        HANDOFF_HOME=str(home),
    )
    for marker in markers:
        command = step(dockerfile, marker).args
        result = subprocess.run(
            [*_shell(production), command],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
        assert result.returncode == 0, (
            f"the Dockerfile's {marker} failed ({result.returncode}):\n{command}\n{result.stderr}"
        )
    return Install(workdir, venv, env)


@pytest.fixture(scope="module")
def production_install(
    tmp_path_factory: pytest.TempPathFactory, production: Stage, dockerfile: str
) -> Install:
    base = tmp_path_factory.mktemp("production-image")
    return _install(base, production, dockerfile, (INSTALL_STEP,))


@pytest.fixture(scope="module")
def sandbox_install(
    tmp_path_factory: pytest.TempPathFactory, production: Stage, dockerfile: str
) -> Install:
    base = tmp_path_factory.mktemp("sandbox-image")
    install = _install(base, production, dockerfile, (INSTALL_STEP, SANDBOX_STEP))
    # As the sandbox stage: the full source on the path.
    install.env["PYTHONPATH"] = str(install.workdir / "include")
    return install


def test_production_install_runs_the_project(production_install: Install) -> None:
    result = production_install.run("handoff", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: handoff" in result.stdout
    imports = ", ".join(PRODUCTION_MODULES)
    result = production_install.python(f"import {imports}")
    assert result.returncode == 0, f"import {imports} failed:\n{result.stderr}"
    result = production_install.python("import handoff; print(handoff.__file__)")
    venv = production_install.venv.resolve()
    assert Path(result.stdout.strip()).resolve().is_relative_to(venv), (
        f"handoff is imported from {result.stdout.strip()}, not from the installed wheel"
    )
    result = production_install.run("uv", "pip", "check")
    assert result.returncode == 0, f"uv pip check:\n{result.stdout}{result.stderr}"


def test_production_install_is_the_lock_without_dev_or_sandbox(
    production_install: Install,
) -> None:
    code = (
        "import importlib.util, json, sys; "
        f"names = {list(DEVELOPMENT_MODULES) + ['pytest', 'ruff']!r}; "
        "print(json.dumps([n for n in names if importlib.util.find_spec(n) is not None]))"
    )
    result = production_install.python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], "importable in the production install"

    # The exported requirements whose markers hold for this interpreter, evaluated by the
    # installed environment itself.
    result = production_install.python(APPLICABLE_REQUIREMENTS, "requirements.txt")
    assert result.returncode == 0, result.stderr
    locked = {_normalized(name) for name in json.loads(result.stdout)}
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    development = {
        _normalized(re.match(r"[A-Za-z0-9][\w.-]*", spec)[0])
        for name in ("dev", "sandbox")
        for spec in groups[name]
    }
    assert not locked & development, f"the production export holds {sorted(locked & development)}"
    expected = locked | {"handoff-autopilot"}
    installed = production_install.distributions()
    assert installed == expected, (
        f"beyond the lock: {sorted(installed - expected)}; missing: {sorted(expected - installed)}"
    )


@pytest.mark.parametrize("command", DEVELOPMENT_COMMANDS)
def test_development_commands_say_they_are_not_in_the_production_image(
    production_install: Install, command: str
) -> None:
    argv = command.split()
    help_text = production_install.run("handoff", *argv, "--help")
    assert help_text.returncode == 0, help_text.stderr  # the parser knows every command

    base = production_install.workdir.parent
    slug = "-".join(argv)
    home, airflow_home = base / f"home-{slug}", base / f"airflow-{slug}"
    home.mkdir()
    started = time.monotonic()
    result = production_install.run(
        "handoff", *argv, HANDOFF_HOME=str(home), AIRFLOW_HOME=str(airflow_home)
    )
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"handoff {argv[0]} is part of the development install (the sandbox group); "
        "it is not in the production image"
    ], result.stderr
    # It stops before anything runs: nothing written, no Airflow home set up.
    assert not any(home.iterdir()), f"handoff {command} wrote {sorted(home.iterdir())}"
    assert not airflow_home.exists(), f"handoff {command} set up Airflow"
    assert elapsed < 30, f"handoff {command} took {elapsed:.1f} s to refuse"


def test_sandbox_install_adds_the_sandbox(sandbox_install: Install) -> None:
    imports = "handoff.sandbox.server, handoff.smtp_sink, aiosmtpd"
    result = sandbox_install.python(f"import {imports}")
    assert result.returncode == 0, f"import {imports} failed:\n{result.stderr}"
    for name in ("pytest", "ruff"):
        result = sandbox_install.python(f"import {name}")
        assert result.returncode != 0, f"{name} is in the sandbox image"
    result = sandbox_install.run("uv", "pip", "check")
    assert result.returncode == 0, f"uv pip check:\n{result.stdout}{result.stderr}"
