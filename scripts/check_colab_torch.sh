#!/usr/bin/env bash
# Colab keeps its own torch: does vlmloc run on the OLDEST torch/torchvision its range allows?
#
# A fresh venv (not the lock): the oldest torch in pyproject.toml's range that the registry serves
# and the torchvision released with it, then `pip install -e .` WITHOUT -c constraints.txt (pip keeps
# that torch, it is in range, and takes the newest of everything else, as on Colab), then chapter 1
# at n_samples 8 on toy-llava. Prints one line for the README's "Installing" paragraph and writes it
# to $OUT/colab_torch.txt. Too heavy for CI (torch with its CUDA libraries is ~3 GB); run by hand:
#
#   bash scripts/check_colab_torch.sh                 # oldest torch in range
#   TORCH=2.8.0 bash scripts/check_colab_torch.sh     # any other version
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-/tmp/vlmloc-colab-torch}
OUT=${OUT:-/tmp/vlmloc-colab-torch-out}
N_SAMPLES=${N_SAMPLES:-8}
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

rm -rf "$VENV" "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check -q)
"${PIP[@]}" packaging

# The oldest torch the registry serves inside pyproject.toml's range, and the torchvision made for
# it (torchvision 0.N+15 pairs with torch 2.N).
read -r TORCH TORCHVISION < <("$VENV/bin/python" - "$ROOT/pyproject.toml" "${TORCH:-}" <<'PY'
import json, re, subprocess, sys, tomllib
from packaging.requirements import Requirement
from packaging.version import Version

deps = {Requirement(d).name: Requirement(d) for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]}

def served(name):
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True, text=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("Available versions:"))
    return sorted(Version(v.strip()) for v in line.split(":", 1)[1].split(","))

torch = Version(sys.argv[2]) if sys.argv[2] else min(v for v in served("torch") if v in deps["torch"].specifier and not v.is_prerelease)
want = f"0.{torch.minor + 15}"
vision = min(v for v in served("torchvision") if str(v).startswith(want + ".") or str(v) == want)
assert vision in deps["torchvision"].specifier, (vision, deps["torchvision"].specifier)
print(torch, vision)
PY
)
echo "torch $TORCH, torchvision $TORCHVISION (oldest in range); installing ..."
"${PIP[@]}" "torch==$TORCH" "torchvision==$TORCHVISION"
"${PIP[@]}" -e "$ROOT"                       # no -c constraints.txt: the torch above stays
"${PIP[@]}" --no-deps simple-lama-inpainting==0.1.2
"${PIP[@]}" papermill ipykernel              # what Colab's Jupyter already has (its python3 kernel is this venv's)

VERSIONS=$("$VENV/bin/python" -c "import torch, torchvision, transformers, nnsight, numpy; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}, nnsight {nnsight.__version__}, numpy {numpy.__version__}')")
START=$(date +%s)
if (cd "$ROOT" && "$VENV/bin/python" -m vlmloc.chapters run \
        --chapters 01_data_and_baselines --models toy-llava -p n_samples "$N_SAMPLES" \
        --out-dir "$OUT/runs" --results-dir "$OUT/results") >"$OUT/run.log" 2>&1; then
    RESULT="passed"
else
    RESULT="FAILED (see $OUT/run.log)"
fi
LINE="$(date -u +%Y-%m-%d): chapter 1 at n_samples $N_SAMPLES on toy-llava with $VERSIONS: $RESULT in $(($(date +%s) - START)) s"
echo "$LINE" | tee "$OUT/colab_torch.txt"
[ "$RESULT" = passed ]
