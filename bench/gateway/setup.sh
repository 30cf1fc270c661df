#!/usr/bin/env bash
# Installs the peers of the gateway comparison, outside the project's own environment:
# LiteLLM's proxy into its own virtualenv, Portkey's gateway into its own npm prefix, and the
# Debian nginx (the instant model server) and wrk (the load generator).
# Idempotent: re-running it only installs what is missing. Versions are pinned so that figures
# from two runs compare like with like.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_VAR="${BENCH_VAR:-$ROOT/var/bench}"
LITELLM_VERSION="${LITELLM_VERSION:-1.106.2}"
PORTKEY_VERSION="${PORTKEY_VERSION:-1.15.2}"
# LiteLLM's proxy imports its OpenTelemetry plumbing on every request; without the SDK the
# import fails and is retried each time (about a third of its CPU in a profile here). Its own
# Docker image ships the SDK, so the bench installs it too: LiteLLM is measured at its best.
OTEL_SDK_VERSION="${OTEL_SDK_VERSION:-1.45.2}"
PYTHON="${BENCH_PYTHON:-python3.11}"

mkdir -p "$BENCH_VAR"

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "nginx and wrk are missing: run 'sudo apt-get install -y nginx wrk'" >&2
    exit 1
  fi
  apt-get update -qq
  # The Debian package enables a system nginx on port 80 where systemd runs; the bench never
  # uses it (it runs its own nginx with its own prefix), so it is left as the package sets it.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk
fi

# LiteLLM: a separate virtualenv, never the project's .venv or uv.lock.
LITELLM_VENV="$BENCH_VAR/litellm-venv"
installed() {
  "$LITELLM_VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null
}
if [ ! -x "$LITELLM_VENV/bin/litellm" ] || [ "$(installed litellm)" != "$LITELLM_VERSION" ] \
  || [ "$(installed opentelemetry-sdk)" != "$OTEL_SDK_VERSION" ]; then
  if command -v uv >/dev/null; then
    uv venv --quiet --allow-existing --python "$PYTHON" "$LITELLM_VENV"
    uv pip install --quiet --python "$LITELLM_VENV/bin/python" \
      "litellm[proxy]==$LITELLM_VERSION" "opentelemetry-sdk==$OTEL_SDK_VERSION"
  else
    "$PYTHON" -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install --quiet \
      "litellm[proxy]==$LITELLM_VERSION" "opentelemetry-sdk==$OTEL_SDK_VERSION"
  fi
fi

# Portkey: its own npm prefix.
PORTKEY_DIR="$BENCH_VAR/portkey"
if [ ! -f "$PORTKEY_DIR/node_modules/@portkey-ai/gateway/package.json" ] \
  || ! grep -q "\"version\": \"$PORTKEY_VERSION\"" "$PORTKEY_DIR/node_modules/@portkey-ai/gateway/package.json"; then
  mkdir -p "$PORTKEY_DIR"
  [ -f "$PORTKEY_DIR/package.json" ] || echo '{"name": "tenantry-bench-portkey", "private": true}' > "$PORTKEY_DIR/package.json"
  (cd "$PORTKEY_DIR" && npm install --silent --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY_VERSION")
fi

echo "litellm $(installed litellm) (opentelemetry-sdk $(installed opentelemetry-sdk))"
echo "portkey $(node -p "require('$PORTKEY_DIR/node_modules/@portkey-ai/gateway/package.json').version")"
echo "$(nginx -v 2>&1)"
echo "wrk $(wrk -v 2>&1 | head -1)"
