#!/usr/bin/env bash
# Driver of `cargo xtask bench`: the miniature node of lib.sh (blackhole
# routes first, the lock, namespaces, cgroups), squid as the upstream and the
# benchmark server in rde-inet, then every workload over every path, the
# paths interleaved within each round. Each run appends a JSON line to
# $BENCH_RAW; xtask summarises them.
#
# Paths (the server listens on 7100 in rde-inet, on 10.249.0.2 and 10.249.3.2):
#   direct         pod-b (exempt cgroup, no hook) -> 10.249.0.2:7100
#   env-var        pod-b speaks CONNECT to squid itself, as with HTTPS_PROXY
#   redirector     pod-a, no proxy settings -> hook -> daemon -> squid
#   redsocks       rde-pod-r (a third namespace, no hook): iptables REDIRECT
#                  of 10.249.0.2:7100 to Debian's redsocks in the same
#                  namespace, http-connect to the same squid
#   kernel-bypass  pod-a -> 10.249.3.2:7100, a noProxy CIDR: the hook lets
#                  it go direct
#
# Env: REDIRECTOR_BIN, BENCH_XTASK (the xtask binary), BENCH_RAW (output),
# BENCH_QUICK=1 (small sizes, one round); full mode only: BENCH_ROUNDS (3),
# BENCH_IDLE_CONNS (5000); BENCH_REDSOCKS=0 leaves redsocks out.
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

: "${BENCH_XTASK:?path of the xtask binary}"
: "${BENCH_RAW:?output file}"
QUICK=${BENCH_QUICK:-0}
SERVER_PORT=7100
SQUID_PORT=3128
SQUID_DIR=$WORK/squid
NS_POD_R=rde-pod-r
REDSOCKS_PORT=12345
# node_down removes every namespace in ALL_NS: ours too.
ALL_NS+=("$NS_POD_R")
BENCH_CONFIG=$WORK/bench-config.json

if [[ $QUICK == 1 ]]; then
  ROUNDS=1 BULK_BYTES=$((64 << 20)) RATE_SECONDS=1 LAT_RATE=100 LAT_COUNT=50 IDLE_CONNS=200
else
  # IDLE_CONNS: a relay holds two sockets per connection and the open-files
  # limit here is 20,000 (hard, and not raisable without CAP_SYS_RESOURCE).
  ROUNDS=${BENCH_ROUNDS:-3} BULK_BYTES=$((1 << 30)) RATE_SECONDS=5 LAT_RATE=200 LAT_COUNT=1000
  IDLE_CONNS=${BENCH_IDLE_CONNS:-5000}
fi

require_root
command -v squid >/dev/null 2>&1 || [[ -x /usr/sbin/squid ]] || die "squid is missing (cargo xtask setup installs it)"
[[ -x $BENCH_XTASK ]] || die "BENCH_XTASK=$BENCH_XTASK is not executable"
require_prereqs
trap node_down_if_ours EXIT
node_up

# As on a node: info, not the tests' per-connection debug lines.
daemon_cmd() { # daemon_cmd ARGS...: sets CMD_ARRAY
  cg_ns_cmd "$CG_ROOT/system/redirector" "$NS_NODE" \
    env RUST_LOG="${BENCH_RUST_LOG:-info}" NO_COLOR=1 "$REDIRECTOR_BIN" "$@"
}

start_squid() {
  mkdir -p "$SQUID_DIR"
  cat >"$SQUID_DIR/squid.conf" <<CONF
http_port $INET_IP4:$SQUID_PORT
http_access allow all
cache deny all
cache_mem 8 MB
pinger_enable off
dns_nameservers 127.0.0.1
hosts_file /dev/null
url_rewrite_extras "%>a %un %>rm myip=%la myport=%lp"
store_id_extras "%>a %un %>rm myip=%la myport=%lp"
pid_filename $SQUID_DIR/squid.pid
cache_log $SQUID_DIR/cache.log
access_log stdio:$SQUID_DIR/access.log
coredump_dir $SQUID_DIR
visible_hostname rde-bench
max_filedescriptors 20000
shutdown_lifetime 1 seconds
CONF
  chown -R proxy:proxy "$SQUID_DIR"
  bg squid nsenter --net="/run/netns/$NS_INET" -- "$(command -v squid || echo /usr/sbin/squid)" \
    -N -f "$SQUID_DIR/squid.conf"
  wait_for 30 "squid listening on $INET_IP4:$SQUID_PORT" port_listening "$NS_INET" "$SQUID_PORT" \
    || { tail -n 20 "$WORK/squid.out" "$SQUID_DIR/cache.log" >&2; return 1; }
}

start_bench_server() {
  bg bench-server nsenter --net="/run/netns/$NS_INET" -- "$BENCH_XTASK" bench-serve \
    --listen "0.0.0.0:$SERVER_PORT"
  wait_for 15 "bench server on :$SERVER_PORT" port_listening "$NS_INET" "$SERVER_PORT" \
    || { tail -n 20 "$WORK/bench-server.out" >&2; return 1; }
}

# The redsocks client namespace: 10.249.4.2 behind the node like the pods,
# its client processes stay in our own cgroup (outside the hooks' root).
start_redsocks() {
  veth_pair "$NS_NODE" rde-pr-n "$NS_POD_R" rde-pr-p
  addr "$NS_NODE" rde-pr-n 10.249.4.1/24
  addr "$NS_POD_R" rde-pr-p 10.249.4.2/24
  ip -n "$NS_POD_R" route add "$TEST_NET4" via 10.249.4.1
  tune_netns "$NS_POD_R"
  cat >"$WORK/redsocks.conf" <<CONF
base {
  log_debug = off;
  log_info = off;
  log = "file:$WORK/redsocks.log";
  daemon = off;
  redirector = iptables;
}
redsocks {
  local_ip = 127.0.0.1;
  local_port = $REDSOCKS_PORT;
  ip = $INET_IP4;
  port = $SQUID_PORT;
  type = http-connect;
}
CONF
  in_netns "$NS_POD_R" iptables -t nat -A OUTPUT -p tcp -d "$INET_IP4" --dport "$SERVER_PORT" \
    -j REDIRECT --to-ports "$REDSOCKS_PORT"
  bg redsocks nsenter --net="/run/netns/$NS_POD_R" -- "$(command -v redsocks || echo /usr/sbin/redsocks)" \
    -c "$WORK/redsocks.conf"
  wait_for 15 "redsocks on 127.0.0.1:$REDSOCKS_PORT" port_listening "$NS_POD_R" "$REDSOCKS_PORT" \
    || { tail -n 20 "$WORK/redsocks.out" >&2; return 1; }
  REDSOCKS_PID=${BG_PIDS[-1]}
}

# Tens of thousands of new connections per workload: without these, the
# 28,000 default ephemeral ports sit in TIME_WAIT and connects slow down and
# fail. Only our own namespaces' sysctls.
tune_netns() {
  local ns
  for ns in "$@"; do
    ns_sysctl "$ns" net.ipv4.tcp_tw_reuse=1 "net.ipv4.ip_local_port_range=1024 65000"
  done
}

tune_netns "$NS_NODE" "$NS_INET" "$NS_POD_A" "$NS_POD_B"
start_squid
start_bench_server
PATHS=(direct env-var redirector redsocks kernel-bypass)
if [[ ${BENCH_REDSOCKS:-1} == 1 ]]; then
  start_redsocks
else
  PATHS=(direct env-var redirector kernel-bypass)
fi
paths_json=$(printf '"%s",' "${PATHS[@]}")
printf '{"kind":"paths","paths":[%s]}\n' "${paths_json%,}" >>"$BENCH_RAW"
write_config "$BENCH_CONFIG" "http://$INET_IP4:$SQUID_PORT/" "http://$INET_IP4:$SQUID_PORT/" \
  '["10.249.3.0/24"]'
start_daemon "$BENCH_CONFIG"

# path_args PATH: sets POD and TARGET_ARGS for one path.
path_args() {
  case $1 in
    direct) POD=pod-b TARGET_ARGS=(--server "$INET_IP4:$SERVER_PORT") ;;
    env-var) POD=pod-b TARGET_ARGS=(--server "$INET_IP4:$SERVER_PORT" --proxy "$INET_IP4:$SQUID_PORT") ;;
    redirector) POD=pod-a TARGET_ARGS=(--server "$INET_IP4:$SERVER_PORT") ;;
    redsocks) POD=redsocks TARGET_ARGS=(--server "$INET_IP4:$SERVER_PORT") ;;
    kernel-bypass) POD=pod-a TARGET_ARGS=(--server "$NOPROXY_IP4:$SERVER_PORT") ;;
    *) die "unknown path $1" ;;
  esac
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

load() { # load PATH ROUND WORKLOAD ARGS...
  local path=$1 round=$2 workload=$3; shift 3
  local POD TARGET_ARGS
  path_args "$path"
  if [[ $POD == redsocks ]]; then
    timeout 300 nsenter --net="/run/netns/$NS_POD_R" -- \
      "$BENCH_XTASK" bench-load --label "$path" --round "$round" --workload "$workload" \
      "${TARGET_ARGS[@]}" --out "$BENCH_RAW" "$@" 9>&-
    return
  fi
  # shellcheck disable=SC2016  # $0 and $@ are for the inner shell
  timeout 300 bash -c 'source "$0"; find_cgroup2; in_pod "$@"' "$E2E_DIR/lib.sh" "$POD" \
    "$BENCH_XTASK" bench-load --label "$path" --round "$round" --workload "$workload" \
    "${TARGET_ARGS[@]}" --out "$BENCH_RAW" "$@" 9>&-
}

HZ=$(getconf CLK_TCK)
failures=0
for round in $(seq 1 "$ROUNDS"); do
  for path in "${PATHS[@]}"; do
    info "round $round/$ROUNDS: $path"
    relay_pid=""
    [[ $path == redirector ]] && relay_pid=$DAEMON_PID
    [[ $path == redsocks ]] && relay_pid=$REDSOCKS_PID
    if [[ -n $relay_pid ]]; then
      cpu0=$(cpu_ticks "$relay_pid") rss0=$(rss_kib "$relay_pid")
    fi
    load "$path" "$round" bulk --bytes "$BULK_BYTES" || { info "bulk failed on $path"; failures=$((failures + 1)); }
    if [[ -n $relay_pid ]]; then
      cpu1=$(cpu_ticks "$relay_pid") rss1=$(rss_kib "$relay_pid")
      printf '{"kind":"daemon","path":"%s","round":%s,"cpu_s":%s,"bytes":%s,"rss_kib_before":%s,"rss_kib_after":%s}\n' \
        "$path" "$round" "$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$HZ" 'BEGIN { print (b - a) / hz }')" \
        "$((2 * BULK_BYTES))" "$rss0" "$rss1" >>"$BENCH_RAW"
    fi
    load "$path" "$round" rate --concurrency 32 --seconds "$RATE_SECONDS" || { info "rate failed on $path"; failures=$((failures + 1)); }
    load "$path" "$round" latency --per-second "$LAT_RATE" --count "$LAT_COUNT" || { info "latency failed on $path"; failures=$((failures + 1)); }
  done
done
# Memory: RSS of each relay while IDLE_CONNS proxied connections sit idle.
for path in redirector redsocks; do
  [[ " ${PATHS[*]} " == *" $path "* ]] || continue
  relay_pid=$DAEMON_PID
  [[ $path == redsocks ]] && relay_pid=$REDSOCKS_PID
  count=$IDLE_CONNS
  # redsocks 0.5 backs off accept() ("conn_pressure") near 2,500 connections
  # here; stay below it (the client also stops at its first failure).
  [[ $path == redsocks ]] && ((count > 2000)) && count=2000
  info "memory: $count idle connections through $path"
  ready=$WORK/idle-$path.ready
  rm -f "$ready"
  sleep 1
  rss0=$(rss_kib "$relay_pid")
  load "$path" 1 idle --count "$count" --seconds 3 --ready-file "$ready" &
  idle_pid=$!
  if wait_for 120 "$count connections through $path" test -s "$ready"; then
    rss1=$(rss_kib "$relay_pid")
    printf '{"kind":"memory","path":"%s","connections":%s,"rss_kib_before":%s,"rss_kib_held":%s}\n' \
      "$path" "$(cat "$ready")" "$rss0" "$rss1" >>"$BENCH_RAW"
  else
    failures=$((failures + 1))
  fi
  wait "$idle_pid" || { info "idle failed on $path"; failures=$((failures + 1)); }
done

# The daemon must still be alive at the end: a crash would skew everything.
kill -0 "$DAEMON_PID" 2>/dev/null || die "the redirector died during the benchmark (log: $DAEMON_LOG)"
info "squid access log: $(wc -l <"$SQUID_DIR/access.log") lines"
((failures == 0)) || die "$failures workload runs failed"
info "benchmark done"
