# prefsync worker image: also runs Flower (the `ops` extra). No test code: the demo profile's
# Braze/Brevo look-alike has an image of its own (tests/fakes/Dockerfile). No secret is
# baked in: settings come from the environment at run time (PREFSYNC_*, see
# docs/operations.md).
FROM python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A non-root user; /data is where Flower keeps its database and /acl where the redis-acl
# service writes Redis's ACL file (volumes in docker-compose, which take this ownership).
RUN useradd --create-home --uid 10001 prefsync \
    && mkdir -p /data /acl \
    && chown prefsync:prefsync /data /acl

WORKDIR /app

COPY pyproject.toml README.md requirements-image.lock ./
COPY worker/ worker/
# Every dependency (Flower's included) at the version and hashes requirements-image.lock pins
# (make lock), then prefsync itself without dependencies: pip takes no hashes for a
# constraints file.
RUN pip install --require-hashes -r requirements-image.lock \
    && pip install --no-deps . \
    && rm -rf build *.egg-info

# The example configs and events (placeholder keys only), for the demo profile.
COPY examples/ examples/

USER prefsync

CMD ["prefsync", "worker"]
