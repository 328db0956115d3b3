#!/usr/bin/env bash
# Fetch, here, the wheels the borrowed GPU machine lacks to run lungnet's models on Keras + JAX and the MONAI
# comparison: its Python 3.12 has JAX, PyTorch, NumPy, h5py, ml-dtypes, rich, absl-py, pandas and OpenCV, but no
# Keras, keras-hub, namex, optree or MONAI, and it reaches no registry. Versions are this checkout's pins
# (requirements.txt, benchmarks/requirements-monai.txt; optree and namex as the venv resolved them).
# Writes .whl/ (ignored by git through .git/info/exclude); carry it: run(..., carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
pin() { sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "$2" | head -1; }
installed() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
wheels=(
  "keras==$(pin keras requirements.txt)"
  "keras-hub==$(pin keras-hub requirements.txt)"
  "monai==$(pin monai benchmarks/requirements-monai.txt)"
  "namex==$(installed namex)"
  "optree==$(installed optree)"
)
for w in "${wheels[@]}"; do
  [[ $w == *== ]] && { echo "device_wheels.sh: no version found for ${w%==}" >&2; exit 1; }
done
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${wheels[@]}"
ls -la .whl
du -sh .whl
