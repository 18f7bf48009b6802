#!/usr/bin/env bash
# Runs the ONNX backend node test suite (onnx==1.22.0) on stitch's CPU backend.
#
# Fetches the onnx wheel with `pip download --no-deps` (nothing is installed),
# unzips onnx/backend/test/data/node into the cache ($STITCH_CACHE_DIR, default
# ~/.cache/stitch), runs every case isolated (own thread, caught panic, timeout),
# and writes target/onnx-conformance/report.json, per-op.md and details.tsv.
# Then regenerate docs/OPS.md: cargo run -p stitch-cli -- ops --markdown > docs/OPS.md
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${STITCH_CACHE_DIR:-$HOME/.cache/stitch}"
DEST="$CACHE/onnx-1.22.0/node"
if [ ! -f "$DEST/.complete" ]; then
  WHEELS="$CACHE/pypi"
  mkdir -p "$WHEELS"
  pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    onnx==1.22.0 -d "$WHEELS"
  WHEEL="$WHEELS/onnx-1.22.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
  echo "1d0a2bdb15eb2b3cb65c438f3423d9620d14fdce32f92380e6bb1b2e09568ef5  $WHEEL" | sha256sum -c -
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  unzip -q "$WHEEL" 'onnx/backend/test/data/node/*' -d "$TMP"
  mkdir -p "$DEST"
  cp -r "$TMP/onnx/backend/test/data/node/." "$DEST/"
  touch "$DEST/.complete"
fi
cargo run -p stitch-onnx --example conformance -- "$DEST" target/onnx-conformance
cp target/onnx-conformance/per-op.md crates/stitch-onnx/conformance-summary.md
echo "report: target/onnx-conformance/report.json; per-op table: crates/stitch-onnx/conformance-summary.md"
