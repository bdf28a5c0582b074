# flowstore operator image: multi-stage, non-root, no build tools in the final stage.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/flowstore \
 && /opt/flowstore/bin/pip install --no-cache-dir ".[all]"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/flowstore /opt/flowstore
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin flowstore
USER 10001:10001
ENV PATH=/opt/flowstore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["flowstore", "operator", "--liveness", "http://0.0.0.0:8080/healthz", "--log-format", "json"]
