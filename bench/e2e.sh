#!/usr/bin/env bash
# Kept for the references to it: the end-to-end benchmark is now bench/perf (direct, haproxy,
# socat and fallacy in one run). Same options; see bench/README.md.
exec "$(dirname "${BASH_SOURCE[0]}")/perf" "$@"
