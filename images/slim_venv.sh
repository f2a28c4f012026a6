#!/bin/sh
# slim-venv [VENV]: remove from an installed venv what no step runs, in the builder stage of the
# step images (tests/test_images.py imports and runs the steps in the images):
# - C/C++ headers for building extensions (TensorFlow's alone are 175-420 MB);
# - test suites: directories named `tests` inside packages (only lazy test runners such as
#   h5py's run_tests() import them) and pycryptodome's Crypto/SelfTest. Not `test`:
#   TensorFlow's public tf.test lives in _api/v2/test;
# - debug information and local symbols of compiled extensions (strip_elf.py, next to this
#   script: `strip --strip-unneeded`, checked; TensorFlow's libtensorflow_cc.so.2 is 582 MB
#   with them, 421 MB without; Beam's Cython modules shrink by 90%). The dynamic symbol
#   table, all the loader and Python use, stays. Needs binutils (the builder has g++);
# - pyarrow's optional Flight RPC, Substrait and Plasma subsystems (19 MB): only
#   `pyarrow.flight`, `pyarrow.substrait` and `pyarrow.plasma` load them, and neither a step nor
#   TFDV, tfx-bsl or Beam imports those.
set -eu
venv=${1:-/opt/venv}
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "error: slim-venv: no site-packages under $venv" >&2; exit 1; }
command -v strip >/dev/null || { echo "error: slim-venv: strip (binutils) is missing" >&2; exit 1; }
strip_elf=$(dirname "$0")/strip_elf.py
[ -f "$strip_elf" ] || { echo "error: slim-venv: $strip_elf is missing" >&2; exit 1; }
before=$(du -sm "$venv" | cut -f1)
rm -rf "$site/tensorflow/include" "$site/pyarrow/include" "$site/numpy/core/include" \
    "$site/Crypto/SelfTest"
if [ -d "$site/pyarrow" ]; then
    rm -f "$site"/pyarrow/*flight* "$site"/pyarrow/*substrait* "$site"/pyarrow/*plasma*
fi
find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
python3 "$strip_elf" "$site"
echo "slim-venv: $venv $before MB -> $(du -sm "$venv" | cut -f1) MB"
