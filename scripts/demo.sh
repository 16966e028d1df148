#!/bin/sh
# End-to-end demo: start whisperd with the fixture model, submit tests/data/jfk.flac, print the
# transcript, stop the daemon gracefully. Everything lives under .cache/demo.
set -eu
PY=${PY:-.venv/bin/python}
DEMO=.cache/demo
rm -rf "$DEMO" && mkdir -p "$DEMO/media" "$DEMO/results"
cat > "$DEMO/whisperd.toml" <<TOML
[broker]
job_queue = "whisperd.demo.jobs"
result_queue = "whisperd.demo.results"
[model]
name = "$PWD/tests/data/fixture-model.pt"
[storage]
media_root = "$PWD/$DEMO/media"
results_dir = "$PWD/$DEMO/results"
[workers]
count = 1
TOML
$PY -m whisperd check-config --config "$DEMO/whisperd.toml"
$PY -m whisperd run --config "$DEMO/whisperd.toml" 2>"$DEMO/whisperd.log" &
DAEMON=$!
trap 'kill -TERM $DAEMON 2>/dev/null; wait $DAEMON 2>/dev/null || true' EXIT
echo "demo: whisperd running (pid $DAEMON, log $DEMO/whisperd.log); submitting tests/data/jfk.flac"
$PY -m whisperd submit --config "$DEMO/whisperd.toml" --wait --timeout 120 --output "$DEMO/out" tests/data/jfk.flac
echo "demo: result files in $DEMO/results:"; ls "$DEMO/results"
