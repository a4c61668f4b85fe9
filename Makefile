# pinrank: one-command entry points. Everything runs inside .venv, created by `make setup`.
PY := .venv/bin/python
PINRANK := .venv/bin/pinrank
# the demo's short runs (the full ones: drop these overrides; docs/demo.md compares the two)
DEMO_TWO_TOWER ?= trainer.enable_progress_bar=false trainer.max_epochs=2
DEMO_RANKER ?= trainer.enable_progress_bar=false trainer.max_epochs=3 model.module.logreg_grid=[]
DATA ?= data/demo
PACKAGE ?= outputs/packages/demo
KEYS ?= outputs/keys
TRUST := --trusted-key $(KEYS)/signing.pub
latest = $$(ls -td outputs/$(1)/runs/*/ | head -1)

.PHONY: setup system demo serve test test-slow lint format bench dist clean lifecycle

setup:  ## create .venv and install the pinned stack (CPU, or CUDA where nvidia-smi finds a GPU)
	bash scripts/setup.sh

system:  ## system packages: redis-server (Redis store tests) and wrk (service load test)
	bash scripts/system-packages.sh

demo:  ## end to end on the embedded default in about 3 minutes: data -> two-tower -> ranker -> package (verified) -> feeds -> batch feeds (docs/demo.md)
	$(PINRANK) demo --out $(DATA)
	$(PINRANK) train task_name=demo data.source.root=$(DATA) $(DEMO_TWO_TOWER)
	$(PINRANK) train task_name=demo_ranker model=wide_deep data.source.root=$(DATA) $(DEMO_RANKER)
	$(PINRANK) keygen --out $(KEYS) --if-missing
	$(PINRANK) export "run_dir=[$(call latest,demo),$(call latest,demo_ranker)]" out=$(PACKAGE) overwrite=true signing_key=$(KEYS)/signing.key
	$(PINRANK) feed $(PACKAGE) $(TRUST) --data $(DATA)/prepared --users 1 --k 5
	$(PINRANK) feed $(PACKAGE) $(TRUST) --data $(DATA)/prepared --user 999999999 --interests 3 7 --k 3
	$(PINRANK) users --data $(DATA)/prepared --out $(DATA)/users --arrow $(DATA)/users.arrow
	$(PINRANK) feeds $(PACKAGE) $(TRUST) --users $(DATA)/users --out outputs/feeds/demo --overwrite --no-progress

lifecycle:  ## the simulated week: day 0, then 5 daily retrains against a running service that follows production (docs/lifecycle.md; about 15 minutes)
	$(PY) scripts/lifecycle_week.py

serve:  ## the feed service on the demo package and users (http://127.0.0.1:8000/docs)
	$(PINRANK) serve run $(PACKAGE) $(TRUST) --users $(DATA)/users.arrow

test: lint  ## lint, then the default suite (MovieLens tests skip when ../shared/data/ml-100k is absent)
	$(PY) -m pytest -q -m "not slow"

test-slow:
	$(PY) -m pytest -q -m slow

lint:  ## ruff (lint + format check) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy pinrank serve

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench:  ## benchmarks print and save their numbers (JSON, PNG) under benchmarks/results/
	$(PY) benchmarks/generate_scale.py --users 10000000 --events 50000000 --items 1000000
	$(PY) benchmarks/own_data_scale.py --users 10000000 --events 50000000 --items 1000000
	$(PY) benchmarks/retrieval_ann.py
	$(PY) benchmarks/ranker_serving.py --package $(PACKAGE) --data $(DATA)/prepared
	$(PY) benchmarks/batch_feeds.py --package $(PACKAGE)
	$(PY) benchmarks/serve_load.py --package $(PACKAGE) --users $(DATA)/users
	$(PY) benchmarks/serve_overload.py --package $(PACKAGE) --users $(DATA)/users

dist:  ## the wheel, dist/pinrank-*.whl: pip install "dist/pinrank-VERSION-py3-none-any.whl[serve]"
	$(PY) -m pip wheel --no-deps --no-build-isolation -q -w dist .

clean:
	rm -rf data/demo outputs .pytest_cache
