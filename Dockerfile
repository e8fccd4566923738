# The VQ-VAE REST service on CPU: docker build -t brain-vqvae . && docker run -p 8000:8000 brain-vqvae
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/vqvae

# CPU-only torch first, from PyTorch's own index: the default PyPI wheel would pull gigabytes of CUDA libraries.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# The project with its pinned dependencies (torch==2.13.0 is already met by 2.13.0+cpu), and every other package at
# the version CI tested (constraints.txt), as CI installs it.
# models/weights/*.safetensors is package data, so the shipped checkpoint is the default (VQVAE_CHECKPOINT overrides).
# pip's build folder (43 MB, a third copy of the weights) is removed in the same layer.
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY models ./models
COPY training ./training
COPY app ./app
RUN pip install --no-cache-dir -c constraints.txt . \
    && rm -rf build brain_vqvae.egg-info \
    && groupadd --system --gid 10001 vqvae \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin vqvae

USER 10001:10001
EXPOSE 8000

# The port is VQVAE_PORT (8000 unless set: docker run -e VQVAE_PORT=9000 -p 9000:9000 ...), which the health check
# reads through the service's own settings, as it reads whether the service serves HTTPS (VQVAE_TLS_CERTFILE); a
# --port in a replaced command would not be seen by it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]

CMD ["vqvae-serve", "--host", "0.0.0.0"]
