#!/usr/bin/env bash
# Install mmcv 2.1.0 into a virtual environment, built from source against its torch.
#
#   tools/install_mmcv.sh PYTHON LOCK WHEEL_DIR
#
# mmcv's compiled ops only load under the torch they were built against, and pip's
# wheel cache does not key on the torch version. So the wheel is built once per torch
# version into WHEEL_DIR (bypassing pip's cache) and installed from there. A wheel that
# is there but whose ops do not load (built elsewhere, or cut short) is built again.
set -euo pipefail
py=$1 lock=$2 wheels=$3

build() {
  mkdir -p "$wheels"
  local tmp
  tmp=$(mktemp -d "$wheels/.build.XXXXXX")
  echo "building mmcv 2.1.0 against torch $("$py" -c 'import torch; print(torch.__version__)') (about 10 minutes on 2 cores) into $wheels"
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$py" -m pip wheel -q --no-cache-dir --no-build-isolation --no-deps \
    -c "$lock" -w "$tmp" 'mmcv==2.1.0'
  mv "$tmp"/mmcv-2.1.0-*.whl "$wheels"/
  rm -rf "$tmp"
}

wheel() { ls "$wheels"/mmcv-2.1.0-*.whl 2>/dev/null | head -n 1; }

[ -n "$(wheel)" ] || build
"$py" -m pip install -q -c "$lock" --force-reinstall --no-deps "$(wheel)"
"$py" -m pip install -q -c "$lock" "$(wheel)"
if ! "$py" -c 'import mmcv.ops' 2>/dev/null; then
  echo "the mmcv wheel in $wheels does not load under this torch: building it again"
  rm -f "$wheels"/mmcv-2.1.0-*.whl
  build
  "$py" -m pip install -q -c "$lock" --force-reinstall --no-deps "$(wheel)"
  "$py" -c 'import mmcv.ops'
fi
