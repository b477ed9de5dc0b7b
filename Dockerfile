# syntax=docker/dockerfile:1
# tmws: a slim runtime image with no compilers; the wheel comes from one of two stages.
#
#   docker build -t tmws .                             # compiles the wheel (Rust, maturin)
#   make dist && docker build --build-arg WHEEL_SOURCE=dist -t tmws .   # the prebuilt wheel
#
# Build arguments: BASE_IMAGE (any Debian-based CPython >= 3.11 image), WHEEL_SOURCE
# (compile | dist), EXTRAS (e.g. `embedded`: a one-container trial that runs its own
# PostgreSQL in /data when TMWS_DATABASE_URL is unset), RUSTUP_URL, MATURIN_VERSION, and
# pip's PIP_INDEX_URL / PIP_EXTRA_INDEX_URL for a private package index.
ARG BASE_IMAGE=python:3.12-slim
ARG WHEEL_SOURCE=compile

FROM ${BASE_IMAGE} AS wheel-compile
ARG RUSTUP_URL=https://sh.rustup.rs
ARG MATURIN_VERSION=">=1.7,<2"
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf "$RUSTUP_URL" | sh -s -- -y --profile minimal
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir "maturin${MATURIN_VERSION}"
WORKDIR /src
# Cargo.lock pins every Rust dependency; --locked fails the build instead of resolving anew.
# .dockerignore keeps the context to these files (no .venv, target/ or in-tree builds).
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust_core ./rust_core
COPY bench/loadgen ./bench/loadgen
COPY migrations ./migrations
COPY tmws ./tmws
RUN maturin build --release --locked --out /wheels

# `make dist` wrote an abi3 manylinux_2_28 wheel: any CPython >= 3.11 base takes it.
FROM ${BASE_IMAGE} AS wheel-dist
COPY dist/*.whl /wheels/

FROM wheel-${WHEEL_SOURCE} AS wheel

FROM ${BASE_IMAGE}
ARG EXTRAS=""
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client redis-tools tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 tmws \
    && mkdir -p /var/log/tmws /app/config /data \
    && chown tmws:tmws /var/log/tmws /data
# Only the wheel crosses over: no compiler, Rust or build cache in this image.
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir --disable-pip-version-check --find-links /tmp/wheels \
        "tmws${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /tmp/wheels
WORKDIR /app
# `python -m alembic upgrade head` (deploy/README.md, Step 4) works from /app: the
# migrations ship in the wheel.
COPY deploy/alembic.ini /app/alembic.ini
COPY deploy/config/patterns.yaml /app/config/patterns.yaml
USER tmws
ENV TMWS_API_HOST=0.0.0.0 \
    TMWS_API_PORT=8000 \
    TMWS_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# tini as PID 1 forwards SIGTERM to tmws, which drains in-flight requests for
# TMWS_SHUTDOWN_TIMEOUT (30 s): give `docker stop` a longer timeout (compose: stop_grace_period).
STOPSIGNAL SIGTERM
# Readiness, not liveness: healthy only while the engine, PostgreSQL and Redis are. Public
# (no token, even with TMWS_AUTH_ENABLED=true); a 503 raises HTTPError, i.e. exit 1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=40s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=5).status == 200 else 1)"
ENTRYPOINT ["tini", "--"]
CMD ["tmws", "serve"]
