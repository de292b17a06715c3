# A slim tuner worker image: `tuner` is the entrypoint, so
#   docker run --rm -v "$PWD/data:/app/data" IMAGE worker --study clothing --storage postgresql://...
# runs one worker. The data and the frozen-feature cache are volumes; compose.yaml
# runs PostgreSQL, the dashboard and N workers together. Build it with
#   docker build --network host -t tuner .
# (--network host only where the build cannot reach the package index otherwise).

# Build the wheel in a throw-away stage, so the image holds no build tools or sources.
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m pip install --no-cache-dir "hatchling>=1.25"
# The dependencies as a requirements file, made from pyproject.toml alone: the final stage
# installs them in a layer of its own, which stays cached while only the code changes.
COPY pyproject.toml ./
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["cpu"] \
+ p["optional-dependencies"]["postgres"] + p["optional-dependencies"]["mysql"]))' > requirements.txt
COPY README.md ./
COPY tuner ./tuner
COPY studies ./studies
RUN python -m pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TUNER_IN_CONTAINER=1 \
    TUNER_CACHE_DIR=/cache \
    KERAS_HOME=/cache/keras
# The third-party packages in one layer, without pip's cache. TensorFlow is most of the image;
# its C++ headers (about 290 MB) only serve to compile custom ops, which this image cannot do.
# The user and the volume folders come in the same step: no layer of their own.
COPY --from=build /src/requirements.txt /tmp/requirements.txt
RUN python -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && python -c 'import importlib.util, pathlib, shutil; \
shutil.rmtree(pathlib.Path(importlib.util.find_spec("tensorflow").origin).parent / "include")' \
    && rm -f /tmp/requirements.txt \
    && useradd --create-home --uid 1000 tuner \
    && mkdir -p /app/data /app/artifacts /cache/keras \
    && chown -R tuner:tuner /app /cache
# The studies ship inside the wheel (tuner/_studies), so `--study clothing` works anywhere.
# `pip check` proves the layer above holds every dependency the wheel declares.
COPY --from=build /wheels /tmp/wheels
RUN python -m pip install --no-cache-dir --no-deps /tmp/wheels/tuner-*.whl \
    && rm -rf /tmp/wheels \
    && python -m pip check
USER tuner
WORKDIR /app
# data/ holds the datasets (the spec's data.dir is data/clothing-dataset-small);
# /cache holds the frozen features and the Keras weights; artifacts/ the trial files.
VOLUME ["/app/data", "/app/artifacts", "/cache"]
ENTRYPOINT ["tuner"]
CMD ["worker", "--study", "clothing"]
