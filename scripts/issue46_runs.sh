#!/usr/bin/env bash
# Issue 46's training runs (one after another: never two torch processes at once on 2 cores): the quickstart model
# (EmbeddingGemma-300M + CRF, 24 layers) with early exit after layer K, its dev F1 against the whole stack's
# (docs/runs/qs_embeddinggemma-300m_42, issue 33's record), so the exit is chosen on dev. Each record is kept
# (scripts/keep_run.sh) and its checkpoints dropped.
#   scripts/issue46_runs.sh exit-eg-12 exit-eg-16 exit-eg-20 ...      (exit-eg-K-SEED for another seed than 42)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${RUNS:-runs}
keep() { scripts/keep_run.sh "$1" >/dev/null; rm -rf "$1/checkpoints"; }
for step in "$@"; do
  case $step in
    exit-eg-*)
      IFS=- read -r _ _ k seed <<< "$step"; seed=${seed:-42}
      name="qs_exit${k}_embeddinggemma-300m_$seed"
      [ -f docs/runs/$name/summary.json ] && continue
      llm-ner train --config quickstart --set model.exit_layer="$k" --seed "$seed" --output "$R/$name" --no-progress \
        $( [ -d "$R/$name/checkpoints" ] && echo --resume ) && keep "$R/$name" ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
