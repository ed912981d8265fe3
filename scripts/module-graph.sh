#!/bin/sh
# Prints the graph between the top-level modules under src/, one
# `from [tier] -> to [tier]` line per pair, sorted. The tiers and the rules
# are in tests/module_graph.rs (issue 20).
set -eu
cd "$(dirname "$0")/.."
exec cargo test --quiet --test module_graph -- --nocapture --exact print_graph
