# syntax=docker/dockerfile:1
# Two stages: build the wheel (Rust + maturin), then a slim runtime without compilers.

FROM python:3.12-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir "maturin>=1.7,<2"
WORKDIR /src
# Cargo.lock pins every Rust dependency; --locked fails the build instead of resolving anew.
# .dockerignore keeps the context to these files (no .venv, target/ or in-tree builds).
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust_core ./rust_core
COPY migrations ./migrations
COPY tmws ./tmws
RUN maturin build --release --locked --out /wheels

FROM python:3.12-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && useradd -m -u 1000 tmws \
    && mkdir -p /var/log/tmws /app/config /data \
    && chown tmws:tmws /var/log/tmws /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
# The guide's `python -m alembic upgrade head` works from /app (migrations are in the wheel).
COPY deploy/alembic.ini /app/alembic.ini
USER tmws
ENV TMWS_API_HOST=0.0.0.0 \
    TMWS_API_PORT=8000 \
    TMWS_DATA_DIR=/data
EXPOSE 8000
# tmws drains in-flight requests on SIGTERM for TMWS_SHUTDOWN_TIMEOUT (30 s): give
# `docker stop` a longer timeout (compose: stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=40s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=5).status == 200 else 1)"
CMD ["tmws", "serve"]
