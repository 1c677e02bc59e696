#!/usr/bin/env bash
# Runs the property-test "fuzzers" for a while:
#  - the ACP line translator (agent/tests/translate_props.rs): arbitrary JSON
#    values and arbitrary text never panic, raw JSON is kept byte for byte;
#  - the control plane's runtime-stream frame handling
#    (integration-tests/tests/frame_props.rs): random frames on real streams
#    never crash the server nor store anything for a session the runtime does
#    not own.
#
#   scripts/fuzz.sh                 # 20000 cases each
#   PROPTEST_CASES=100000 scripts/fuzz.sh
#   scripts/fuzz.sh translate       # only one of them (translate | frames)
#
# A failure prints the minimal failing input proptest shrank it to, and
# proptest saves its seed under */proptest-regressions/ so the next run
# tries it first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${PROPTEST_CASES:-20000}"
which="${1:-all}"

cargo build --workspace --bins

if [[ "$which" == all || "$which" == translate ]]; then
    echo "== ACP line translator: $PROPTEST_CASES cases per property"
    time cargo test -p oma-agent --test translate_props -- --nocapture
fi
if [[ "$which" == all || "$which" == frames ]]; then
    echo "== runtime-stream frame handling: $PROPTEST_CASES cases"
    time cargo test -p oma-integration-tests --test frame_props -- --nocapture
fi
