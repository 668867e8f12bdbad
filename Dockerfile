# One image for web, worker and Ray nodes (see compose.yaml). GPU nodes add the `gpu` extra.
FROM python:3.11-slim
WORKDIR /app
COPY . .
# EXTRAS=gpu for GPU Ray nodes (compose.yaml's ray-worker-gpu): upstream vllm brings its CUDA torch.
ARG EXTRAS=""
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}"
ENV PYTHONUNBUFFERED=1
WORKDIR /app/platform
