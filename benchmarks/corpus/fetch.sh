#!/usr/bin/env bash
# Everything the corpus recorder runs that is not the project's: the OpenTelemetry Python SDK in
# a virtualenv of its own (PyPI), the OpenTelemetry Java agent (Maven Central) and the
# OpenTelemetry JS SDK (npm, at benchmarks/corpus/node/package-lock.json). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${CORPUS_CACHE:-$root/.cache/corpus}"
agent_version="${OTEL_JAVAAGENT_VERSION:-2.33.1}"
mkdir -p "$cache"
if [ ! -x "$cache/venv/bin/python" ]; then
  python3 -m venv "$cache/venv"
fi
"$cache/venv/bin/pip" install -q -r "$here/requirements.txt"
jar="$cache/opentelemetry-javaagent-$agent_version.jar"
if [ ! -s "$jar" ]; then
  url="https://repo1.maven.org/maven2/io/opentelemetry/javaagent/opentelemetry-javaagent/$agent_version/opentelemetry-javaagent-$agent_version.jar"
  curl -fsSL --retry 3 -o "$jar.part" "$url"
  mv "$jar.part" "$jar"
fi
ln -sf "$(basename "$jar")" "$cache/opentelemetry-javaagent.jar"
# The Node.js programs' SDK, at the versions of the lockfile.
mkdir -p "$cache/node"
cp "$here/node/package.json" "$here/node/package-lock.json" "$cache/node/"
if ! cmp -s "$here/node/package-lock.json" "$cache/node/.installed-lock" 2>/dev/null; then
  (cd "$cache/node" && npm ci --silent --no-audit --no-fund)
  cp "$here/node/package-lock.json" "$cache/node/.installed-lock"
fi
echo "corpus tools in $cache: $("$cache/venv/bin/python" -c 'import opentelemetry.sdk.version as v; print("opentelemetry-sdk", v.__version__)'), java agent $agent_version, node $(node --version) with @opentelemetry/sdk-node $(cd "$cache/node" && node -p 'require("@opentelemetry/sdk-node/package.json").version')"
