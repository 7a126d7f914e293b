#!/usr/bin/env bash
# Removes what tests/runtime/run.sh left running (RT_KEEP=1, or a crash).
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=node.sh
source "$HERE/node.sh"
for pid in $(pgrep -f -- "$RT_WORK/(origin|fake-apiserver)|--listen-host $RT_INET_IP" || true); do kill "$pid" 2>/dev/null; done
rt_down
rt_blackhole_del
