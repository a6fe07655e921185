# The embedding image for the `a100-gpu` docker work pool: the project and its locked stack, with
# the CUDA build of the same torch version instead of the CPU wheel the build machines use.
#   docker build -f deployments/gpu.Dockerfile -t media-gateway-embed-gpu:latest .
# Not buildable on the project's build machines (no Docker engine there); kept in step with
# requirements.lock by hand.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m pip install --no-cache-dir uv==0.13.9 \
    && uv venv --python python3.11 /opt/venv

WORKDIR /app
COPY requirements.lock pyproject.toml ./
# Same pins, but torch from the CUDA index: drop the CPU torch line and the machine-local find-links.
RUN grep -v -e '^torch==' -e '^--find-links' requirements.lock > /tmp/requirements-gpu.txt \
    && uv pip install --no-cache -r /tmp/requirements-gpu.txt \
    && uv pip install --no-cache --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0

COPY flows ./flows
COPY tasks ./tasks
# Models other than the packaged all-MiniLM-L6-v2 are read from here (mount or bake a HF cache).
ENV MG_DATA_DIR=/data HF_HOME=/models
