#!/usr/bin/env bash
# Driver of `cargo xtask soak`: a bounded soak of the daemon on the
# miniature node (lib.sh). Mixed traffic from pod-a for SOAK_MINUTES
# (hostile.py soak-load: HTTPS through mitmproxy, plain HTTP in absolute
# form, raw TCP through CONNECT, a noProxy name dialled directly by the
# daemon, a noProxy CIDR skipped in the kernel), a config reload every
# SOAK_RELOAD_EVERY seconds, and one SIGKILL + start of the daemon half-way.
#
# The traffic pauses at idle points (start, A after warm-up, B before the
# restart, C after the new instance warmed up, D at the end); at each, the
# daemon's RSS, descriptors, map entries (`redirector status --json`, and
# the unpinned original-destination maps through the daemon's fds) and
# /metrics are recorded with the load's counts as one JSON line of
# $SOAK_RAW. xtask's soak module reads them (shapes: xtask/src/soak/records.rs),
# checks them and writes the summary.
#
# Env: REDIRECTOR_BIN, MITMDUMP, SOAK_RAW (output), SOAK_MINUTES (10),
# SOAK_RATE (requests/s, 25), SOAK_RELOAD_EVERY (30).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

: "${SOAK_RAW:?output file}"
MINUTES=${SOAK_MINUTES:-10}
RATE=${SOAK_RATE:-25}
RELOAD_EVERY=${SOAK_RELOAD_EVERY:-30}
SOAK_CONFIG=$WORK/soak-config.json
CONTROL=$WORK/soak-control
LOAD_OUT=$WORK/soak-load.json
LOAD_PID=""

require_root
require_prereqs
trap node_down_if_ours EXIT
node_up

# As on a node: info, not the tests' per-connection debug lines.
daemon_cmd() { # daemon_cmd ARGS...: sets CMD_ARRAY
  cg_ns_cmd "$CG_ROOT/system/redirector" "$NS_NODE" \
    env RUST_LOG="${SOAK_RUST_LOG:-info}" NO_COLOR=1 "$REDIRECTOR_BIN" "$@"
}

record() { printf '%s\n' "$1" >>"$SOAK_RAW"; }

# write_soak_config N: the soak's policy, with a rule that changes on every
# reload (written next to the file and renamed, as a ConfigMap update is).
write_soak_config() {
  local proxy="http://$INET_IP4:$PROXY_PORT/"
  write_config "$SOAK_CONFIG.tmp" "$proxy" "$proxy" \
    "[\"10.249.3.0/24\",\"localhost\",\"direct.test\",\"reload-$1.test\"]"
  mv -f "$SOAK_CONFIG.tmp" "$SOAK_CONFIG"
}

INSTANCE=1
# idle_point NAME: pause the load, let the daemon finish its connections,
# record one point, resume.
idle_point() {
  local name=$1 sdir=$WORK/soak-$1
  touch "$CONTROL/pause"
  wait_for 60 "the load paused" test -e "$CONTROL/paused"
  sleep 1.5
  # shellcheck disable=SC2016  # expanded by eval, at each try
  wait_for 15 "no active connection" \
    eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) == 0 ))' \
    || info "warning: connections still active at point $name"
  mkdir -p "$sdir"
  redirector_status_json >"$sdir/status.json"
  daemon_metrics >"$sdir/metrics.txt"
  record "$("$PYTHON" "$E2E_DIR/hostile.py" soak-point --name "$name" --instance "$INSTANCE" \
    --pid "$DAEMON_PID" --rss-kb "$(daemon_rss_kb)" --fds "$(daemon_fd_count)" --sockets "$(daemon_fds socket)" \
    --pipes "$(daemon_fds pipe)" --status "$sdir/status.json" --metrics "$sdir/metrics.txt" \
    --client "$CONTROL/paused")"
  info "point $name: RSS $(daemon_rss_kb) KiB, $(daemon_fd_count) fds ($(daemon_fds socket) sockets, $(daemon_fds pipe) pipe fds)"
  rm -f "$CONTROL/pause"
  wait_for 10 "the load resumed" test ! -e "$CONTROL/paused"
}

redirector_status_json() {
  timeout 10 "$REDIRECTOR_BIN" status --bpffs "$PIN_DIR" --json --cgroup-root "$CG2"
}

restart_daemon() {
  local t_kill t_start t_ready
  cp "$DAEMON_LOG" "$DAEMON_LOG.1"
  t_kill=$(now_ms)
  kill -KILL "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
  sleep 1
  t_start=$(now_ms)
  start_daemon "$SOAK_CONFIG"
  t_ready=$(now_ms)
  INSTANCE=2
  record "{\"kind\":\"restart\",\"t_kill\":$t_kill,\"t_start\":$t_start,\"t_ready\":$t_ready}"
  info "daemon SIGKILLed and restarted: ready $((t_ready - t_kill)) ms after the kill"
}

main() {
  local total t0 now elapsed next_reload reloads=0 t_a t_b t_kill t_c done_a=0 done_b=0 done_k=0 done_c=0
  total=$("$PYTHON" -c 'import sys; print(int(float(sys.argv[1]) * 60))' "$MINUTES")
  ((total >= 60)) || die "SOAK_MINUTES=$MINUTES: at least 1 minute"
  : >"$SOAK_RAW"
  record "{\"kind\":\"config\",\"minutes\":$MINUTES,\"rate\":$RATE,\"reload_every\":$RELOAD_EVERY}"
  write_soak_config 0
  start_daemon "$SOAK_CONFIG"
  rm -rf "$CONTROL"
  mkdir -p "$CONTROL"
  touch "$CONTROL/pause"  # the load starts paused: the start point is idle
  pod_bg pod-a soak-load "$PYTHON" "$E2E_DIR/hostile.py" soak-load --control "$CONTROL" \
    --out "$LOAD_OUT" --ca "$CA_CERT" --rate "$RATE"
  LOAD_PID=$POD_BG_PID
  sleep 2
  idle_point start

  # Schedule, in seconds from here: A after warm-up, B and the restart
  # half-way, C once the new instance warmed up, D at the end.
  t_a=$(( total * 15 / 100 )); t_b=$(( total * 45 / 100 )); t_kill=$(( total * 50 / 100 ))
  t_c=$(( total * 65 / 100 ))
  t0=$(now_ms)
  next_reload=$RELOAD_EVERY
  info "soak: $MINUTES min at $RATE requests/s; reload every ${RELOAD_EVERY}s; restart at ${t_kill}s"
  while :; do
    now=$(now_ms)
    elapsed=$(( (now - t0) / 1000 ))
    ((elapsed >= total)) && break
    kill -0 "$LOAD_PID" 2>/dev/null || die "the load generator died: $(tail -n 5 "$WORK/soak-load.out")"
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the daemon died: $(tail -n 5 "$DAEMON_LOG")"
    if ((!done_a && elapsed >= t_a)); then idle_point A; done_a=1; fi
    if ((!done_b && elapsed >= t_b)); then idle_point B; done_b=1; fi
    if ((!done_k && elapsed >= t_kill)); then restart_daemon; done_k=1; fi
    if ((!done_c && elapsed >= t_c)); then idle_point C; done_c=1; fi
    # Not in the 5 s before the kill: the dying instance might not apply it.
    if ((elapsed >= next_reload)) && ! ((elapsed >= t_kill - 5 && !done_k)); then
      reloads=$((reloads + 1))
      write_soak_config "$reloads"
      record "{\"kind\":\"reload\",\"t\":$(now_ms),\"n\":$reloads,\"instance\":$INSTANCE}"
      next_reload=$(( next_reload + RELOAD_EVERY ))
    fi
    sleep 0.5
  done
  sleep 1  # the last reload, if any, is applied
  idle_point D
  touch "$CONTROL/stop"
  wait_for 60 "the load's result" test -s "$LOAD_OUT"
  wait "$LOAD_PID" 2>/dev/null || true
  record "{\"kind\":\"load\",\"result\":$(cat "$LOAD_OUT")}"
  local logs ok failed errors
  logs=$(cat "$DAEMON_LOG.1" "$DAEMON_LOG")
  ok=$(grep -c "config reloaded" <<<"$logs" || true)
  failed=$(grep -c "config reload failed" <<<"$logs" || true)
  errors=$(grep -c " ERROR " <<<"$logs" || true)
  record "{\"kind\":\"logs\",\"reloads_written\":$reloads,\"reloaded\":$ok,\"reload_failed\":$failed,\"error_lines\":$errors,\"daemon_alive\":$(kill -0 "$DAEMON_PID" 2>/dev/null && echo true || echo false)}"
  info "soak done: $reloads reloads written, $ok applied, $failed refused"
}

main "$@"
