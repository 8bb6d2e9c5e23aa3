#!/usr/bin/env bash
# Create .venv and install mixln_dist into it (editable). `bash setup.sh --dev` adds the test dependencies.
#
# torch: if .venv has none yet, this installs torch==$TORCH_VERSION (default 2.13.0), the CPU build on this
# project's machines. On a GPU machine, install your CUDA build first (.venv/bin/pip install torch --index-url
# https://download.pytorch.org/whl/cu128) and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION:-2.13.0}"
fi
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
# torch is pinned to what is installed so that no dependency can swap it for another build.
torch_now=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
"${pip[@]}" -e ".${extras}" "torch==${torch_now}"
echo "setup.sh: .venv ready (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
