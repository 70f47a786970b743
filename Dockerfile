# Touchline worker / simulator / CLI image. Kafka runs in its own container (deploy/docker-compose.yml),
# so no JDK is needed here. Build from the repository root:
#   docker build -t touchline:local .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOUCHLINE_DATA_DIR=/var/lib/touchline

WORKDIR /src

# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p pipeline && touch pipeline/__init__.py \
    && pip install . \
    && pip uninstall -y touchline \
    && rm -rf pipeline build *.egg-info

# The package, installed as its wheel installs: pipeline/_data/ links to schemas/ and the default SLA
# policies, and the install copies them into site-packages, so the source tree is not kept.
COPY pipeline ./pipeline
COPY schemas ./schemas
COPY deploy/sla-policies.yaml ./deploy/sla-policies.yaml
RUN pip install --no-deps . \
    && cd / && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/touchline --create-home touchline \
    && chown -R touchline /var/lib/touchline

WORKDIR /var/lib/touchline
USER touchline
EXPOSE 6066
CMD ["touchline", "worker"]
