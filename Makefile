# Everything a fresh machine needs: `make demo` and `make test` create and use .venv themselves.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench bench-dicomweb clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medbeam demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	scripts/ensure-orthanc.sh
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_dicom_export.py

bench-dicomweb: $(STAMP)
	scripts/ensure-orthanc.sh
	$(PY) benchmarks/bench_dicomweb.py

clean:
	rm -rf demo-out bench-out
