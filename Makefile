# `make demo`: install everything, then solve and benchmark with the shipped checkpoints.
# `make test`: install everything, then run the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tasks read data from (IK: CMU BVH clips)
SYSTEM_PACKAGES := assimp-testmodels
SYSTEM_FILES    := /usr/share/assimp/models/BVH/01_01.bvh

.PHONY: demo test system install clean

demo: install
	$(BIN)/fbsolve demo --out out/demo

test: install
	$(BIN)/pytest -q

install: system $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

system:
	@missing=""; for f in $(SYSTEM_FILES); do [ -e "$$f" ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $(SYSTEM_PACKAGES)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else \
	    echo "missing system data; run as root: apt-get install $(SYSTEM_PACKAGES)" >&2; exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) out *.egg-info
