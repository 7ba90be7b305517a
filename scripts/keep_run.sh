#!/usr/bin/env bash
# Keep a finished run's record in the repository: what `llm-ner report` / `compare` and the README's numbers read
# back (config.yaml, summary.json, the *_metrics.json files, metrics.jsonl, analysis.json, and model/'s small JSON
# files: the model config, the calibration, best.json) — never weights, checkpoints or predictions. The machines a run
# is made on are not kept between sessions (a run dir of a month's work vanished once); this record is what lasts.
#   scripts/keep_run.sh RUN_DIR [DEST_PARENT]        # -> DEST_PARENT/NAME (default docs/runs/NAME)
set -euo pipefail
run="${1:?usage: scripts/keep_run.sh RUN_DIR [DEST_PARENT]}"
dest="${2:-$(dirname "$0")/../docs/runs}/$(basename "$run")"
[ -f "$run/test_metrics.json" ] || { echo "$run: not a finished run (test_metrics.json missing)"; exit 2; }
mkdir -p "$dest/model"
for f in config.yaml summary.json metrics.jsonl analysis.json "$run"/*_metrics.json; do
  if [ -f "$run/$(basename "$f")" ]; then cp "$run/$(basename "$f")" "$dest/"; fi
done
for f in llm_ner_config.json calibration.json best.json; do
  if [ -f "$run/model/$f" ]; then cp "$run/model/$f" "$dest/model/"; fi
done
du -sh "$dest"
