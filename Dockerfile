FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY webhooks ./webhooks
COPY worker ./worker
RUN pip install . && useradd --system --uid 10001 crmhook
USER crmhook
EXPOSE 8000
CMD ["sh", "-c", "gunicorn --bind 0.0.0.0:${PORT:-8000} --workers ${WEB_CONCURRENCY:-2} --threads 8 --preload --no-control-socket --access-logfile - 'webhooks:create_app()'"]
