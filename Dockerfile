# syntax=docker/dockerfile:1
# The flowstore operator image (docs/image.md).
#
#   docker build -t flowstore-operator .                       # real world: python:3.11-slim
#   podman build --build-arg PYTHON_IMAGE=localhost/flowstore-python:3.11 \
#     -t localhost/flowstore-operator:dev .                    # here: scripts/lib/base-image.sh
#
# Two stages: `build` makes a virtualenv with flowstore[all] (the operator and every storage
# backend's SDK); the final stage copies only that virtualenv onto a fresh base: no compiler,
# no build dependencies, no sources. It runs as uid 10001 and writes only under /tmp (HOME and
# TMPDIR), so it works with readOnlyRootFilesystem and an emptyDir at /tmp (the Helm chart).
#
# Any slim Debian-style Python 3.11+ image works as the base: the venv is made with `python3 -m
# venv`, which is /usr/local/bin/python3 in python:3.11-slim and /usr/bin/python3 in Debian's.
ARG PYTHON_IMAGE=python:3.11-slim

# ------------------------------------------------------------------ build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/flowstore
WORKDIR /src
# Dependencies first, against a stub package (and README), so this layer is rebuilt only
# when pyproject.toml changes, not on every source or README edit.
COPY pyproject.toml ./
RUN mkdir -p operator/flowstore && touch operator/flowstore/__init__.py README.md \
 && /opt/flowstore/bin/pip install ".[all]" \
 && rm -rf operator build README.md
# Then flowstore itself (bytecode compiled now, at install time: the image never writes it).
# The package's long description is a stub: a README edit does not rebuild the image.
COPY operator ./operator
RUN echo "flowstore: see https://github.com/flowstore-dev/flowstore" >README.md \
 && /opt/flowstore/bin/pip install --no-deps --force-reinstall . \
 && rm -rf build README.md \
 && /opt/flowstore/bin/python -c "import flowstore.controller.handlers, flowstore.storage.s3, \
      flowstore.storage.gcs, flowstore.storage.azure, boto3, google.cloud.storage, azure.storage.blob" \
 && /opt/flowstore/bin/pip uninstall -y pip

# ------------------------------------------------------------------ runtime
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="flowstore-operator" \
      org.opencontainers.image.description="Kubernetes operator that stores workflow flows (FlowStorage / StoredFlow)" \
      org.opencontainers.image.licenses="Apache-2.0"
# git: the git-hosted storages (`git` backend) clone with the git command. Found missing by the
# first run of this image on a real node (`make demo-cluster`): the slim bases have no git.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/*
# A fixed non-root uid/gid (Kubernetes runAsNonRoot needs a numeric USER); no home directory:
# HOME is /tmp, the only writable place.
RUN groupadd --gid 10001 flowstore \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin flowstore
# Root-owned and read-only to the operator.
COPY --from=build /opt/flowstore /opt/flowstore
ENV PATH=/opt/flowstore/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/flowstore \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
WORKDIR /tmp
USER 10001:10001
# kopf's liveness endpoint (the chart's livenessProbe).
EXPOSE 8080
ENTRYPOINT ["flowstore", "operator", "--liveness", "http://0.0.0.0:8080/healthz"]
CMD ["--log-format", "json"]
