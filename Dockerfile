# prefsync worker image: also runs Flower (the `ops` extra) and, for the demo profile, the
# local Braze/Brevo look-alike (tests/fakes). No secret is baked in: settings come from the
# environment at run time (PREFSYNC_*, see docs/operations.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A non-root user; /data is where Flower keeps its database (a volume in docker-compose).
RUN useradd --create-home --uid 10001 prefsync \
    && mkdir -p /data \
    && chown prefsync:prefsync /data

WORKDIR /app

COPY pyproject.toml README.md ./
COPY worker/ worker/
RUN pip install '.[ops]' && rm -rf build *.egg-info

# The fake destinations (`python -m tests.fakes.destinations`) and the example configs and
# events (placeholder keys only), for the demo profile.
COPY tests/__init__.py tests/__init__.py
COPY tests/fakes/ tests/fakes/
COPY examples/ examples/

USER prefsync

CMD ["prefsync", "worker"]
