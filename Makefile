# Everything a fresh machine needs: `make demo` and `make test` create and use .venv themselves.
# The demo installs only what it runs (medbeam + the pydicom-data corpus); the tests add TensorFlow,
# the storage emulators and the linter; scripts/ensure-bigquery-emulator.sh gives the BigQuery emulator its own venv.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test tutorial tutorial-full bench bench-dicomweb clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	touch $(TEST_STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/medbeam demo --out demo-out

test: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs/tutorial
	scripts/ensure-orthanc.sh
	scripts/ensure-bigquery-emulator.sh
	scripts/ensure-tesseract.sh
	$(PY) -m pytest -q

# The tutorial (docs/tutorial/) on generated data: --small (a few minutes), or Google's DenseNet121 recipe.
tutorial: $(TEST_STAMP)
	$(PY) docs/tutorial/tutorial.py --small --out tutorial-out

tutorial-full: $(TEST_STAMP)
	$(PY) docs/tutorial/tutorial.py --out tutorial-out

bench: $(TEST_STAMP)
	$(PY) -m benchmarks.bench_dicom_export

bench-dicomweb: $(TEST_STAMP)
	scripts/ensure-orthanc.sh
	$(PY) -m benchmarks.bench_dicomweb

clean:
	rm -rf demo-out bench-out tutorial-out
