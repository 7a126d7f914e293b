#!/usr/bin/env bash
# Driver of `cargo xtask bench`: the miniature node of lib.sh (blackhole
# routes first, the lock, namespaces, cgroups), the upstreams and the
# benchmark server in rde-inet, then every workload over every path, the
# paths interleaved within each round. Each run appends a JSON line to
# $BENCH_RAW, in the shapes of tests/peers/src/records.rs (the printf lines
# below too); xtask summarises them.
#
# Upstreams in rde-inet: squid on 10.249.0.2:3128 (one worker) and the test
# peers' minimal CONNECT upstream (tests/peers, `peers upstream`) on
# 10.249.0.2:3129 (multi-threaded, splice; the "-fast" paths), so that the
# redirector's own cost shows without squid's single core as everyone's
# bottleneck. The benchmark server (`peers serve`) is in rde-inet too, the
# load generator (`peers load`) in the pods.
#
# Paths (the server listens on 7100 in rde-inet, on 10.249.0.2 and 10.249.3.2):
#   direct           pod-b (exempt cgroup, no hook) -> 10.249.0.2:7100
#   env-var          pod-b speaks CONNECT to squid itself, as with HTTPS_PROXY
#   redirector       pod-a, no proxy settings -> hook -> daemon -> squid
#   redsocks         rde-pod-r (a third namespace, no hook): nft redirect
#                    of 10.249.0.2:7100 to Debian's redsocks in the same
#                    namespace, http-connect to the same squid
#   kernel-bypass    pod-a -> 10.249.3.2:7100, a noProxy CIDR: the hook lets
#                    it go direct
#   env-var-fast     as env-var, to the fast upstream
#   redirector-fast  as redirector; the daemon's config is switched to the
#                    fast upstream (hot reload, SIGHUP) before it runs
#   redirector-identity  as redirector-fast, with `identity` headers on
#                    (X-Forwarded-For, Forwarded, namespace and pod headers)
#                    and a `profiles` entry: the cost of issue 18 per
#                    connection (without --kube no namespace selects the
#                    profile, so the lookup runs and finds none)
#   redsocks-fast    rde-pod-r -> 10.249.3.2:7100, REDIRECTed to a second
#                    redsocks whose upstream is the fast one
#
# Workloads: bulk, rate, latency (per round and path), iperf3 (per round,
# every path but the env-var ones: iperf3 cannot speak CONNECT), memory
# (once per relay path, after the rounds).
#
# Env: REDIRECTOR_BIN, BENCH_PEERS (the peers binary), BENCH_RAW (output),
# BENCH_QUICK=1 (small sizes, one round), BENCH_PATHS and BENCH_WORKLOADS
# (space- or comma-separated subsets), BENCH_ROUNDS, BENCH_IDLE_CONNS,
# BENCH_BULK_MIB, BENCH_REDSOCKS=0 (leave both redsocks paths out),
# BENCH_DAEMON_FLAGS (more flags for the daemon, e.g. `--socket-buffer 1Mi`).
set -euo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

: "${BENCH_PEERS:?path of the peers binary}"
: "${BENCH_RAW:?output file}"
QUICK=${BENCH_QUICK:-0}
SERVER_PORT=7100
IPERF_PORT=5201
SQUID_PORT=3128
FAST_PORT=3129
SQUID_DIR=$WORK/squid
NS_POD_R=rde-pod-r
REDSOCKS_PORT=12345
REDSOCKS_FAST_PORT=12346
# node_down removes every namespace in ALL_NS: ours too.
ALL_NS+=("$NS_POD_R")
BENCH_CONFIG=$WORK/bench-config.json

ALL_PATHS=(direct env-var redirector redsocks kernel-bypass env-var-fast redirector-fast redsocks-fast redirector-identity)
if [[ $QUICK == 1 ]]; then
  ROUNDS=${BENCH_ROUNDS:-1} BULK_MIB=${BENCH_BULK_MIB:-64} RATE_SECONDS=1 LAT_RATE=100 LAT_COUNT=50
  IDLE_CONNS=${BENCH_IDLE_CONNS:-200}
  # iperf3 is a cross-check of the full run only, unless asked for.
  DEFAULT_WORKLOADS="bulk rate latency memory"
else
  ROUNDS=${BENCH_ROUNDS:-3} BULK_MIB=${BENCH_BULK_MIB:-1024} RATE_SECONDS=5 LAT_RATE=200 LAT_COUNT=1000
  # A relay holds two sockets per connection and the open-files limit here
  # is 20,000 per process (hard, not raisable without CAP_SYS_RESOURCE):
  # 9,000 is the most that fits beside the daemon's own descriptors.
  IDLE_CONNS=${BENCH_IDLE_CONNS:-9000}
  DEFAULT_WORKLOADS="bulk rate latency iperf3 memory"
fi
BULK_BYTES=$((BULK_MIB << 20))
list=${BENCH_PATHS:-}
read -r -a PATHS <<<"${list//,/ }"
((${#PATHS[@]})) || PATHS=("${ALL_PATHS[@]}")
if [[ ${BENCH_REDSOCKS:-1} == 0 ]]; then
  mapfile -t PATHS < <(printf '%s\n' "${PATHS[@]}" | grep -v '^redsocks')
fi
list=${BENCH_WORKLOADS:-$DEFAULT_WORKLOADS}
read -r -a WORKLOADS <<<"${list//,/ }"

has() { # has WORD LIST...: is WORD among the rest?
  local w=$1; shift
  [[ " $* " == *" $w "* ]]
}
for p in "${PATHS[@]}"; do has "$p" "${ALL_PATHS[@]}" || die "unknown path $p (known: ${ALL_PATHS[*]})"; done
for w in "${WORKLOADS[@]}"; do has "$w" bulk rate latency iperf3 memory || die "unknown workload $w"; done
want_path() { has "$1" "${PATHS[@]}"; }
want_workload() { has "$1" "${WORKLOADS[@]}"; }

require_root
command -v squid >/dev/null 2>&1 || [[ -x /usr/sbin/squid ]] || die "squid is missing (cargo xtask setup installs it)"
if want_path redsocks || want_path redsocks-fast; then
  command -v redsocks >/dev/null 2>&1 || [[ -x /usr/sbin/redsocks ]] || die "redsocks is missing (cargo xtask setup installs it)"
fi
if want_workload iperf3; then
  command -v iperf3 >/dev/null 2>&1 || die "iperf3 is missing (cargo xtask setup installs it)"
fi
[[ -x $BENCH_PEERS ]] || die "BENCH_PEERS=$BENCH_PEERS is not executable"
require_prereqs
# 9,000 idle connections: every process here may need thousands of sockets.
ulimit -Sn "$(ulimit -Hn)"
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
  SQUID_PID=${BG_PIDS[-1]}
  wait_for 30 "squid listening on $INET_IP4:$SQUID_PORT" port_listening "$NS_INET" "$SQUID_PORT" \
    || { tail -n 20 "$WORK/squid.out" "$SQUID_DIR/cache.log" >&2; return 1; }
}

start_fast_upstream() {
  bg fast-upstream nsenter --net="/run/netns/$NS_INET" -- "$BENCH_PEERS" upstream \
    --listen "$INET_IP4:$FAST_PORT"
  FAST_PID=${BG_PIDS[-1]}
  wait_for 15 "fast upstream on :$FAST_PORT" port_listening "$NS_INET" "$FAST_PORT" \
    || { tail -n 20 "$WORK/fast-upstream.out" >&2; return 1; }
}

start_bench_server() {
  bg bench-server nsenter --net="/run/netns/$NS_INET" -- "$BENCH_PEERS" serve \
    --listen "0.0.0.0:$SERVER_PORT"
  wait_for 15 "bench server on :$SERVER_PORT" port_listening "$NS_INET" "$SERVER_PORT" \
    || { tail -n 20 "$WORK/bench-server.out" >&2; return 1; }
}

start_iperf3() {
  bg iperf3 nsenter --net="/run/netns/$NS_INET" -- iperf3 --server --port "$IPERF_PORT"
  wait_for 15 "iperf3 on :$IPERF_PORT" port_listening "$NS_INET" "$IPERF_PORT" \
    || { tail -n 20 "$WORK/iperf3.out" >&2; return 1; }
}

# The redsocks client namespace: 10.249.4.2 behind the node like the pods,
# its client processes stay in our own cgroup (outside the hooks' root).
make_redsocks_ns() {
  veth_pair "$NS_NODE" rde-pr-n "$NS_POD_R" rde-pr-p
  addr "$NS_NODE" rde-pr-n 10.249.4.1/24
  addr "$NS_POD_R" rde-pr-p 10.249.4.2/24
  ip -n "$NS_POD_R" route add "$TEST_NET4" via 10.249.4.1
  tune_netns "$NS_POD_R"
}

# start_redsocks NAME PORT UPSTREAM-PORT DEST-IP: one redsocks on
# 127.0.0.1:PORT, and an nft redirect of DEST-IP:7100 and :5201 to it.
# Sets REDSOCKS_PID.
start_redsocks() {
  local name=$1 port=$2 upstream=$3 dest=$4 dport
  cat >"$WORK/$name.conf" <<CONF
base {
  log_debug = off;
  log_info = off;
  log = "file:$WORK/$name.log";
  daemon = off;
  redirector = iptables;
}
redsocks {
  local_ip = 127.0.0.1;
  local_port = $port;
  ip = $INET_IP4;
  port = $upstream;
  type = http-connect;
}
CONF
  # nft rather than iptables: the same conntrack NAT (redsocks reads
  # SO_ORIGINAL_DST), without the host's iptables alternatives.
  in_netns "$NS_POD_R" nft add table ip rde_redsocks
  in_netns "$NS_POD_R" nft add chain ip rde_redsocks output '{ type nat hook output priority -100; }'
  for dport in "$SERVER_PORT" "$IPERF_PORT"; do
    in_netns "$NS_POD_R" nft add rule ip rde_redsocks output ip daddr "$dest" tcp dport "$dport" \
      redirect to ":$port"
  done
  bg "$name" nsenter --net="/run/netns/$NS_POD_R" -- "$(command -v redsocks || echo /usr/sbin/redsocks)" \
    -c "$WORK/$name.conf"
  REDSOCKS_PID=${BG_PIDS[-1]}
  wait_for 15 "$name on 127.0.0.1:$port" port_listening "$NS_POD_R" "$port" \
    || { tail -n 20 "$WORK/$name.out" >&2; return 1; }
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

# Which upstream each path goes through, and the relay process it has.
upstream_of() {
  case $1 in
    *-fast | redirector-identity) echo fast ;;
    env-var | redirector | redsocks) echo squid ;;
    *) echo none ;;
  esac
}

tune_netns "$NS_NODE" "$NS_INET" "$NS_POD_A" "$NS_POD_B"
SQUID_PID="" FAST_PID="" REDSOCKS_SQUID_PID="" REDSOCKS_FAST_PID=""
need_squid=0 need_fast=0
for p in "${PATHS[@]}"; do
  [[ $(upstream_of "$p") == squid ]] && need_squid=1
  [[ $(upstream_of "$p") == fast ]] && need_fast=1
done
((need_squid)) && start_squid
((need_fast)) && start_fast_upstream
start_bench_server
if want_workload iperf3; then start_iperf3; fi
if want_path redsocks || want_path redsocks-fast; then make_redsocks_ns; fi
if want_path redsocks; then
  start_redsocks redsocks "$REDSOCKS_PORT" "$SQUID_PORT" "$INET_IP4"
  REDSOCKS_SQUID_PID=$REDSOCKS_PID
fi
if want_path redsocks-fast; then
  start_redsocks redsocks-fast "$REDSOCKS_FAST_PORT" "$FAST_PORT" "$NOPROXY_IP4"
  REDSOCKS_FAST_PID=$REDSOCKS_PID
fi
paths_json=$(printf '"%s",' "${PATHS[@]}")
workloads_json=$(printf '"%s",' "${WORKLOADS[@]}")
printf '{"kind":"paths","paths":[%s],"workloads":[%s],"rounds":%s,"bulk_bytes":%s,"idle_connections":%s,"quick":%s}\n' \
  "${paths_json%,}" "${workloads_json%,}" "$ROUNDS" "$BULK_BYTES" "$IDLE_CONNS" \
  "$([[ $QUICK == 1 ]] && echo true || echo false)" >>"$BENCH_RAW"

# The daemon's upstream: squid or the fast one, switched by hot reload.
DAEMON_UPSTREAM=""
daemon_config() { # daemon_config squid|fast|identity: write the config for that upstream
  local port=$SQUID_PORT
  [[ $1 == fast || $1 == identity ]] && port=$FAST_PORT
  write_config "$BENCH_CONFIG" "http://$INET_IP4:$port/" "http://$INET_IP4:$port/" '["10.249.3.0/24"]'
  if [[ $1 == identity ]]; then
    # The fast upstream with identity headers and a profile (issue 18).
    "$PYTHON" - "$BENCH_CONFIG" "http://$INET_IP4:$port/" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["identity"] = {"forwardedFor": True, "forwarded": True,
                 "namespaceHeader": "X-Egress-Namespace", "podHeader": "X-Egress-Pod"}
c["profiles"] = {"bench": {"httpProxy": sys.argv[2], "httpsProxy": sys.argv[2],
                           "noProxy": ["10.249.3.0/24"]}}
json.dump(c, open(sys.argv[1], "w"))
PY
  fi
}
reloads() { grep -c "config reloaded" "$DAEMON_LOG" || true; }
reloaded_since() { (($(reloads) > $1)); }
use_upstream() { # use_upstream squid|fast: the daemon's, for the next connections
  local before
  [[ $1 == "$DAEMON_UPSTREAM" ]] && return 0
  before=$(reloads)
  daemon_config "$1"
  kill -HUP "$DAEMON_PID"
  wait_for 10 "the daemon reloads its config (upstream $1)" reloaded_since "$before" \
    || { tail -n 20 "$DAEMON_LOG" >&2; return 1; }
  DAEMON_UPSTREAM=$1
}
# The memory workload holds IDLE_CONNS connections from one pod: above the
# daemon's default caps (4,096 per pod; (open files - 1,024) / 3 node-wide),
# so a larger run raises both to fit it (a daemon without the flags is left
# as it is).
DAEMON_FLAGS=()
cap=$((IDLE_CONNS + 100))
if ((cap > 4096)) && "$REDIRECTOR_BIN" run --help 2>/dev/null | grep -q -- --max-connections-per-pod; then
  DAEMON_FLAGS=(--max-connections "$cap" --max-connections-per-pod "$cap")
fi
read -ra extra_flags <<<"${BENCH_DAEMON_FLAGS:-}"
DAEMON_FLAGS+=("${extra_flags[@]}")
restart_daemon() { # restart_daemon squid|fast: a fresh daemon on that upstream
  stop_daemon
  daemon_config "$1"
  DAEMON_UPSTREAM=$1
  DAEMON_EXTRA=("${DAEMON_FLAGS[@]}")
  start_daemon "$BENCH_CONFIG"
  DAEMON_EXTRA=()
}
if ((need_squid)); then restart_daemon squid; else restart_daemon fast; fi

# path_args PATH [PORT]: sets POD and TARGET_ARGS for one path.
path_args() {
  local port=${2:-$SERVER_PORT}
  case $1 in
    direct) POD=pod-b TARGET_ARGS=(--server "$INET_IP4:$port") ;;
    env-var) POD=pod-b TARGET_ARGS=(--server "$INET_IP4:$port" --proxy "$INET_IP4:$SQUID_PORT") ;;
    env-var-fast) POD=pod-b TARGET_ARGS=(--server "$INET_IP4:$port" --proxy "$INET_IP4:$FAST_PORT") ;;
    redirector | redirector-fast | redirector-identity) POD=pod-a TARGET_ARGS=(--server "$INET_IP4:$port") ;;
    redsocks) POD=redsocks TARGET_ARGS=(--server "$INET_IP4:$port") ;;
    redsocks-fast) POD=redsocks TARGET_ARGS=(--server "$NOPROXY_IP4:$port") ;;
    kernel-bypass) POD=pod-a TARGET_ARGS=(--server "$NOPROXY_IP4:$port") ;;
    *) die "unknown path $1" ;;
  esac
}

# relay_pid PATH / upstream_pid PATH: the processes whose CPU and memory
# the path costs (empty if none).
relay_pid() {
  case $1 in
    redirector | redirector-fast | redirector-identity) echo "$DAEMON_PID" ;;
    redsocks) echo "$REDSOCKS_SQUID_PID" ;;
    redsocks-fast) echo "$REDSOCKS_FAST_PID" ;;
  esac
}
upstream_pid() {
  case $(upstream_of "$1") in
    squid) echo "$SQUID_PID" ;;
    fast) echo "$FAST_PID" ;;
  esac
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
ticks_to_s() { awk -v a="$1" -v b="$2" -v hz="$HZ" 'BEGIN { print (b - a) / hz }'; }

load() { # load PATH ROUND WORKLOAD [--port PORT] ARGS...
  local path=$1 round=$2 workload=$3 port=$SERVER_PORT; shift 3
  if [[ ${1:-} == --port ]]; then port=$2; shift 2; fi
  local POD TARGET_ARGS
  path_args "$path" "$port"
  if [[ $path == redirector ]]; then use_upstream squid; fi
  if [[ $path == redirector-fast ]]; then use_upstream fast; fi
  if [[ $path == redirector-identity ]]; then use_upstream identity; fi
  if [[ $POD == redsocks ]]; then
    timeout 300 nsenter --net="/run/netns/$NS_POD_R" -- \
      "$BENCH_PEERS" load --label "$path" --round "$round" --workload "$workload" \
      "${TARGET_ARGS[@]}" --out "$BENCH_RAW" "$@" 9>&-
    return
  fi
  # shellcheck disable=SC2016  # $0 and $@ are for the inner shell
  timeout 300 bash -c 'source "$0"; find_cgroup2; in_pod "$@"' "$E2E_DIR/lib.sh" "$POD" \
    "$BENCH_PEERS" load --label "$path" --round "$round" --workload "$workload" \
    "${TARGET_ARGS[@]}" --out "$BENCH_RAW" "$@" 9>&-
}

HZ=$(getconf CLK_TCK)
failures=0 iperf_failures=0
per_round=0
for w in bulk rate latency iperf3; do want_workload "$w" && per_round=1; done
((per_round)) || ROUNDS=0
for round in $(seq 1 "$ROUNDS"); do
  for path in "${PATHS[@]}"; do
    info "round $round/$ROUNDS: $path"
    relay=$(relay_pid "$path") upstream=$(upstream_pid "$path")
    if want_workload bulk; then
      # The daemon's upstream first: a reload must not fall inside the
      # CPU window.
      [[ $path == redirector ]] && use_upstream squid
      [[ $path == redirector-fast ]] && use_upstream fast
      [[ $path == redirector-identity ]] && use_upstream identity
      [[ -n $relay ]] && cpu0=$(cpu_ticks "$relay") rss0=$(rss_kib "$relay")
      [[ -n $upstream ]] && ucpu0=$(cpu_ticks "$upstream")
      load "$path" "$round" bulk --bytes "$BULK_BYTES" || { info "bulk failed on $path"; failures=$((failures + 1)); }
      if [[ -n $relay ]]; then
        cpu1=$(cpu_ticks "$relay") rss1=$(rss_kib "$relay")
        ucpu=null
        [[ -n $upstream ]] && ucpu=$(ticks_to_s "$ucpu0" "$(cpu_ticks "$upstream")")
        printf '{"kind":"daemon","path":"%s","round":%s,"cpu_s":%s,"upstream_cpu_s":%s,"bytes":%s,"rss_kib_before":%s,"rss_kib_after":%s}\n' \
          "$path" "$round" "$(ticks_to_s "$cpu0" "$cpu1")" "$ucpu" \
          "$((2 * BULK_BYTES))" "$rss0" "$rss1" >>"$BENCH_RAW"
      fi
    fi
    if want_workload rate; then
      load "$path" "$round" rate --concurrency 32 --seconds "$RATE_SECONDS" || { info "rate failed on $path"; failures=$((failures + 1)); }
    fi
    if want_workload latency; then
      load "$path" "$round" latency --per-second "$LAT_RATE" --count "$LAT_COUNT" || { info "latency failed on $path"; failures=$((failures + 1)); }
    fi
    # iperf3 cannot speak CONNECT; a failure is reported, not fatal (it is
    # a cross-check of the bulk figures).
    if want_workload iperf3 && [[ $path != env-var* ]]; then
      load "$path" "$round" iperf3 --port "$IPERF_PORT" --bytes "$BULK_BYTES" \
        || { info "iperf3 failed on $path"; iperf_failures=$((iperf_failures + 1)); }
    fi
  done
done

# Memory: RSS of each relay while idle proxied connections are held open.
if want_workload memory; then
  for path in redirector redsocks redirector-fast redsocks-fast; do
    want_path "$path" || continue
    relay=$(relay_pid "$path")
    count=$IDLE_CONNS
    # redsocks 0.5 backs off accept() ("conn_pressure") near 2,500
    # connections here; stay below it (the client also stops at its first
    # failure).
    [[ $path == redsocks* ]] && ((count > 2000)) && count=2000
    # A fresh daemon: the allocator keeps what earlier workloads freed, and
    # the growth would be measured against that high-water mark instead.
    if [[ $path == redirector* ]]; then
      restart_daemon "$(upstream_of "$path")"
      relay=$DAEMON_PID
    fi
    info "memory: $count idle connections through $path"
    ready=$WORK/idle-$path.ready
    rm -f "$ready"
    # Let the previous workload's connections finish closing.
    sleep 2
    rss0=$(rss_kib "$relay")
    load "$path" 1 idle --count "$count" --seconds 3 --ready-file "$ready" &
    idle_pid=$!
    if wait_for 180 "$count connections through $path" test -s "$ready"; then
      rss1=$(rss_kib "$relay")
      printf '{"kind":"memory","path":"%s","requested":%s,"connections":%s,"rss_kib_before":%s,"rss_kib_held":%s}\n' \
        "$path" "$count" "$(cat "$ready")" "$rss0" "$rss1" >>"$BENCH_RAW"
    else
      failures=$((failures + 1))
    fi
    wait "$idle_pid" || { info "memory failed on $path"; failures=$((failures + 1)); }
  done
fi

# The daemon must still be alive at the end: a crash would skew everything.
kill -0 "$DAEMON_PID" 2>/dev/null || die "the redirector died during the benchmark (log: $DAEMON_LOG)"
[[ -n $SQUID_PID ]] && info "squid access log: $(wc -l <"$SQUID_DIR/access.log") lines"
((iperf_failures == 0)) || info "warning: $iperf_failures iperf3 runs failed (see $WORK/iperf3.out)"
((failures == 0)) || die "$failures workload runs failed"
info "benchmark done"
