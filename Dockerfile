# syntax=docker/dockerfile:1
# Z-Image-Turbo server image: CUDA runtime + our pinned PyTorch/Gradio stack, run by supervisord as a non-root user.
#
#   docker build -t z-image-turbo .
#   docker build -t z-image-turbo --build-arg FLASH_ATTN=1 --build-arg FLASH_ATTN_CUDA_ARCHS=90 .   # + flash-attn for H100/H200
#   docker build -t z-image-turbo --build-arg BAKE_WEIGHTS=1 .                                      # weights inside the image
#   docker run -d --gpus all --name z-image-turbo -p 127.0.0.1:7860:7860 \
#       -v /data/z-image-weights:/app/weights --stop-timeout 150 z-image-turbo
#
# The pip torch wheel brings its own CUDA user-space libraries, so the runtime stage only needs the host
# driver (NVIDIA Container Toolkit, --gpus all). A -devel image is used only to compile flash-attn.

ARG CUDA_VERSION=12.9.1
ARG UBUNTU=ubuntu24.04
ARG FLASH_ATTN=0

# ---- flash-attn wheel (optional). torch 2.13 has no prebuilt flash-attn wheel, so it is compiled here for the
# target GPU architectures only ("90" = Hopper H100/H200; "80;86;89;90;120" covers A100 to Blackwell, slower).
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS flash-attn-1
ARG FLASH_ATTN_VERSION=2.8.3
ARG FLASH_ATTN_CUDA_ARCHS=90
ARG MAX_JOBS=8
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /build/requirements.txt
RUN python3 -m venv /build/venv \
    && /build/venv/bin/pip install --no-cache-dir "$(grep '^torch==' /build/requirements.txt)" packaging psutil ninja wheel \
    && FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS="${FLASH_ATTN_CUDA_ARCHS}" MAX_JOBS="${MAX_JOBS}" \
       /build/venv/bin/pip wheel --no-cache-dir --no-build-isolation --no-deps -w /wheels "flash-attn==${FLASH_ATTN_VERSION}"

FROM busybox AS flash-attn-0
RUN mkdir /wheels

FROM flash-attn-${FLASH_ATTN} AS flash-attn

# ---- runtime
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU}
ARG BAKE_WEIGHTS=0
ARG WEIGHTS_LAYOUT=comfy
ENV PYTHONUNBUFFERED=1 \
    DEBIAN_FRONTEND=noninteractive \
    ZIMAGE_HOST=0.0.0.0 \
    ZIMAGE_PORT=7860
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel -r ubuntu 2>/dev/null || true) \
    && useradd -m -u 1000 -s /bin/bash zimage

WORKDIR /app
# The venv sits where supervisor/z-image-turbo.conf expects it (%(here)s/../.venv), so the shipped config runs as is.
COPY requirements.txt /app/requirements.txt
RUN python3 -m venv /app/.venv && /app/.venv/bin/pip install --no-cache-dir -r /app/requirements.txt
COPY --from=flash-attn /wheels /tmp/wheels
RUN if ls /tmp/wheels/*.whl >/dev/null 2>&1; then /app/.venv/bin/pip install --no-cache-dir /tmp/wheels/*.whl; fi \
    && rm -rf /tmp/wheels

COPY model /app/model
COPY app /app/app
COPY configs /app/configs
COPY scripts /app/scripts
COPY supervisor /app/supervisor

# Weights: mounted at /app/weights (default) or downloaded into the image with BAKE_WEIGHTS=1.
# /usr/local/bin/supervisorctl (ctl_wrapper.py, run as root here): `docker exec <name> supervisorctl status` works.
RUN mkdir -p /app/weights /app/outputs /app/loras /app/supervisor/run \
    && if [ "$BAKE_WEIGHTS" = 1 ]; then \
         /app/.venv/bin/python /app/scripts/download_weights.py --layout "$WEIGHTS_LAYOUT" --dir /app/weights; \
       fi \
    && /app/.venv/bin/python /app/supervisor/ctl_wrapper.py install --venv /app/.venv \
    && touch /var/log/z-image-turbo.log \
    && chown -R zimage:zimage /var/log/z-image-turbo.log /app/weights /app/outputs /app/loras /app/supervisor/run
VOLUME ["/app/weights", "/app/outputs"]

USER zimage
EXPOSE 7860
# Ready = model loaded and warmed up; loading ~20 GB from disk can take minutes, hence the long start period.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health/ready', timeout=8)"]
# supervisord in the foreground as PID 1: it reaps children, restarts the app, and runs the hang watchdog.
CMD ["/app/.venv/bin/supervisord", "-n", "-c", "/app/supervisor/supervisord.conf"]
