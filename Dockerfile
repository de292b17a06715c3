# A slim tuner worker image: `tuner` is the entrypoint, so
#   docker run --rm -v "$PWD/data:/app/data" IMAGE worker --study clothing --storage postgresql://...
# runs one worker. The data and the frozen-feature cache are volumes; compose.yaml
# runs PostgreSQL, the dashboard and N workers together.

# Build the wheel in a throw-away stage, so the image holds no build tools or sources.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY studies ./studies
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TUNER_CACHE_DIR=/cache \
    KERAS_HOME=/cache/keras
# The studies ship inside the wheel (tuner/_studies), so `--study clothing` works anywhere.
COPY --from=build /wheels /wheels
RUN python -m pip install "$(ls /wheels/tuner-*.whl)[postgres,mysql]" \
    && rm -rf /wheels
# A non-root user owns the working folder (SQLite files, artifacts) and the volumes.
RUN useradd --create-home --uid 1000 tuner \
    && mkdir -p /app/data /app/artifacts /cache/keras \
    && chown -R tuner:tuner /app /cache
USER tuner
WORKDIR /app
# data/ holds the datasets (the spec's data.dir is data/clothing-dataset-small);
# /cache holds the frozen features and the Keras weights; artifacts/ the trial files.
VOLUME ["/app/data", "/app/artifacts", "/cache"]
ENTRYPOINT ["tuner"]
CMD ["worker", "--study", "clothing"]
