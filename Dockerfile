# The orchestrator: one image for `orchestrator serve`, `run`, `migrate`, `simulate`, ...
# Build: docker build -t orchestrator:local .      Run: see docker-compose.yml, docs/api.md
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user owns nothing but its home and /fleet (where `simulate` may write an
# inventory; a new named volume mounted there inherits that owner); the code stays
# root-owned and read-only.
RUN useradd --system --uid 10001 --create-home --home-dir /home/orchestrator orchestrator \
    && mkdir /fleet && chown orchestrator /fleet

WORKDIR /app
# Dependencies first (a layer that changes only with pyproject.toml), then the code.
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
# Installed in place: the migration runner reads /app/migrations next to the package.
RUN pip install -e . && orchestrator --version
COPY migrations ./migrations
COPY config ./config

USER orchestrator
# No embedded PostgreSQL in a container: set ORCHESTRATOR_DATABASE_URL.
ENV ORCHESTRATOR_LOG_FORMAT=json \
    ORCHESTRATOR_API_HOST=0.0.0.0 \
    ORCHESTRATOR_API_PORT=8080
EXPOSE 8080
# /healthz: the process answers (compose uses /readyz: database reachable and migrated).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["orchestrator"]
CMD ["serve"]
