FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md Procfile ./
COPY webhooks ./webhooks
COPY worker ./worker
RUN pip install . && useradd --system --uid 10001 crmhook
USER crmhook
EXPOSE 8000
# The Procfile's `web` line, found in the working directory (crmhook run reads it).
CMD ["crmhook", "run", "web"]
