# edge-budget developer commands. Every tool is installed on first use into
# .tools/ (never system-wide); see docs/deploy.md.

SHELL := /bin/bash
# Architecture of `make release-build`: x86-64 or arm64 (arm64 needs the
# aarch64-unknown-linux-gnu Rust target and Zig, which cargo-lambda brings).
LAMBDA_ARCH ?= x86-64

.PHONY: help local walkthrough test lint-template release-build sam-build bench reliability litellm-e2e

help:
	@echo "make local          DynamoDB emulator + the functions + the local gateway + a demo key (Ctrl-C stops)"
	@echo "make walkthrough    authorize until a budget denies, settle, info, window reset (uses 'make local' if up)"
	@echo "make test           every test of the workspace against the DynamoDB emulator"
	@echo "make lint-template  cfn-lint + sam validate --lint on template.yaml"
	@echo "make litellm-e2e    OpenAI SDK -> local gateway -> LiteLLM proxy (mock models) -> settle callback"
	@echo "make release-build  cargo lambda build --release (LAMBDA_ARCH=$(LAMBDA_ARCH)) -> target/lambda/<fn>/bootstrap"
	@echo "make sam-build      sam build --beta-features for x86_64 (what 'sam deploy' would upload)"
	@echo "make bench          the figures of docs/performance.md (scripts/bench.sh)"
	@echo "make reliability    the long load/conservation/fault runs (scripts/reliability.sh)"

local:
	bash scripts/local.sh

walkthrough:
	bash scripts/walkthrough.sh

test:
	bash scripts/test.sh

lint-template:
	bash scripts/lint-template.sh

litellm-e2e:
	bash scripts/litellm-e2e.sh

# cargo-lambda links with Zig against the glibc of Lambda's provided.al2023
# (not this machine's); LAMBDA_COMPILER=cargo links with the host toolchain.
LAMBDA_COMPILER ?= cargo-zigbuild

release-build:
	source scripts/tools.sh && ensure_cargo_lambda && \
	  cargo lambda build --release --$(LAMBDA_ARCH) --compiler $(LAMBDA_COMPILER) \
	    -p authorize -p settle-spend -p reset -p admin -p notify
	ls -l target/lambda/*/bootstrap

# Builds into target/sam (ignored by git); `sam build` alone writes .aws-sam/.
sam-build:
	source scripts/tools.sh && ensure_cargo_lambda && ensure_sam_cli && \
	  SAM_CLI_BETA_RUST_CARGO_LAMBDA=1 "$$LINT_VENV/bin/sam" build --beta-features \
	    --build-dir target/sam --parameter-overrides Architecture=x86_64
	ls -l target/sam/*/bootstrap

# Latency against the emulator (floor, authorize, settle), CPU per
# authorization, cold start, memory and size: one table (docs/performance.md).
.PHONY: bench
bench:
	bash scripts/bench.sh

reliability:
	bash scripts/reliability.sh
