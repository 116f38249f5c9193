# Herald — everything a fresh Debian machine needs, in two commands (run as root, or with sudo):
#
#   make demo   set up, build, install the extension, run `herald demo`
#   make test   set up, build, install the extension, run every test
#
# Set-up is idempotent and fast once done: Debian packages, cargo-pgrx at the pinned
# version, and `cargo pgrx init` against the system PostgreSQL.

PG_MAJOR     ?= 15
PG_CONFIG    ?= /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
PGRX_VERSION := 0.18.0
PGRX_TESTDIR ?= /tmp/herald-pgrx-test
APT_PACKAGES := postgresql-$(PG_MAJOR) postgresql-server-dev-$(PG_MAJOR) libclang-dev clang sudo make \
                python3-aiosmtpd cups printer-driver-cups-pdf

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test setup install install-debug install-releases build build-debug lint test-extension test-e2e bench clean

# What users run is a release build; the tests use debug builds, which compile faster.
demo: install build
	./target/release/herald demo

test: setup lint test-extension install-debug build-debug test-e2e

## System packages, cargo-pgrx and pgrx init, each only when missing.
setup:
	@missing=""; for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "==> installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@if ! cargo pgrx --version 2>/dev/null | grep -q " $(PGRX_VERSION)$$"; then \
	    echo "==> installing cargo-pgrx $(PGRX_VERSION) (takes a few minutes, once)"; \
	    cargo install --locked cargo-pgrx --version $(PGRX_VERSION); \
	fi
	@if ! grep -qs '^pg$(PG_MAJOR) = "$(PG_CONFIG)"' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml; then \
	    echo "==> cargo pgrx init --pg$(PG_MAJOR) $(PG_CONFIG)"; \
	    cargo pgrx init --pg$(PG_MAJOR) $(PG_CONFIG); \
	fi

## Build (release) and install the extension into the system PostgreSQL.
install: setup
	cargo pgrx install --release -p herald --pg-config $(PG_CONFIG) $(if $(SUDO),--sudo)
	$(MAKE) --no-print-directory install-releases

## The same with a debug build, for the tests.
install-debug: setup
	cargo pgrx install -p herald --pg-config $(PG_CONFIG) $(if $(SUDO),--sudo)
	$(MAKE) --no-print-directory install-releases

# Earlier releases' install scripts, so that `CREATE EXTENSION herald VERSION '0.1.0'` and
# `ALTER EXTENSION herald UPDATE` work (the upgrade scripts come with cargo pgrx).
install-releases:
	$(SUDO) cp sql/releases/herald--*.sql "$$($(PG_CONFIG) --sharedir)/extension/"

## Build the coordinator (`herald`): target/release/herald is the binary to deploy.
build:
	cargo build --release -p herald-coordinator

build-debug:
	cargo build -p herald-coordinator

## Formatting, clippy (with the unsafe-code lints of extension/src/lib.rs) and zero warnings.
lint: setup
	cargo fmt --all -- --check
	cargo clippy -p herald --all-targets -- -D warnings
	cargo clippy -p herald-coordinator -p herald-tests -p herald-bench --all-targets -- -D warnings

## In-database tests (#[pg_test]) in a throw-away cluster run by the postgres user.
test-extension: setup
	$(SUDO) mkdir -p $(PGRX_TESTDIR) && $(SUDO) chown postgres $(PGRX_TESTDIR)
	cargo pgrx test pg$(PG_MAJOR) -p herald --runas postgres --pgdata $(PGRX_TESTDIR)/data

## End-to-end tests: private clusters, the installed extension, real coordinators; and the
## layer check (tests/tests/layers.rs).
test-e2e: build-debug
	cargo test -p herald-coordinator -p herald-tests

## Benchmarks against peers (see bench/README.md); not part of `make test`.
bench: setup
	bash bench/run.sh

clean:
	cargo clean
	$(SUDO) rm -rf $(PGRX_TESTDIR)
