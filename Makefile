# The two commands of the README:
#   make run   set everything up, then run python's print(2**8) in a sandbox on the host rootfs
#   make test  set everything up plus the programs the tests run (scripts/system-deps.sh --test),
#              then the whole suite (as root: again, rootless, then the cgroup v2 limit tests in a
#              TCG VM; ISOL8_SKIP_VM=1 skips the VM locally); every stage runs, then a summary
#   scripts/fresh-machine.sh  both commands on a freshly bootstrapped Debian 12 root (CI runs it)
#   make vm-test  only the VM stage (scripts/vm-limits-test.sh, ~3 min, root)
#   make wheels   the sdist and the x86_64 and aarch64 wheels of the last commit in dist/
#                 (scripts/build-wheels.sh: static helpers, Debian's cross compiler, no Docker)
#   make typecheck  mypy (pinned) over isol8/, which ships py.typed (not in make test: 40 s)
PYTHON ?= /usr/bin/python3
VENV ?= .venv
VPY := $(VENV)/bin/python

.PHONY: all setup build run test vm-test wheels bench typecheck clean

all: build

setup: $(VENV)/.installed build

# pip -qq: errors only (the build backend's notices, such as setuptools' note on editable
# installs, are not the user's business; a failed build still prints its output).
$(VENV)/.installed: pyproject.toml setup.py
	./scripts/system-deps.sh
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -qq --upgrade pip
	$(VPY) -m pip install -qq -e '.[test]'
	touch $@

build:
	$(MAKE) -s -C csrc

run: setup
	$(VPY) -m isol8 exec -r python -e 'print(2**8)'

test: setup
	./scripts/system-deps.sh --test
	./scripts/test.sh $(VPY)

vm-test: setup
	./scripts/vm-limits-test.sh

wheels: setup
	PYTHON=$(VPY) ./scripts/build-wheels.sh

bench: setup
	./scripts/system-deps.sh bubblewrap
	$(VPY) benchmarks/cold_start.py
	$(VPY) benchmarks/timeout_precision.py
	$(VPY) benchmarks/streaming_latency.py
	$(VPY) benchmarks/persistent.py
	$(VPY) benchmarks/warm_pool.py
	$(VPY) benchmarks/network_filtered.py
	$(VPY) benchmarks/relay_throughput.py
	$(VPY) benchmarks/mcp_overhead.py
	$(VPY) benchmarks/cluster.py

typecheck: setup
	$(VPY) -m pip install -qq 'mypy==2.4.1'
	$(VPY) -m mypy isol8/

clean:
	$(MAKE) -C csrc clean
	rm -rf $(VENV) build *.egg-info
