#!/bin/sh
# slim-venv [VENV]: remove from an installed venv what no step runs, in the builder stage of the
# step images: C/C++ headers for building extensions (TensorFlow's alone are 420 MB) and test
# suites, directories named `tests` inside packages (only lazy test runners such as h5py's
# run_tests() import them). Not `test`: TensorFlow's public tf.test lives in _api/v2/test.
# tests/test_images.py imports and runs the steps in the images.
set -eu
venv=${1:-/opt/venv}
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "error: slim-venv: no site-packages under $venv" >&2; exit 1; }
before=$(du -sm "$venv" | cut -f1)
rm -rf "$site/tensorflow/include" "$site/pyarrow/include" "$site/numpy/core/include"
find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
echo "slim-venv: $venv $before MB -> $(du -sm "$venv" | cut -f1) MB"
