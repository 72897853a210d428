# Handoff Autopilot on the official Apache Airflow image.
#
#   docker build --target production -t handoff-autopilot .      # what every Airflow service runs
#   docker build --target sandbox -t handoff-autopilot-sandbox .  # + the staging CRM sandbox
#
# `docker compose build` builds both (docker-compose.yaml names the targets). The production
# target installs the project from uv.lock with its production dependencies only: the sandbox
# and dev dependency groups (aiosmtpd, pytest, ruff, ...) stay out, and so do the sandbox
# modules, which the wheel excludes. DAGs, plugins, templates and the configuration are baked
# in: the containers need no code mounts.
#
# The install steps between the install-step and sandbox-step markers are run as they stand,
# with this file's SHELL, in fresh virtual environments by tests/test_image.py: keep each one
# RUN.

ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

FROM ${AIRFLOW_IMAGE} AS production

SHELL ["/bin/bash", "-o", "pipefail", "-e", "-u", "-c"]

# The image's Airflow lives in the airflow user's virtual environment (~/.local, first on
# PATH; the image sets VIRTUAL_ENV to it). The install steps name that interpreter
# themselves (--python "$(command -v python)"), so they do not depend on VIRTUAL_ENV.
ENV UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never

USER root
# uv pinned to the version of the Makefile (UV_VERSION), which wrote uv.lock.
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
RUN mkdir -p /opt/handoff /opt/airflow/shared \
    && chown airflow:0 /opt/handoff /opt/airflow/shared \
    && chmod g+rwx /opt/handoff /opt/airflow/shared
USER airflow

WORKDIR /opt/handoff
COPY --chown=airflow:0 pyproject.toml uv.lock README.md ./
COPY --chown=airflow:0 include/ include/

# install-step:begin
RUN uv export --frozen --no-default-groups --no-emit-project --output-file requirements.txt \
    && uv pip install --python "$(command -v python)" --no-deps -r requirements.txt \
    && uv pip install --python "$(command -v python)" --no-deps .
# install-step:end

# HANDOFF_HOME: relative paths of include/config/handoff.toml resolve against it
# (templates/emails, include/config/playbook.toml, var/...).
ENV HANDOFF_HOME=/opt/airflow
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 templates/ /opt/airflow/templates/
COPY --chown=airflow:0 include/config/ /opt/airflow/include/config/

WORKDIR /opt/airflow

# The staging CRM sandbox (`handoff sandbox`): production plus the sandbox dependency group,
# with the full source on the path for the modules the wheel leaves out.
FROM production AS sandbox

WORKDIR /opt/handoff
# sandbox-step:begin
RUN uv export --frozen --only-group sandbox --no-emit-project \
        --output-file requirements-sandbox.txt \
    && uv pip install --python "$(command -v python)" --no-deps -r requirements-sandbox.txt
# sandbox-step:end
ENV PYTHONPATH=/opt/handoff/include
WORKDIR /opt/airflow

# The default target: a plain `docker build .` gives the production image.
FROM production
