#!/usr/bin/env bash
# The GPU check on a lent CUDA machine, in one command (at most 8 minutes once installed):
#
#   bash bench/gpu_check.sh [OUT_DIR] [--no-install]
#
# 1. .venv as `make install` makes it (skipped while .venv/.installed is newer than pyproject.toml, or with
#    --no-install); a package that cannot be installed is named and the check goes on without it;
# 2. nvidia-smi and the GPU as torch sees it;
# 3. the tests marked cuda (`pytest -m cuda`, at most 2 minutes, JUnit XML kept);
# 4. `python -m bench.gpu_check` (at most 6 minutes): the measurements, into docs/benchmarks.md's GPU section.
# Everything lands in OUT_DIR (default $OUT, else runs/gpu_check). Back where the docs are kept:
#   python -m bench.gpu_check --record OUT_DIR/gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
out="${OUT:-runs/gpu_check}"
for arg in "$@"; do
  case "$arg" in
    --no-install) install=0 ;;
    *) out="$arg" ;;
  esac
done
mkdir -p "$out"
PYTHON="${PYTHON:-python3}"
BIN=.venv/bin
STAMP=.venv/.installed
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
not_installed=()
status=0

say() { echo "[gpu_check] $*" | tee -a "$out/summary.txt"; }

requirements() {  # pyproject's run-time and dev requirements, one a line
  "$BIN/python" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))'
}

if [ "$install" = 1 ] && ! [ "$STAMP" -nt pyproject.toml ]; then
  say "installing into .venv as make install does (pip output in $out/pip.log)"
  [ -x "$BIN/python" ] || "$PYTHON" -m venv .venv || { say "cannot create .venv with $PYTHON"; exit 1; }
  "$BIN/pip" install --quiet --upgrade pip >>"$out/pip.log" 2>&1 || say "pip could not upgrade itself (going on)"
  for req in torch==2.14.1 torchvision==0.29.1; do
    "$BIN/pip" install --quiet "$req" >>"$out/pip.log" 2>&1 || not_installed+=("$req")
  done
  if "$BIN/pip" install --quiet -e ".[dev]" >>"$out/pip.log" 2>&1; then
    [ ${#not_installed[@]} -gt 0 ] || touch "$STAMP"
  else
    say "pip install -e .[dev] failed: installing its requirements one at a time to name the missing ones"
    while IFS= read -r req; do
      "$BIN/pip" install --quiet "$req" >>"$out/pip.log" 2>&1 || not_installed+=("$req")
    done < <(requirements)
    "$BIN/pip" install --quiet --no-deps -e . >>"$out/pip.log" 2>&1 || not_installed+=("retinafl (pip install --no-deps -e .)")
  fi
  [ ${#not_installed[@]} -eq 0 ] || say "NOT INSTALLED: ${not_installed[*]} (the parts that need them say so)"
fi
[ -x "$BIN/python" ] || { say "no .venv/bin/python: nothing can run"; exit 1; }

{ nvidia-smi || echo "nvidia-smi: not available"; } >"$out/nvidia-smi.txt" 2>&1
cat "$out/nvidia-smi.txt"
"$BIN/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU:",
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible")' 2>&1 | tee -a "$out/summary.txt" \
  || status=1

say "tests marked cuda (pytest -m cuda)"
timeout 120 "$BIN/python" -m pytest -m cuda -q -p no:cacheprovider --continue-on-collection-errors \
  --junitxml "$out/cuda_tests.xml" 2>&1 | tee "$out/cuda_tests.txt" \
  || { status=1; say "cuda tests did not all pass: $out/cuda_tests.txt"; }

say "measurements (python -m bench.gpu_check)"
timeout 360 "$BIN/python" -m bench.gpu_check --out "$out" --junit "$out/cuda_tests.xml" 2>&1 | tee "$out/gpu_check.txt" \
  || { status=1; say "a measurement failed or ran out of time: $out/gpu_check.txt"; }

[ ${#not_installed[@]} -eq 0 ] || say "NOT INSTALLED: ${not_installed[*]}"
say "results in $out; where the docs are kept: python -m bench.gpu_check --record $out/gpu_check.json"
exit "$status"
