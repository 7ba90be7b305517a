#!/usr/bin/env bash
# Refresh the lock files next to pyproject.toml from pyproject.toml's ranges:  scripts/lock.sh
#   requirements.txt, requirements-test.txt  what the README's two commands install (pip -r)
#   requirements-serve.txt                    what the Docker image installs (the quickstart's lock + the serve extra)
#   pylock.toml                               the test lock again in the standard format (PEP 751), with hashes
# The locks are resolved for CPython 3.11 on Linux x86_64 (the tested platform) with torch's CPU build. uv resolves
# against the CPU wheel (its metadata has no CUDA packages); the lock then names it `torch==2.13.0`, which the CPU build
# (2.13.0+cpu, from a find-links dir or https://download.pytorch.org/whl/cpu) satisfies as well as PyPI's.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || pip install -q "uv>=0.5"
links=()
for d in ${PIP_FIND_LINKS:-} /opt/wheels; do [ -d "$d" ] && links+=(--find-links "$d"); done
[ ${#links[@]} -gt 0 ] || links=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
# Versions already locked are kept (uv reads the old file as preferences): a refresh adds what pyproject.toml now
# asks for without moving the rest. UPGRADE=1 scripts/lock.sh re-resolves everything to the newest allowed.
for name in quickstart test serve; do
  extra=(); out=requirements.txt
  [ "$name" != quickstart ] && extra=(--extra "$name") && out="requirements-$name.txt"
  # (the old file names torch without +cpu: put it back, or uv would prefer PyPI's CUDA build of that version)
  if [ -f "$out" ] && [ -z "${UPGRADE:-}" ]; then sed 's/^torch==\([0-9.]*\)$/torch==\1+cpu/' "$out" > "$out.new"
  else rm -f "$out.new"; fi
  uv pip compile pyproject.toml "${extra[@]}" "${links[@]}" --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
     --no-emit-find-links --no-emit-index-url --no-header --quiet -o "$out.new"
  { echo "# Lock for CPython 3.11, Linux x86_64: every package the ${name} needs, at the versions CI tests."
    echo "# Regenerate with scripts/lock.sh (uv pip compile of pyproject.toml's ranges); installed by the README's commands."
    sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' "$out.new"; } > "$out"
  rm "$out.new"
done
# The same resolution as requirements-test.txt, as PEP 751 pylock.toml. A local torch wheel (find-links) is written
# as the same file on PyTorch's CPU index, so the lock names no path of this machine.
[ -n "${UPGRADE:-}" ] && rm -f pylock.toml
uv pip compile pyproject.toml --extra test "${links[@]}" --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
   --no-emit-find-links --no-emit-index-url --quiet --format pylock.toml -o pylock.toml
sed -i -E 's#file://[^"]*/(torch-[0-9.]+)\+(cpu[^"/]*\.whl)#https://download.pytorch.org/whl/cpu/\1%2B\2#' pylock.toml
# Environments the tests (and docs) build beside ours, from locks/NAME.in: exact versions with hashes, installed with
# `pip install --require-hashes -r locks/NAME.txt` (tests/venvs.py keys its cache by the lock's hash). Kept versions
# are preferred as above; UPGRADE=1 moves them.
for in in locks/*.in; do
  out="${in%.in}.txt"
  [ -n "${UPGRADE:-}" ] && rm -f "$out"
  uv pip compile "$in" --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
     --no-emit-index-url --no-header --quiet -o "$out.new"
  { echo "# Lock for ${in#locks/} (CPython 3.11, Linux x86_64), with hashes: install with pip install --require-hashes -r $out"
    echo "# Regenerate with scripts/lock.sh (uv pip compile $in)."
    cat "$out.new"; } > "$out"
  rm "$out.new"
done
echo "wrote requirements.txt requirements-test.txt requirements-serve.txt pylock.toml locks/*.txt"
