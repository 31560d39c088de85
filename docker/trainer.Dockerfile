# The trainer: `hitl` (rounds, push to and pull from Label Studio). Built from the repository root:
# docker compose build trainer. For GPUs, build with TORCH_INDEX=https://download.pytorch.org/whl/cu124 and
# run several ranks with `torchrun --nproc-per-node N -m trainer.runs.distributed RUN_DIR`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY label_config label_config
COPY trainer trainer
COPY docker/trainer-entrypoint.sh /usr/local/bin/trainer-entrypoint
RUN pip install --extra-index-url "$TORCH_INDEX" . \
    && chmod 0755 /usr/local/bin/trainer-entrypoint \
    && useradd --create-home --uid 1001 hitl \
    && mkdir -p /runs /data && chown hitl /runs /data
USER hitl

ENTRYPOINT ["trainer-entrypoint"]
CMD ["hitl", "--help"]
