# Worker image: `docker build -t otel-anomaly-pipeline .`
#   docker run otel-anomaly-pipeline                 -> python -m pipeline worker
#   docker run otel-anomaly-pipeline simulate --help -> any other `python -m pipeline` command
# Settings are environment variables (README, "Configuration reference").

# Build stage: wheels for the project and its dependencies. The compiler is for a dependency
# with no binary wheel for the build platform (on x86_64 all of them have one); it stays here,
# out of the runtime image.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY benchmarks ./benchmarks
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: the same base, the wheels installed, no compiler, no source tree. The wheels
# are bind-mounted from the build stage (BuildKit, the default builder of Docker 23+ and
# Compose v2), so they add no layer.
FROM python:3.11-slim
# PYTHONSAFEPATH: `python -m` does not put the (writable) working directory on sys.path.
# METRICS_HOST: the worker's default is the loopback; in a container Prometheus scrapes it from
# outside, so the image listens on every interface.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIPELINE_DATA_DIR=/var/lib/anomaly-pipeline \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9464
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels otel-anomaly-pipeline \
    && groupadd --gid 10001 pipeline \
    && useradd --uid 10001 --gid pipeline --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin pipeline \
    && mkdir -p /var/lib/anomaly-pipeline \
    && chown pipeline:pipeline /var/lib/anomaly-pipeline
# RocksDB table store, one per worker (state is restored from Kafka changelogs when empty).
VOLUME ["/var/lib/anomaly-pipeline"]
WORKDIR /var/lib/anomaly-pipeline
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["python", "-m", "pipeline"]
CMD ["worker"]
