# runbooks: the REST gateway with the engine, as a small image.
#   docker build -t runbooks .
#   docker run -p 3000:3000 -v runbooks-data:/var/lib/runbooks \
#     -v "$PWD/tokens.yaml:/etc/runbooks/tokens.yaml:ro" -e RUNBOOKS_TOKENS_FILE=/etc/runbooks/tokens.yaml runbooks
# HOST is 0.0.0.0 so the port can be published; the gateway refuses a non-loopback address
# without RUNBOOKS_TOKENS_FILE (development mode trusts X-User-Id), so give it a tokens file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 runbooks \
    && useradd --system --uid 10001 --gid runbooks --home-dir /var/lib/runbooks --create-home --shell /usr/sbin/nologin runbooks

WORKDIR /opt/runbooks
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY runtime ./runtime
COPY gateway ./gateway
RUN pip install --no-cache-dir ".[otel]"

ENV HOST=0.0.0.0 \
    PORT=3000 \
    STORAGE_BACKEND=sqlite \
    SQLITE_PATH=/var/lib/runbooks/runbooks.db

USER runbooks
WORKDIR /var/lib/runbooks
VOLUME ["/var/lib/runbooks"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '3000') + '/health/live', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["runbooks", "serve"]
