# One image for every Dagster service of backup_pipeline: the code location (gRPC server,
# where runs and their steps execute), dagster-webserver and dagster-daemon.
#
#   docker build -t backup-pipeline:latest .
#
# backup_pipeline_tests/test_deployment_image.py replays this file's COPY and `pip install`
# steps in a fresh virtual environment: keep the install a single `pip install` RUN line.
FROM python:3.11-slim-bookworm

# pg_dump refuses to dump a server newer than itself, and Debian's client lags behind:
# take a recent major from the PostgreSQL project's apt repository (PGDG). pg_dump 18
# dumps servers from 9.2 up to 18.
ARG PG_MAJOR=18
# Optional executors (k8s, celery, docker); set EXTRAS= for the smallest image.
ARG EXTRAS=deploy

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    install -d /usr/share/postgresql-common/pgdg; \
    curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
        https://www.postgresql.org/media/keys/ACCC4CF8.asc; \
    . /etc/os-release; \
    echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
        > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" tini; \
    apt-get purge -y --auto-remove curl; \
    rm -rf /var/lib/apt/lists/*; \
    pg_dump --version

WORKDIR /opt/dagster/app
COPY pyproject.toml constraints.txt README.md ./
COPY backup_pipeline ./backup_pipeline
# constraints.txt pins every transitive version; the Dagster family is pinned together.
RUN python -m pip install --no-cache-dir -c constraints.txt ".[${EXTRAS}]"

COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY deploy/dagster.yaml deploy/workspace.yaml ${DAGSTER_HOME}/

# Non-root. The state dir (key store, audit log) and Dagster's local storage (compute logs,
# step outputs) are volumes; creating them here gives fresh named volumes this owner.
RUN set -eux; \
    chmod 0755 /usr/local/bin/docker-entrypoint.sh; \
    useradd --system --uid 10001 --gid 0 --home-dir /opt/dagster --no-create-home --shell /usr/sbin/nologin dagster; \
    install -d -o dagster -g 0 -m 0770 /var/lib/backup_pipeline "${DAGSTER_HOME}/storage" "${DAGSTER_HOME}/logs"
USER 10001

ENV BACKUP_PIPELINE_STATE_DIR=/var/lib/backup_pipeline
EXPOSE 4000 3000
ENTRYPOINT ["tini", "--", "docker-entrypoint.sh"]
# The code location; the webserver and daemon override the command (docker-compose.yml).
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "backup_pipeline.definitions", "-a", "defs"]
