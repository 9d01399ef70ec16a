# kubenode.dataplane: the entry points. `make demo` and `make test` install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
BUILD := $(CURDIR)/build
RESULTS := $(BUILD)/results
COLL_LINK := $(BUILD)/collections/ansible_collections/kubenode/dataplane
APT_PACKAGES := nftables iptables ipset iproute2 qemu-system-x86 qemu-utils debootstrap busybox-static kmod cpio \
	openssh-client rsync curl openssl
N ?= 3
PYTEST := $(BIN)/pytest -c tests/pytest.ini
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(BUILD)/collections
export PATH := $(BIN):$(PATH)

.PHONY: help deps apt venv collection demo test test-fast sanity units netns vm lint molecule matrix \
	hosts-up hosts-down vm-up vm-down vm-reboot cluster-up cluster-down build-collection bench clean docs

help:
	@echo "make demo       set up the built-in real-kernel test node end to end and print its doctor report"
	@echo "make test       everything CI runs (sanity, units, netns, vm, lint, molecule, matrix); ends 'N passed, N failed'"
	@echo "make test-fast  sanity, units and the netns tier"
	@echo "make hosts-up N=3 / hosts-down   netns test hosts (inventory: build/inventory-netns.yml)"
	@echo "make vm-up / vm-reboot / vm-down real-kernel VM (inventory: build/inventory-vm.yml)"
	@echo "make bench      benchmarks against the raw tools and peers (docs/performance.md)"

# ---- installation: idempotent, a second run installs nothing ----
deps: apt venv collection

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@touch $@

collection:
	@mkdir -p $(dir $(COLL_LINK))
	@# replaced only when wrong: tiers running at once read through this link
	@[ "$$(readlink $(COLL_LINK))" = "$(CURDIR)" ] || ln -sfn $(CURDIR) $(COLL_LINK)

# ---- test hosts ----
hosts-up: deps
	@$(BIN)/python tests/harness/netns_hosts.py up --count $(N) --inventory $(BUILD)/inventory-netns.yml --python $(BIN)/python

hosts-down:
	@$(PYTHON) tests/harness/netns_hosts.py down --inventory $(BUILD)/inventory-netns.yml

vm-up: deps
	@$(BIN)/python tests/harness/vm/vm.py up --inventory $(BUILD)/inventory-vm.yml

vm-reboot:
	@$(BIN)/python tests/harness/vm/vm.py reboot --inventory $(BUILD)/inventory-vm.yml

vm-down:
	@$(PYTHON) tests/harness/vm/vm.py down --inventory $(BUILD)/inventory-vm.yml

cluster-up: deps
	@$(BIN)/python tests/harness/kube/cluster.py up

cluster-down:
	@$(PYTHON) tests/harness/kube/cluster.py down

# ---- tests: each tier writes JUnit XML under build/results; summary.py adds them up ----
# The vm tier (about 22 minutes, mostly waiting on the emulated guest: about one core of two) runs in
# the background, in a process group of its own, while the other tiers run one after the other; its
# output is printed when it ends. An interrupt reaches it as SIGINT, so its fixtures shut the VM down.
# Each tier reads its own /dev/null: ssh makes its stdin non-blocking, and ansible refuses to run on one.
test: deps
	@rm -rf $(RESULTS); mkdir -p $(RESULTS); rc=0; \
	echo "==== tier: vm (in the background; output in $(RESULTS)/vm.log, printed at the end) ===="; \
	setsid $(MAKE) --no-print-directory vm < /dev/null > $(RESULTS)/vm.log 2>&1 & vmpid=$$!; \
	trap 'kill -INT -- -$$vmpid 2>/dev/null; wait $$vmpid; exit 130' INT TERM; \
	for tier in sanity units netns lint molecule matrix; do \
	  echo "==== tier: $$tier ===="; $(MAKE) --no-print-directory $$tier < /dev/null || rc=1; \
	done; \
	wait $$vmpid || rc=1; trap - INT TERM; \
	echo "==== tier: vm ===="; cat $(RESULTS)/vm.log; \
	$(BIN)/python tests/summary.py $(RESULTS) sanity,units,netns,vm,lint,molecule,matrix || rc=1; exit $$rc

test-fast: deps
	@rm -rf $(RESULTS); mkdir -p $(RESULTS); rc=0; \
	tiers="sanity units netns"; for tier in $$tiers; do \
	  echo "==== tier: $$tier ===="; $(MAKE) --no-print-directory $$tier || rc=1; \
	done; \
	$(BIN)/python tests/summary.py $(RESULTS) $${tiers// /,} || rc=1; exit $$rc

sanity: deps
	@mkdir -p $(RESULTS); $(PYTEST) tests/meta/test_sanity.py --junitxml=$(RESULTS)/sanity.xml || [ $$? -eq 5 ]

units: deps
	@mkdir -p $(RESULTS); $(PYTEST) tests/unit --junitxml=$(RESULTS)/units.xml || [ $$? -eq 5 ]

netns: deps
	@mkdir -p $(RESULTS); $(PYTEST) -m netns tests/netns tests/integration --junitxml=$(RESULTS)/netns.xml || [ $$? -eq 5 ]

vm: deps
	@mkdir -p $(RESULTS); $(PYTEST) -m vm tests/vm tests/integration --junitxml=$(RESULTS)/vm.xml || [ $$? -eq 5 ]

lint: deps
	@mkdir -p $(RESULTS); $(PYTEST) tests/meta/test_lint.py tests/meta/test_build.py tests/meta/test_docs.py \
	  tests/meta/test_execution_environment.py tests/meta/test_action_groups.py --junitxml=$(RESULTS)/lint.xml || [ $$? -eq 5 ]

molecule: deps
	@mkdir -p $(RESULTS); $(PYTEST) tests/meta/test_molecule.py --junitxml=$(RESULTS)/molecule.xml || [ $$? -eq 5 ]

# the older ansible-core releases requires_ansible admits: units on each, version-bound sanity tests on the
# oldest (about a minute when their environments under build/ansible-core-* exist)
matrix: deps
	@mkdir -p $(RESULTS); $(PYTEST) tests/meta/test_ansible_core_matrix.py --junitxml=$(RESULTS)/matrix.xml || [ $$? -eq 5 ]

docs: deps
	@$(BIN)/python tests/harness/gen_docs.py

build-collection: deps
	@mkdir -p $(BUILD)/dist; $(BIN)/ansible-galaxy collection build --force --output-path $(BUILD)/dist .

# ---- the demo: the main job on the built-in real-kernel test node ----
demo: deps
	@$(BIN)/python tests/harness/demo.py

BENCH_VENV ?= $(CURDIR)/.venv-bench
BENCH ?=
bench: deps $(BENCH_VENV)/.installed
	@$(BENCH_VENV)/bin/python tests/bench/run.py --only "$(BENCH)"

# a separate environment: the peers' collections must not leak into the test environment
$(BENCH_VENV)/.installed: tests/bench/requirements.txt
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -r tests/bench/requirements.txt
	@touch $@

clean: hosts-down vm-down
	rm -rf $(BUILD) tests/output
