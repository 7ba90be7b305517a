#!/usr/bin/env bash
# Issue 46's speed measurements, one step after another on an otherwise idle machine (never beside a training run):
#   scripts/issue46_bench.sh export-qs bench-qs export-doc bench-doc
# export-*: `llm-ner export` into the model dir (its check on 1,000 CoNLL-2003 dev sentences times the export and
# PyTorch: what --runtime auto reads); the export records are kept beside the run's records in docs/runs.
# bench-*: benchmarks/runtimes.py over CoNLL-2003 test as raw text, every arm in turn (results in benchmarks/results;
# `python benchmarks/runtimes.py --table FILE` renders docs/scaling.md's table).
set -euo pipefail
cd "$(dirname "$0")/.."
QS=${QS:-runs/qs_exit12_embeddinggemma-300m_42}  # the quickstart's recipe (exit 12), seed 42
DOC=${DOC:-runs/gemma_doc_adapted_42}           # a full-data document model (Gemma 3 270M, exit 12 of 18)
export_to() {  # export_to RUN FORMAT [--int8]
  local run=$1 fmt=$2 sub=$2${3:+-int8}
  [ -f "$run/model/$sub/llm_ner_export.json" ] || llm-ner export --model "$run/model" --format "$fmt" ${3:-}
  cp "$run/model/$sub/llm_ner_export.json" "docs/runs/$(basename "$run")/export_$sub.json"
}
for step in "$@"; do
  case $step in
    export-qs) export_to "$QS" openvino; export_to "$QS" openvino --int8 ;;
    bench-qs) python benchmarks/runtimes.py --model "$QS/model" --arm torch:fp32 --arm torch:auto \
                --arm "$QS/model/openvino:auto" --arm "$QS/model/openvino-int8:auto" --arm default:auto \
                --output benchmarks/results/runtimes_quickstart.json ;;
    export-doc) export_to "$DOC" openvino ;;
    bench-doc) python benchmarks/runtimes.py --model "$DOC/model" --arm torch:fp32 --arm torch:auto --arm default:auto \
                 --output benchmarks/results/runtimes_doc.json ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
