#!/usr/bin/env bash
# A separate venv for bench/model_speed.py with keras-hub, layered on the project's venv (read-only use of it).
#
# Why not `pip install -e '.[bench]'` into .venv: keras-hub 0.32 requires tensorflow-text>=2.20.1 on Linux, and
# tensorflow-text requires the full `tensorflow` distribution, which pip would install next to tensorflow-cpu
# 2.21 into the same `tensorflow/` package folder (two distributions owning one set of files). The image
# segmenter does not use tensorflow-text (only keras-hub's text tokenizers do), so keras-hub is installed
# here with --no-deps plus the modules its import actually needs; TensorFlow/Keras come from .venv through
# a .pth file, so both models run on the very same TensorFlow build.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/bench/.venv}"
PROJECT_SITE="$("$ROOT/.venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
if [ ! -x "$VENV/bin/python" ]; then
  python3.11 -m venv "$VENV"
fi
SITE="$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
echo "$PROJECT_SITE" > "$SITE/project-venv.pth"
"$VENV/bin/pip" install -q --no-deps keras-hub==0.32.0 regex kagglehub kagglesdk==0.1.28
"$VENV/bin/pip" install -q tokenizers sentencepiece
"$VENV/bin/python" -c "import keras_hub, tensorflow as tf; print('keras-hub', keras_hub.__version__, 'tensorflow', tf.__version__)"
