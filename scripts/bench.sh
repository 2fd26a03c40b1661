#!/usr/bin/env bash
# Benchmarks (not tests: they print medians and ratios, they assert nothing).
#   scripts/bench.sh launch     median wall time of `zt-aas run -- /bin/true` vs bare /bin/true and bubblewrap
#   scripts/bench.sh decide     token verification + decision, 10 and 1,000 rules
#   scripts/bench.sh mediator   sys.ping round trips through the mediator (fsync per record, and relaxed)
#   scripts/bench.sh audit      records appended per second; records verified per second (100k log)
#   scripts/bench.sh egress     HTTP latency per request and throughput through the egress proxy vs direct
#   scripts/bench.sh all
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
# test-utils only adds the ZT_AAS_TEST_DISABLE hook (launch bench, degraded mode) and the ZT_AAS_TEST_RESOLVE
# resolver override (egress bench: a test name mapped to a loopback server).
cargo build --release --quiet --features test-utils
export ZT_AAS="$PWD/target/release/zt-aas"

case "$what" in
  launch)   python3 scripts/bench_launch.py ;;
  mediator) cargo build --release --quiet --example ping_agent
            ZT_AAS_PING_AGENT="$PWD/target/release/examples/ping_agent" python3 scripts/bench_mediator.py ;;
  egress)   python3 scripts/bench_egress.py ;;
  decide)   cargo bench --quiet --bench decide ;;
  audit)    cargo bench --quiet --bench audit ;;
  all)      "$0" launch; "$0" decide; "$0" mediator; "$0" audit; "$0" egress ;;
  *) echo "usage: $0 launch|decide|mediator|audit|egress|all" >&2; exit 2 ;;
esac
