# The recstack gateway (grpc.aio) for production: it talks to Triton, Milvus and an LLM server over the
# network, so the image holds only the serving code and its client libraries (no torch, no local
# stand-ins). Build after `make export` (the tokenizer files are copied in):
#   docker build -t recstack-gateway .
# Settings come from configs/production.yaml and RECSTACK_* environment variables (see README).
# It listens on 0.0.0.0, so it needs TLS and tokens (README "Security"): mount the certificate, key and
# tokens file at /run/secrets/recstack/ (as deploy/docker-compose.yml does), or it refuses to start.
FROM python:3.11-slim AS build
WORKDIR /src
# Serving-only dependencies: server/ imports only itself, contract/ and the generated proto code (never
# training/, export/ or devstack/), so torch, the local stand-ins and the dev stack stay out.
RUN pip install --no-cache-dir "grpcio>=1.62" "grpcio-tools>=1.62" "grpcio-health-checking>=1.62" \
      "grpcio-reflection>=1.62" "protobuf>=5" "tritonclient[grpc]>=2.40" "pymilvus>=2.5" "httpx>=0.27" \
      "prometheus-client>=0.20" "uvloop>=0.19" "cachetools>=5" "structlog>=24" "numpy>=1.26" \
      "tokenizers>=0.19" "pydantic>=2.6" "pydantic-settings>=2.2" "pyyaml>=6" "rich>=13"
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY contract ./contract
COPY server ./server
RUN python -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto \
      proto/recstack/v1/gateway.proto \
 && pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
# The feedback log's directory (configs/production.yaml), owned by the gateway's user so a fresh named volume is too.
RUN useradd --create-home --uid 10001 recstack \
 && install -d -o recstack /var/lib/recstack/feedback
COPY --from=build /usr/local /usr/local
WORKDIR /app
COPY configs/production.yaml /app/configs/production.yaml
COPY artifacts/serving/tokenizers /app/tokenizers
COPY artifacts/serving/ranking.json /app/ranking.json
ENV RECSTACK_TRITON__TOKENIZER_DIR=/app/tokenizers \
    RECSTACK_RECOMMEND__RANKING_WEIGHTS=/app/ranking.json \
    RECSTACK_GATEWAY__HOST=0.0.0.0 \
    OPENBLAS_NUM_THREADS=1
USER recstack
EXPOSE 50051 9464
# The probe uses security.loopback_port (50052 in production.yaml): plaintext, bound to 127.0.0.1 only.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD python -c "import sys,grpc;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;c=grpc.insecure_channel('127.0.0.1:50052');r=g.HealthStub(c).Check(h.HealthCheckRequest(service='recstack.v1.Gateway'),timeout=2);sys.exit(r.status!=1)"
ENTRYPOINT ["python", "-m", "server", "--config", "/app/configs/production.yaml"]
