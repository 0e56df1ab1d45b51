FROM python:3.11-slim

# Runtime libraries that onnxruntime and ctranslate2 load, and redis-server
# for the embedded store (when VOXDIAL_REDIS_URL is not set) and the demo.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 redis-server \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY voice ./voice
COPY pipelines ./pipelines
COPY dialer ./dialer
COPY campaign_store ./campaign_store
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir ".[local]"

ENV VOXDIAL_HOST=0.0.0.0 \
    VOXDIAL_PORT=8080 \
    VOXDIAL_DATA_DIR=/data
RUN mkdir -p /data && chown nobody /data
VOLUME /data
EXPOSE 8080
USER nobody
# The server by default; `docker run IMAGE voxdial demo --fast` runs the demo.
CMD ["voxdial", "serve"]
