# One image for the API (web) and the worker; docker-compose.yaml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

WORKDIR /app

# torch from PyPI is a CUDA build (several GB). For CPU-only hosts, build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX=
COPY requirements.txt requirements-nodeps.txt ./
RUN if [ -n "$TORCH_INDEX" ]; then \
        pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1; \
    fi \
 && pip install -r requirements.txt \
 && pip install --no-deps -r requirements-nodeps.txt

COPY . .
RUN DJANGO_SECRET_KEY=build S3_ENDPOINT=x:1 S3_ACCESS_KEY=x S3_SECRET_KEY=x \
    DATABASE_URL=sqlite:////tmp/build.sqlite3 CELERY_BROKER_URL=memory:// CELERY_RESULT_BACKEND=cache+memory:// \
    python manage.py collectstatic --noinput --verbosity 0 \
 && useradd --system --uid 10001 app
USER app

EXPOSE 8000
# Logs in LOG_FORMAT (json by default), one access line per request from the app itself.
CMD ["gunicorn", "face_detect_api.wsgi", "--config", "python:face_detect_api.gunicorn_conf", "--bind", "0.0.0.0:8000"]
