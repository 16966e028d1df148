#!/bin/sh
# Build whisperd's private Python environment for the Debian package, called by debian/rules.
#
#   build-venv.sh STAGE VENV SRC LOCK
#
# The venv is created in STAGE (debian/whisperd) under its final path VENV (/usr/lib/whisperd/venv),
# then every reference to the staging path is rewritten to VENV. Packages come from LOCK with
# --no-deps (pip resolves nothing, so it can never pull another torch or triton), byte-code is not
# compiled here (the postinst does it, as Debian's Python policy wants), and parts nobody runs in
# production (C++ headers, test suites, pip itself) are left out.
set -eu
STAGE=$1 VENV=$2 SRC=$3 LOCK=$4
PYTHON=${PYTHON:-/usr/bin/python3.11}
target="$STAGE$VENV"
log() { echo "build-venv: $*"; }

rm -rf "$target"
mkdir -p "$(dirname "$target")"
"$PYTHON" -m venv "$target"
py="$target/bin/python"
pip() { "$py" -m pip --disable-pip-version-check --no-input -q "$@"; }

# setuptools first: the sdists in the lock (openai-whisper, sdnotify) and whisperd itself are
# built with it, without build isolation, so building needs nothing from outside the lock.
log "installing $(grep -c '^[A-Za-z]' "$LOCK") pinned distributions from $LOCK"
pip install --no-deps --no-compile "$(grep -i '^setuptools==' "$LOCK")"
pip install --no-deps --no-compile --no-build-isolation --use-pep517 --prefer-binary -r "$LOCK"
log "installing whisperd from $SRC"
pip install --no-deps --no-compile --no-build-isolation --use-pep517 "$SRC"

# Everything the lock and setup.py require must be there, except triton (GPU word timings only).
problems=$("$py" -m pip check 2>&1 | grep -v -E '^openai-whisper [^ ]+ requires triton|^No broken' || true)
if [ -n "$problems" ]; then
    echo "build-venv: the lock does not satisfy the requirements (update $LOCK, see packaging/lock.sh):" >&2
    echo "$problems" >&2
    exit 1
fi
"$py" -m pip uninstall -q -y pip

site=$(echo "$target"/lib/python3*/site-packages)
log "pruning what production never loads"
find "$site"/torch/bin -maxdepth 1 -type f ! -name torch_shm_manager -delete  # C++ tests, protoc
rm -rf "$site"/torch/include "$site"/torch/test "$site"/torch/share/cmake \
    "$site"/torch/lib/libjitbackend_test.so "$site"/torch/lib/libtorchbind_test.so \
    "$site"/torch/lib/libbackend_with_compiler.so "$site"/torch/lib/libaoti_custom_ops.so \
    "$site"/whisperd-*.dist-info/direct_url.json "$target"/share
# Only the whisperd command: the venv's other entry points (torchrun, f2py, uvicorn, ...) and the
# activate scripts serve no one on a server, and whisperd reaches everything as a library.
find "$target/bin" -maxdepth 1 -type f ! -name whisperd -delete
for pkg in numpy numba llvmlite sympy networkx scipy sklearn umap hdbscan pynndescent colour; do
    find "$site/$pkg" -depth -type d -name tests -exec rm -rf {} +
done
# joblib's test suite (its old compressed pickles read as broken .gz files) and a coverage report
# colour-science's wheel carries by mistake.
rm -rf "$site"/joblib/test "$site"/colour/htmlcov
find "$target" -depth -type d -name __pycache__ -exec rm -rf {} +
# The three largest libraries keep a full symbol table (125 MB together); the smoke test below
# proves them intact. The others stay as built: auditwheel's patchelf edits can break on strip.
strip --strip-unneeded "$site"/torch/lib/libtorch_cpu.so "$site"/torch/lib/libtorch_python.so \
    "$site"/llvmlite/binding/libllvmlite.so
# Modules and license texts that wheels ship executable are not programs to run.
find "$site" -type f -perm /111 | while read -r f; do
    [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = 177ELF ] || chmod a-x "$f"
done

# Scripts and pyvenv.cfg name the staging path; make them name the installed one.
grep -rlI -F "$target" "$target/bin" "$target/pyvenv.cfg" | while read -r f; do
    sed -i "s|$target|$VENV|g" "$f"
done
left=$(grep -rlI -F "$STAGE" "$target" || true)
if [ -n "$left" ]; then
    echo "build-venv: files still naming the staging path $STAGE:" >&2
    echo "$left" >&2
    exit 1
fi

# Smoke test from the staging tree: the imports the service needs, and a real transcription
# with the fixture model when the source tree has it.
log "smoke test"
PYTHONDONTWRITEBYTECODE=1 "$py" - "$SRC" <<'PY'
import os
import shutil
import sys

import numpy as np
import torch
import whisper

import whisperd.cli
import whisperd.supervisor
import whisperd.worker  # noqa: F401
from whisperd import speech  # the speech gate: Silero VAD's ONNX model ships inside faster-whisper

src = sys.argv[1]
model_path = os.path.join(src, "tests/data/fixture-model.pt")
audio = os.path.join(src, "tests/data/jfk.flac")
print(f"build-venv: torch {torch.__version__} (cuda {torch.version.cuda}), whisper {whisper.__version__}")
assert speech.find_speech(np.zeros(16000, np.float32), 0.5, 2000, 400).chunks == []
if os.path.exists(model_path) and os.path.exists(audio) and shutil.which("ffmpeg"):
    # word_timestamps runs whisper's numba DTW: llvmlite's JIT works too.
    result = whisper.load_model(model_path, device="cpu").transcribe(audio, fp16=False, word_timestamps=True)
    text = result["text"]
    print(f"build-venv: fixture transcription: {text.strip()[:60]}...")
    assert "country" in text, text
    found = speech.find_speech(whisper.load_audio(audio), 0.5, 2000, 400)
    print(f"build-venv: speech gate: {found.seconds:.1f} s of speech in {audio}")
    assert found.seconds > 5, found.chunks
PY
find "$target" -depth -type d -name __pycache__ -exec rm -rf {} +
log "done: $(du -sh "$target" | cut -f1) in $target"
