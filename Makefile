# vaecli: `make test` and `make demo` work on a fresh clone (Python >= 3.10, package registry only).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vaecli-installed
DEMO   := runs/demo

.PHONY: install test test-slow test-all demo docs bench clean help

help:
	@echo "make install   create $(VENV) and install vaecli with its dev extra"
	@echo "make test      install if needed, then run the fast test suite"
	@echo "make test-slow only the slow tests (real MNIST when ../shared/data has it)"
	@echo "make test-all  fast and slow tests"
	@echo "make docs      build the documentation site into site/ (strict: a broken link fails; open site/index.html)"
	@echo "make demo      train on the offline shapes dataset and write pictures to $(DEMO)/"
	@echo "make bench     speed figures: vaecli vs the textbook loop vs the sgemm and bf16 ceilings (needs MNIST);"
	@echo "               vaecli vs a careful hand loop and pythae's trainer (bench/trainers.py);"
	@echo "               the image models (conv, resnet, conv ladder) in fp32/bf16/channels_last vs a hand loop of"
	@echo "               the same network and pythae, and the malloc lever (bench/images.py);"
	@echo "               eval-iwae vs pythae's get_nll (if installed) and the ladder presets' eval cost;"
	@echo "               two trainings at once vs one alone under each thread policy (bench/sharing.py)"

install: $(STAMP)

# Reinstall when the dependency list changes; the editable install picks up code changes by itself.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

test: install
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-all: install
	$(BIN)/python -m pytest -q

demo: install
	rm -rf $(DEMO)
	$(BIN)/vae train dataset=shapes model=conv model.latent_dim=16 beta=0.5 trainer.lr=0.003 trainer.lr_schedule=cosine trainer.batch_size=64 trainer.epochs=40 --run-dir $(DEMO)
	$(BIN)/vae fit-sampler --ckpt $(DEMO) sampler=gmm sampler.components=auto
	$(BIN)/vae sample --ckpt $(DEMO) --n 64 --out $(DEMO)/samples_prior.png
	$(BIN)/vae sample --ckpt $(DEMO) --n 64 --sampler gmm --out $(DEMO)/samples_gmm.png
	$(BIN)/vae reconstruct --ckpt $(DEMO) --n 16 --out $(DEMO)/reconstructions.png
	$(BIN)/vae interpolate test:0 test:1 --ckpt $(DEMO) --steps 10 --slerp --out $(DEMO)/interpolation.png
	$(BIN)/vae eval-iwae --ckpt $(DEMO) --k 100
	$(BIN)/vae eval-samples --ckpt $(DEMO) --n 600 --features pixels --sampler prior
	$(BIN)/vae eval-samples --ckpt $(DEMO) --n 600 --features pixels --sampler gmm
	$(BIN)/vae eval-samples --ckpt $(DEMO) --n 600 --features pixels --of reconstructions
	@echo "demo pictures: $(DEMO)/reconstructions.png $(DEMO)/samples_prior.png $(DEMO)/samples_gmm.png $(DEMO)/interpolation.png"
	@echo "samples_prior.png decodes draws from the prior N(0, I); samples_gmm.png from a Gaussian mixture fitted to where the"
	@echo "training images were encoded (vae fit-sampler). The prior's draws that land in its holes come out broken: lower"
	@echo "precision and higher FID in the eval-samples tables above (pixel features: no download needed)."

# The site, strict: a broken link, anchor or missing page fails. The reference pages are generated
# from the code at build time (docs/hooks.py -> vaecli/reference.py).
docs: install
	@$(BIN)/python -c "import mkdocs, material" 2>/dev/null || { echo "make docs: the docs extra is not installed; run: $(BIN)/pip install -e '.[docs]'" >&2; exit 2; }
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet
	@echo "site built: site/index.html"

bench: install
	@$(BIN)/python -c "import pythae" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/bench.py
	$(BIN)/python bench/trainers.py
	$(BIN)/python bench/images.py
	$(BIN)/python bench/iwae.py
	$(BIN)/python bench/sharing.py

clean:
	rm -rf $(VENV) runs build dist site .pytest_cache
