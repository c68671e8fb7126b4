# Image of the ledger worker (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
# gcc builds schemas/_avro.c and ledger/_frozen.c (setup.py; without them the
# same work is done in Python) and is removed again in the same layer.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
    && cd / && python -c "from schemas import codec; from ledger import frozen; \
                          assert codec.ACCELERATED and frozen.ACCELERATED"

# Run unprivileged; /data, /secrets and /checkpoints are created here so named volumes
# mounted on them inherit this ownership.
RUN useradd --create-home --uid 10001 ledger && mkdir /data /secrets /checkpoints \
    && chown ledger /data /secrets /checkpoints && chmod 700 /secrets
USER ledger

EXPOSE 6066
CMD ["ledger", "worker"]
