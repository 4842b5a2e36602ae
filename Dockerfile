# pushsvc: a small image with a non-root user, run by Hypercorn with hypercorn.toml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md hypercorn.toml ./
COPY pushsvc ./pushsvc
COPY templates ./templates
RUN pip install . \
 && useradd --system --uid 10001 --no-create-home pushsvc

USER pushsvc
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["pushsvc", "serve", "--bind", "0.0.0.0:8000", "--config", "/app/hypercorn.toml"]
