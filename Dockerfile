# Ollama Gateway: the Ollama API on :11434, served from OpenAI-compatible providers.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install ".[otel]" \
    && useradd --create-home --uid 10001 gateway
COPY routes.yaml ./routes.yaml

USER gateway
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=11434 \
    GATEWAY_ROUTES=/app/routes.yaml \
    GATEWAY_LOG_FORMAT=json
EXPOSE 11434
HEALTHCHECK --interval=30s --timeout=5s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:11434/health/live', timeout=4)"]
ENTRYPOINT ["ollama-gateway"]
CMD ["serve"]
