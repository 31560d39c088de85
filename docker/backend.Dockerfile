# The ML backend: Label Studio's ML-backend protocol on Flask 3, served by gunicorn on port 9090
# (the label-studio-ml convention). Built from the repository root: docker compose build ml-backend.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU wheels of torch: the backend predicts and computes saliency for a few tasks at a time.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY label_config label_config
COPY trainer trainer
COPY ls_backend ls_backend
# One resolution for every dependency (label-studio-sdk's opencv needs numpy < 2.3; see LABEL-STUDIO.md).
RUN pip install --extra-index-url "$TORCH_INDEX" . \
    && useradd --create-home --uid 1001 hitl \
    && mkdir -p /runs /data && chown hitl /runs /data
USER hitl

EXPOSE 9090
# One worker: the training job lives in the worker's process (see ls_backend/wsgi.py). The app and its
# configuration (MODEL_DIR, LABEL_STUDIO_URL, ...) are built when gunicorn starts, not at import.
CMD ["gunicorn", "--workers", "1", "--threads", "4", "--timeout", "120", "--bind", "0.0.0.0:9090", \
     "ls_backend.wsgi:create()"]
