# shellcheck shell=bash
# shellcheck disable=SC2034  # many variables are for the scripts sourcing this
# Shared code of the egress-redirector end-to-end harness: builds "a node in
# miniature" out of network namespaces and cgroups, runs the origin servers
# and mitmproxy, and starts/stops the redirector daemon.
#
# Topology (everything lives in namespaces; the host network is not touched):
#
#   rde-pod-a 10.249.1.2 fd42:e9e5:1::2 ──┐
#                                         ├── rde-node (forwarding) 10.249.0.1 fd42:e9e5::1
#   rde-pod-b 10.249.2.2 fd42:e9e5:2::2 ──┘        │   redirector listens on :15001
#                                                  │
#                         rde-inet 10.249.0.2 10.249.3.2 fd42:e9e5::2
#                                  origin.py (80, 443, 7007/tcp echo, 7008/udp echo,
#                                             7010/tcp banner, server speaks first)
#                                  mitmdump on 10.249.0.2:8080 (also accepts TLS:
#                                    an "https://" proxy), 10.249.0.2:8081 (proxyauth)
#
# cgroups: $CG2/rde-e2e                 <- redirector hooks attached here
#            pods/pod-a, pods/pod-b     <- pod processes (pod-b is exempt)
#            system/redirector          <- the daemon itself
#
# Sourced by run.sh and demo.sh; callers set `set -euo pipefail` themselves.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$E2E_DIR/../.." && pwd)

REDIRECTOR_BIN=${REDIRECTOR_BIN:-$REPO_DIR/target/release/redirector}
MITMDUMP=${MITMDUMP:-$(command -v mitmdump || echo /tmp/mitmvenv/bin/mitmdump)}
PYTHON=${PYTHON:-python3}

# Fixed names (prefix rde-) so a later run can find and remove leftovers.
WORK=${RDE_WORK:-/tmp/rde-e2e}
LOCK_FILE=/run/rde-e2e.lock
NS_NODE=rde-node
NS_INET=rde-inet
NS_POD_A=rde-pod-a
NS_POD_B=rde-pod-b
ALL_NS=("$NS_POD_A" "$NS_POD_B" "$NS_NODE" "$NS_INET")
TEST_NET4=10.249.0.0/16
# /32, not /48: the pods' fd42:e9e5:1::/64 and fd42:e9e5:2::/64 are outside
# fd42:e9e5::/48 (the third group is part of the /48).
TEST_NET6=fd42:e9e5::/32

NODE_IP4=10.249.0.1
NODE_IP6=fd42:e9e5::1
INET_IP4=10.249.0.2
INET_IP6=fd42:e9e5::2
NOPROXY_IP4=10.249.3.2
METRICS_ADDR=127.0.0.1:9465  # the daemon's --metrics, in netns rde-node
POD_A_IP4=10.249.1.2
POD_A_IP6=fd42:e9e5:1::2
POD_B_IP4=10.249.2.2
PROXY_PORT=8080
AUTH_PROXY_PORT=8081  # a second mitmdump that wants Basic user:s3cret
AUTH_USER=user
AUTH_PASS=s3cret
BAD_PASS=wr0ngpass  # must never show up in a log either
BANNER_PORT=7010    # origin speaks first
REFUSED_PORT=7009   # mitmproxy answers CONNECT to this port with 403
DEAD_PROXY_PORT=8099  # nothing listens here
# protocols.sh's peers in rde-inet: a proxy of the pod's own, and an h2c
# origin; mitmproxy carries both as raw TCP, as a corporate proxy would.
SECOND_PROXY_PORT=3130
H2C_PORT=7011
LISTEN_PORT=15001

BPFFS=$WORK/bpffs
PIN_DIR=$BPFFS/redirector
CA_DIR=$WORK/ca
CA_CERT=$CA_DIR/mitmproxy-ca-cert.pem
PROXY_CONFIG=$WORK/proxy-config.json
FLOW_LOG=$WORK/flow.log
AUTH_FLOW_LOG=$WORK/flow-auth.log
ORIGIN_LOG=$WORK/origin.log
MITM_LOG=$WORK/mitmdump.log
DAEMON_LOG=$WORK/redirector.log
# The test name server (dns.py, in rde-inet): the daemon's --resolv-conf,
# so noProxy name rules are verified against it and never against the
# machine's real resolver.
DNS_IP=$INET_IP4
DNS_TABLE=$WORK/dns-table.txt
DNS_LOG=$WORK/dns.log
RESOLV_CONF=$WORK/resolv.conf
# The daemons' hand-over socket (--handover-dir), not the host's /run.
HANDOVER_DIR=$WORK/handover

CG2=""          # cgroup2 mount point, found by find_cgroup2
CG_ROOT=""      # $CG2/rde-e2e: where the hooks are attached
DAEMON_PID=""
DAEMON_CONFIG=""     # the config (and extra flags) the running daemon got
DAEMON_EXTRA=()      # extra `redirector run` flags for the next start_daemon
LOCK_HELD=0
BG_PIDS=()      # every background process we started, killed by id in node_down

# Proxy variables must not leak into the pods' curl: the point is that pods
# need none.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

info() { printf '[e2e] %s\n' "$*" >&2; }
die() { printf '[e2e] ERROR: %s\n' "$*" >&2; return 1; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.1 s until it succeeds
# or the deadline passes.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$(( $(now_ms) + secs * 1000 ))
  while (( $(now_ms) < deadline )); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "timed out after ${secs}s waiting for: $what"
}

# ---------------------------------------------------------------- prerequisites

require_root() {
  [[ $(id -u) == 0 ]] || die "must run as root (namespaces, cgroups, bpffs)"
}

# Missing tools fail the run loudly: a skipped e2e suite would look green.
require_prereqs() {
  local missing=() t
  for t in curl openssl nsenter ip mount umount timeout flock "$PYTHON"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  [[ -x $MITMDUMP ]] || missing+=("mitmdump (MITMDUMP=$MITMDUMP)")
  [[ -x $REDIRECTOR_BIN ]] || missing+=("redirector (REDIRECTOR_BIN=$REDIRECTOR_BIN; build it with cargo first)")
  if ((${#missing[@]})); then
    die "missing prerequisites: ${missing[*]}"
    return 1
  fi
  find_cgroup2
}

find_cgroup2() {
  CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
  [[ -n $CG2 ]] || { die "no cgroup2 mount found in /proc/mounts"; return 1; }
  CG_ROOT=$CG2/rde-e2e
}

# Only one harness instance at a time: all of them use the same fixed names.
take_lock() {
  exec 9>"$LOCK_FILE"
  flock -n 9 || { die "another e2e run holds $LOCK_FILE"; return 1; }
  LOCK_HELD=1
}

# Cleanup for EXIT traps: only tear down what is ours (another run may hold
# the lock and own the namespaces right now).
node_down_if_ours() {
  ((LOCK_HELD)) || return 0
  if [[ ${RDE_KEEP:-} == 1 ]]; then
    info "RDE_KEEP=1: leaving the node up for inspection (the next run removes it)"
    return 0
  fi
  node_down
}

# ---------------------------------------------------------------- running things

# in_netns NS CMD...: run CMD in a network namespace, keeping our cgroup
# (so it is NOT under the hooks' attach root).
in_netns() {
  local ns=$1; shift
  nsenter --net="/run/netns/$ns" -- "$@"
}

# cg_ns_cmd CGDIR NS CMD...: sets CMD_ARRAY to a command that joins the cgroup
# first, then switches netns and execs CMD. (`ip netns exec` remounts /sys,
# after which cgroup.procs is not writable.) Every step execs, so a caller
# that starts "${CMD_ARRAY[@]}" in the background gets CMD's own pid in $!.
cg_ns_cmd() {
  local cg=$1 ns=$2; shift 2
  # shellcheck disable=SC2016  # $$ and $@ are for the inner shell
  CMD_ARRAY=(sh -c 'echo $$ > "$1/cgroup.procs" && ns=$2 && shift 2 && exec nsenter --net="/run/netns/$ns" -- "$@"'
    sh "$cg" "$ns" "$@")
}

# in_cgroup_netns CGDIR NS CMD...: run CMD there in the foreground.
in_cgroup_netns() {
  local CMD_ARRAY
  cg_ns_cmd "$@"
  "${CMD_ARRAY[@]}"
}

# in_pod pod-a|pod-b CMD...: run CMD as a process of that pod.
in_pod() {
  local pod=$1; shift
  in_cgroup_netns "$CG_ROOT/pods/$pod" "rde-$pod" "$@"
}

# pod_curl POD ARGS...: curl from a pod, ignoring ~/.curlrc, always time-bound.
pod_curl() {
  local pod=$1; shift
  in_pod "$pod" curl -q -sS --max-time 10 "$@"
}

probe() { # probe POD netprobe-args...
  local pod=$1; shift
  in_pod "$pod" "$PYTHON" "$E2E_DIR/netprobe.py" "$@"
}

# ---------------------------------------------------------------- teardown

# kill_pids PID...: TERM, wait up to 5 s, then KILL what is left.
kill_pids() {
  local pid alive deadline
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null
  deadline=$(( $(now_ms) + 5000 ))
  while (( $(now_ms) < deadline )); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null
  return 0
}

# Processes left in our cgroups/namespaces (ours, possibly from a crashed run).
leftover_pids() {
  local ns f
  for ns in "${ALL_NS[@]}"; do
    [[ -e /run/netns/$ns ]] && ip netns pids "$ns" 2>/dev/null
  done
  if [[ -n $CG_ROOT && -d $CG_ROOT ]]; then
    while IFS= read -r f; do cat "$f" 2>/dev/null; done \
      < <(find "$CG_ROOT" -name cgroup.procs 2>/dev/null)
  fi
}

# node_down [keep-routes]: remove everything node_up creates. Idempotent, never
# fails, and also cleans up after a crashed earlier run (fixed names).
node_down() {
  local keep_routes=${1:-} pids ns i old_opts=$-
  set +e
  [[ -n $CG_ROOT ]] || find_cgroup2 2>/dev/null
  # 1. our processes, by id: the ones we started (if still our children;
  #    an exited one's pid may have been reused), then any left in our
  #    namespaces/cgroups
  local mine=() pid
  # The daemon at once: on SIGTERM it would keep serving (draining) until
  # its drain timeout, since its hooks are still attached.
  if [[ -n $DAEMON_PID ]]; then kill -INT "$DAEMON_PID" 2>/dev/null; fi
  for pid in "${BG_PIDS[@]}"; do
    [[ $(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ') == "$$" ]] && mine+=("$pid")
  done
  if ((${#mine[@]})); then kill_pids "${mine[@]}"; fi
  BG_PIDS=()
  DAEMON_PID=""
  for i in 1 2 3; do
    mapfile -t pids < <(leftover_pids | sort -u)
    ((${#pids[@]})) || break
    kill_pids "${pids[@]}"
  done
  # 2. hooks: detach through the tool, then drop the bpffs (unmounting it
  #    releases any pinned link the tool did not remove)
  if mountpoint -q "$BPFFS" 2>/dev/null; then
    if [[ -d $PIN_DIR && -x $REDIRECTOR_BIN ]]; then
      timeout 10 "$REDIRECTOR_BIN" detach --bpffs "$PIN_DIR" >>"$WORK/cleanup.log" 2>&1
    fi
    rm -rf "$PIN_DIR" 2>/dev/null
    for i in 1 2 3; do umount "$BPFFS" 2>/dev/null || break; done
  fi
  # 3. namespaces (their veths go with them)
  for ns in "${ALL_NS[@]}"; do
    [[ -e /run/netns/$ns ]] && ip netns del "$ns"
  done
  # 4. cgroups, deepest first (only empty ones can be removed)
  if [[ -n $CG_ROOT && -d $CG_ROOT ]]; then
    find "$CG_ROOT" -depth -type d -exec rmdir {} \; 2>/dev/null
    [[ -d $CG_ROOT ]] && info "warning: could not remove $CG_ROOT"
  fi
  [[ -n $DAEMON_MEMCG && -d $DAEMON_MEMCG ]] && rmdir "$DAEMON_MEMCG" 2>/dev/null
  # 5. the host blackhole routes go last: nothing of ours is left to send
  if [[ $keep_routes != keep-routes ]]; then
    blackhole_del
  fi
  [[ $old_opts == *e* ]] && set -e
  return 0
}

# ---------------------------------------------------------------- build-up

# Anything addressed to the test ranges dies on the host instead of leaving
# through its default route. Added before anything else exists.
blackhole_add() {
  ip route replace blackhole "$TEST_NET4"
  ip -6 route replace blackhole "$TEST_NET6"
}
blackhole_del() {
  ip route del blackhole "$TEST_NET4" 2>/dev/null
  ip -6 route del blackhole "$TEST_NET6" 2>/dev/null
  return 0
}

# ns_sysctl NS KEY=VALUE...: sysctls of our own namespaces only, never the host's.
ns_sysctl() {
  local ns=$1; shift
  ip netns exec "$ns" sysctl -q -w "$@" >/dev/null
}

make_netns() {
  local ns=$1
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # No DAD: addresses are usable at once and there is nobody to clash with.
  ns_sysctl "$ns" net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
    net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
}

# veth_pair NS1 IF1 NS2 IF2: created inside the namespaces, never on the host.
veth_pair() {
  ip -n "$1" link add "$2" type veth peer name "$4" netns "$3"
  ip -n "$1" link set "$2" up
  ip -n "$3" link set "$4" up
}

addr() { # addr NS IF CIDR
  if [[ $3 == *:* ]]; then
    ip -n "$1" addr add "$3" dev "$2" nodad
  else
    ip -n "$1" addr add "$3" dev "$2"
  fi
}

build_network() {
  local ns
  for ns in "${ALL_NS[@]}"; do make_netns "$ns"; done
  # The node forwards between pods and the uplink: inside its namespace only.
  ns_sysctl "$NS_NODE" net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

  # uplink node <-> inet
  veth_pair "$NS_NODE" rde-up-n "$NS_INET" rde-up-i
  addr "$NS_NODE" rde-up-n "$NODE_IP4/24"
  addr "$NS_NODE" rde-up-n "$NODE_IP6/64"
  addr "$NS_INET" rde-up-i "$INET_IP4/24"
  addr "$NS_INET" rde-up-i "$NOPROXY_IP4/24"
  addr "$NS_INET" rde-up-i "$INET_IP6/64"
  ip -n "$NS_NODE" route add 10.249.3.0/24 via "$INET_IP4"
  ip -n "$NS_INET" route add "$TEST_NET4" via "$NODE_IP4"
  ip -n "$NS_INET" -6 route add "$TEST_NET6" via "$NODE_IP6"

  # pods: only the test ranges, via the node; no default route
  local pod n i
  for i in 1 2; do
    if ((i == 1)); then pod=$NS_POD_A; n=a; else pod=$NS_POD_B; n=b; fi
    veth_pair "$NS_NODE" "rde-p$n-n" "$pod" "rde-p$n-p"
    addr "$NS_NODE" "rde-p$n-n" "10.249.$i.1/24"
    addr "$NS_NODE" "rde-p$n-n" "fd42:e9e5:$i::1/64"
    addr "$pod" "rde-p$n-p" "10.249.$i.2/24"
    addr "$pod" "rde-p$n-p" "fd42:e9e5:$i::2/64"
    ip -n "$pod" route add "$TEST_NET4" via "10.249.$i.1"
    ip -n "$pod" -6 route add "$TEST_NET6" via "fd42:e9e5:$i::1"
  done

  for ns in "${ALL_NS[@]}"; do
    wait_for 10 "IPv6 addresses in $ns leave tentative state" \
      eval "[[ -z \$(ip -n $ns -6 addr show tentative) ]]"
  done
}

build_cgroups() {
  mkdir -p "$CG_ROOT/pods/pod-a" "$CG_ROOT/pods/pod-b" "$CG_ROOT/system/redirector"
}

mount_bpffs() {
  mkdir -p "$BPFFS"
  mount -t bpf bpf "$BPFFS"
}

# The origin's own certificate (mitmproxy talks TLS to it with ssl_insecure).
make_origin_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/origin-key.pem" -out "$WORK/origin-cert.pem" -days 2 \
    -subj /CN=origin.test -addext "subjectAltName=DNS:origin.test,IP:$INET_IP4,IP:$INET_IP6" \
    >/dev/null 2>&1
}

# The MITM CA, made by the tool under test; CA_B64 goes into trustedCA.
make_ca() {
  mkdir -p "$CA_DIR"
  CA_B64=$(timeout 30 "$REDIRECTOR_BIN" gen-ca --out-dir "$CA_DIR") \
    || { die "redirector gen-ca failed"; return 1; }
  local f
  for f in mitmproxy-ca.pem mitmproxy-ca-cert.pem mitmproxy-ca-key.pem; do
    [[ -s $CA_DIR/$f ]] || { die "gen-ca did not write $CA_DIR/$f"; return 1; }
  done
  [[ $CA_B64 =~ ^[A-Za-z0-9+/=]+$ ]] \
    || { die "gen-ca stdout is not one line of base64: ${CA_B64:0:200}"; return 1; }
}

write_proxy_config() { # write_proxy_config FILE
  cat >"$1" <<EOF
{"httpProxy":"http://$INET_IP4:$PROXY_PORT/","httpsProxy":"http://$INET_IP4:$PROXY_PORT/","noProxy":["10.249.3.0/24","localhost"],"trustedCA":"$CA_B64"}
EOF
}

# write_config FILE HTTP_PROXY HTTPS_PROXY NOPROXY_JSON [CA_B64]: any proxy
# config; an empty proxy URL leaves that key out (= that class goes direct).
# NOPROXY_JSON is the raw JSON value: an array or a comma-separated string.
write_config() {
  local file=$1 http=$2 https=$3 noproxy=$4 ca=${5:-$CA_B64} body=""
  [[ -n $http ]] && body+="\"httpProxy\":\"$http\","
  [[ -n $https ]] && body+="\"httpsProxy\":\"$https\","
  printf '{%s"noProxy":%s,"trustedCA":"%s"}\n' "$body" "$noproxy" "$ca" >"$file"
}

# The host-name policy of the issue-3 tests. Test names are pinned to
# 10.249.0.2 by flowlog.py (never DNS) and by curl --resolve in the pods.
#   direct.test      apex and every subdomain go direct
#   .only-sub.test   subdomains only: the apex only-sub.test is proxied
#   porthost.test:80 only port 80 goes direct
POLICY_NOPROXY='["10.249.3.0/24","localhost","direct.test",".only-sub.test","porthost.test:80"]'
POLICY_CONFIG=$WORK/policy-config.json
write_policy_config() { # write_policy_config FILE
  write_config "$1" "http://$INET_IP4:$PROXY_PORT/" "http://$INET_IP4:$PROXY_PORT/" "$POLICY_NOPROXY"
}

# bg NAME CMD...: start CMD (a program, not a shell function, so that $! is
# its pid) in the background, output to $WORK/NAME.out.
bg() {
  local name=$1; shift
  # 9>&-: children must not inherit (and keep holding) the run lock
  "$@" >"$WORK/$name.out" 2>&1 9>&- &
  BG_PIDS+=("$!")
}

port_listening() { # port_listening NS PORT
  [[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null) ]]
}

# A second CA that the proxy config does NOT trust (for the "TLS to the
# proxy is verified" test).
make_other_ca() {
  OTHER_CA_B64=$(timeout 30 "$REDIRECTOR_BIN" gen-ca --out-dir "$WORK/ca-other") \
    || { die "redirector gen-ca (second CA) failed"; return 1; }
}

# Every *.test name resolves to the origin's addresses, as flowlog.py pins
# them for mitmproxy and the tests' curl --resolve does for pods.
start_dns() {
  printf '*.test 60 %s %s\n' "$INET_IP4" "$INET_IP6" >"$DNS_TABLE"
  printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$DNS_IP" >"$RESOLV_CONF"
  : >"$DNS_LOG"
  bg dns nsenter --net="/run/netns/$NS_INET" -- "$PYTHON" "$E2E_DIR/dns.py" serve \
    --listen "$DNS_IP" --table "$DNS_TABLE" --log "$DNS_LOG"
  wait_for 10 "test name server" grep -q "dns ready" "$WORK/dns.out" \
    || { tail -n 20 "$WORK/dns.out" >&2; return 1; }
  local out
  out=$(in_netns "$NS_NODE" "$PYTHON" "$E2E_DIR/dns.py" query origin.test --server "$DNS_IP") \
    || { die "the test name server does not answer from rde-node: $out"; return 1; }
  [[ $out == "$INET_IP4 ttl=60" ]] || { die "test name server: origin.test is '$out'"; return 1; }
}

start_origin() {
  : >"$ORIGIN_LOG"
  bg origin nsenter --net="/run/netns/$NS_INET" -- "$PYTHON" "$E2E_DIR/origin.py" --log "$ORIGIN_LOG" \
    --cert "$WORK/origin-cert.pem" --key "$WORK/origin-key.pem"
  wait_for 15 "origin servers" grep -q "origin ready" "$WORK/origin.out" \
    || { tail -n 20 "$WORK/origin.out" >&2; return 1; }
}

# start_mitm NAME PORT FLOWLOG [EXTRA-ARGS...]: start one mitmdump in rde-inet.
# It reads its CA from confdir (so it also answers a TLS-wrapped proxy
# connection, an "https://" proxy, with a certificate for $INET_IP4 from our
# CA); ssl_insecure because the origin's cert is self-signed; ports 7007,
# 7010 and the protocol tests' 3130 and 7011 are forced to raw TCP and test
# names pinned (never DNS) by flowlog.py; showhost: mitmdump's own lines
# name the host the client asked for (origin.test), not the test address
# flowlog.py pins it to.
start_mitm() {
  local name=$1 port=$2 log=$3; shift 3
  : >"$log"
  bg "$name" nsenter --net="/run/netns/$NS_INET" -- env HOME="$WORK" PYTHONUNBUFFERED=1 "$MITMDUMP" \
    --listen-host "$INET_IP4" --listen-port "$port" \
    --set confdir="$CA_DIR" --set ssl_insecure=true --set showhost=true \
    -s "$E2E_DIR/flowlog.py" --set flowlog="$log" --set raw_ports="7007,$BANNER_PORT,$SECOND_PROXY_PORT,$H2C_PORT" \
    --set test_ip="$INET_IP4" "$@"
}

start_mitmproxy() {
  # both at once: each takes a second or two to start
  start_mitm mitmdump "$PROXY_PORT" "$FLOW_LOG" --set refuse_ports="$REFUSED_PORT"
  start_mitm mitmdump-auth "$AUTH_PROXY_PORT" "$AUTH_FLOW_LOG" \
    --set proxyauth="$AUTH_USER:$AUTH_PASS"
  ln -sf "$WORK/mitmdump.out" "$MITM_LOG"
  wait_for 30 "mitmdump listening on $INET_IP4:$PROXY_PORT" port_listening "$NS_INET" "$PROXY_PORT" \
    || { tail -n 20 "$WORK/mitmdump.out" >&2; return 1; }
  wait_for 30 "mitmdump (proxyauth) listening on $INET_IP4:$AUTH_PROXY_PORT" \
    port_listening "$NS_INET" "$AUTH_PROXY_PORT" \
    || { tail -n 20 "$WORK/mitmdump-auth.out" >&2; return 1; }
}

# Before any hook exists: pods reach the inet directly and mitmproxy tunnels.
# A topology fault shows up here, not as a confusing test failure later.
node_selfcheck() {
  local out
  out=$(pod_curl pod-a "http://$INET_IP4/selfcheck") || { die "pod-a cannot reach $INET_IP4: $out"; return 1; }
  [[ $out == *"client=$POD_A_IP4 "* ]] || { die "pod-a direct: unexpected body: $out"; return 1; }
  out=$(pod_curl pod-a "http://[$INET_IP6]/selfcheck") || { die "pod-a cannot reach [$INET_IP6]: $out"; return 1; }
  [[ $out == *"client=$POD_A_IP6 "* ]] || { die "pod-a direct v6: unexpected body: $out"; return 1; }
  out=$(pod_curl pod-b "http://$NOPROXY_IP4/selfcheck") || { die "pod-b cannot reach $NOPROXY_IP4: $out"; return 1; }
  [[ $out == *"client=$POD_B_IP4 "* ]] || { die "pod-b direct: unexpected body: $out"; return 1; }
  # mitmproxy as the daemon will use it: CONNECT from the node.
  out=$(in_netns "$NS_NODE" curl -q -sS --max-time 10 -p -x "http://$INET_IP4:$PROXY_PORT" \
    "http://$INET_IP4/selfcheck") || { die "CONNECT through mitmproxy failed: $out"; return 1; }
  [[ $out == *"client=$INET_IP4 "* ]] || { die "via mitmproxy: unexpected body: $out"; return 1; }
  grep -q "^CONNECT $INET_IP4:80 " "$FLOW_LOG" || { die "flowlog addon wrote no CONNECT line"; return 1; }
  # Test names are pinned by the addon, anything else is refused, not resolved.
  out=$(in_netns "$NS_NODE" curl -q -sS --max-time 10 -p -x "http://$INET_IP4:$PROXY_PORT" \
    "http://origin.test/selfcheck-name") || { die "CONNECT origin.test through mitmproxy failed: $out"; return 1; }
  [[ $out == *"client=$INET_IP4 "* ]] || { die "via mitmproxy by name: unexpected body: $out"; return 1; }
  out=$(in_netns "$NS_NODE" curl -q -sS --max-time 10 -p -x "http://$INET_IP4:$PROXY_PORT" \
    "http://no-such-name.invalid/selfcheck" 2>&1) && { die "a non-test name was not refused: $out"; return 1; }
  grep -q "^NAME-REFUSED no-such-name.invalid:80 " "$FLOW_LOG" \
    || { die "flowlog addon did not refuse a non-test name"; return 1; }
  # The "https://" proxy: mitmproxy takes TLS from its client, with a
  # certificate for its IP that our CA verifies.
  out=$(in_netns "$NS_NODE" curl -q -sS --max-time 10 -p -x "https://$INET_IP4:$PROXY_PORT" \
    --proxy-cacert "$CA_CERT" "http://$INET_IP4/selfcheck-tls-proxy") \
    || { die "CONNECT through mitmproxy over TLS failed: $out"; return 1; }
  [[ $out == *"client=$INET_IP4 "* ]] || { die "via mitmproxy over TLS: unexpected body: $out"; return 1; }
  grep -q "^CONNECT $INET_IP4:80 .* proxy_tls=yes" "$FLOW_LOG" \
    || { die "flowlog addon did not see the TLS-wrapped proxy connection"; return 1; }
  # The proxyauth mitmdump: 407 without credentials, through with them.
  out=$(in_netns "$NS_NODE" curl -q -s -o /dev/null -w '%{http_code}' --max-time 10 \
    -x "http://$INET_IP4:$AUTH_PROXY_PORT" "http://$INET_IP4/selfcheck-noauth")
  [[ $out == 407 ]] || { die "auth proxy without credentials: status $out, expected 407"; return 1; }
  out=$(in_netns "$NS_NODE" curl -q -sS --max-time 10 -p \
    -x "http://$AUTH_USER:$AUTH_PASS@$INET_IP4:$AUTH_PROXY_PORT" "http://$INET_IP4/selfcheck-auth") \
    || { die "CONNECT through the auth proxy failed: $out"; return 1; }
  [[ $out == *"client=$INET_IP4 "* ]] || { die "via the auth proxy: unexpected body: $out"; return 1; }
  grep -q "^CONNECT $INET_IP4:80 .* user=$AUTH_USER" "$AUTH_FLOW_LOG" \
    || { die "auth flow log has no authenticated CONNECT"; return 1; }
}

# node_up: the whole node minus the daemon. Call it as a plain command under
# `set -e` (not in `if`/`||`, which would switch errexit off inside it): any
# failing step then ends the script, and the EXIT trap cleans up.
node_up() {
  take_lock
  find_cgroup2
  blackhole_add                # before anything of ours can send a packet
  node_down keep-routes        # leftovers of an earlier (crashed) run
  trap_setup_errors
  rm -rf "$WORK"
  mkdir -p "$WORK"
  info "work dir: $WORK (logs stay there after the run)"
  build_network
  build_cgroups
  mount_bpffs
  make_origin_cert
  make_ca
  write_proxy_config "$PROXY_CONFIG"
  write_policy_config "$POLICY_CONFIG"
  make_other_ca
  start_origin
  start_dns
  start_mitmproxy
  node_selfcheck
  untrap_setup_errors
  info "node is up"
}

# Report the first failing command of the setup (set -E makes functions
# inherit this trap).
SETUP_ERR_SEEN=0
on_setup_err() { # on_setup_err STATUS COMMAND FUNCTION
  ((SETUP_ERR_SEEN)) && return 0
  SETUP_ERR_SEEN=1
  printf '[e2e] ERROR: setup failed in %s (exit %s): %s\n' "$3" "$1" "$2" >&2
}
trap_setup_errors() {
  set -E
  trap 'on_setup_err $? "$BASH_COMMAND" "${FUNCNAME[0]:-main}"' ERR
}
untrap_setup_errors() {
  trap - ERR
  set +E
}

# ---------------------------------------------------------------- the daemon

# The daemon runs as on a node: in netns rde-node and cgroup
# system/redirector, i.e. under the attach root, so skipping its own upstream
# connects must come from SO_MARK, not from where it sits.
# DAEMON_MEMCG: a cgroup v1 memory cgroup the daemon joins as well (its
# memory limit; bounds.sh), removed by node_down.
DAEMON_MEMCG=""
daemon_cmd() { # daemon_cmd ARGS...: sets CMD_ARRAY
  cg_ns_cmd "$CG_ROOT/system/redirector" "$NS_NODE" \
    env RUST_LOG=info,redirector=debug NO_COLOR=1 "$REDIRECTOR_BIN" "$@"
  if [[ -n $DAEMON_MEMCG ]]; then
    # shellcheck disable=SC2016  # $$ and $@ are for the inner shell
    CMD_ARRAY=(sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$DAEMON_MEMCG" "${CMD_ARRAY[@]}")
  fi
}

# The harness's proxies (mitmdump on $INET_IP4) share their address with the
# "internet" origin, and the kernel bypasses a proxy's address whole (every
# port), so with the daemon's default every test's traffic would go direct:
# the daemon runs without that bypass unless a test clears this
# (nodetraffic.sh, whose proxy has an address of its own).
DAEMON_BASE_FLAGS=(--no-bypass-proxy-addresses)

daemon_run_args() { # daemon_run_args CONFIGFILE
  printf '%s\n' run --proxy-config "$1" --cgroup "$CG_ROOT" \
    --listen "$NODE_IP4:$LISTEN_PORT" --listen "[$NODE_IP6]:$LISTEN_PORT" \
    --bpffs "$PIN_DIR" --exempt-cgroup "$CG_ROOT/pods/pod-b" --metrics "$METRICS_ADDR" \
    --resolv-conf "$RESOLV_CONF" --handover-dir "$HANDOVER_DIR"
  if ((${#DAEMON_BASE_FLAGS[@]})); then printf '%s\n' "${DAEMON_BASE_FLAGS[@]}"; fi
  if ((${#DAEMON_EXTRA[@]})); then printf '%s\n' "${DAEMON_EXTRA[@]}"; fi
}

start_daemon() { # start_daemon [CONFIGFILE]
  local args CMD_ARRAY
  mapfile -t args < <(daemon_run_args "${1:-$PROXY_CONFIG}")
  daemon_cmd "${args[@]}"
  # Empty the log here, not only by the redirection below: that one runs in
  # the forked child, and until it has, the loop below could find the
  # previous instance's "ready".
  : >"$DAEMON_LOG"
  # a plain command (not a function) in the background: $! is the daemon
  "${CMD_ARRAY[@]}" >"$DAEMON_LOG" 2>&1 9>&- &
  DAEMON_PID=$!
  BG_PIDS+=("$DAEMON_PID")
  DAEMON_CONFIG="${1:-$PROXY_CONFIG} ${DAEMON_EXTRA[*]}"
  local deadline=$(( $(now_ms) + 30000 ))
  while (( $(now_ms) < deadline )); do
    if grep -qw ready "$DAEMON_LOG"; then
      # the pid we will SIGKILL later must be the daemon itself
      grep -qx "$DAEMON_PID" "$CG_ROOT/system/redirector/cgroup.procs" \
        || { die "pid $DAEMON_PID is not the process in system/redirector"; return 1; }
      info "redirector is ready (pid $DAEMON_PID)"
      return 0
    fi
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      die "redirector exited before it was ready (log: $DAEMON_LOG)"
      return 1
    fi
    sleep 0.1
  done
  die "redirector printed no 'ready' within 30 s (log: $DAEMON_LOG)"
  return 1
}

stop_daemon() { # SIGINT: at once, without the drain of SIGTERM; the hooks stay pinned
  [[ -n $DAEMON_PID ]] || return 0
  kill -INT "$DAEMON_PID" 2>/dev/null
  wait "$DAEMON_PID" 2>/dev/null
  DAEMON_PID=""
  DAEMON_CONFIG=""
}

# use_daemon CONFIGFILE [RUN-FLAGS...]: make sure the daemon runs with this
# config and these extra `run` flags, restarting it (a takeover) only if
# needed. The previous instance's log is kept as redirector.log.N.
DAEMON_LOG_GEN=0
use_daemon() {
  local config=$1 rc=0; shift
  DAEMON_EXTRA=("$@")
  if [[ -n $DAEMON_PID && $DAEMON_CONFIG == "$config ${DAEMON_EXTRA[*]}" ]] \
    && kill -0 "$DAEMON_PID" 2>/dev/null; then
    DAEMON_EXTRA=()
    return 0
  fi
  stop_daemon
  if [[ -s $DAEMON_LOG ]]; then
    DAEMON_LOG_GEN=$((DAEMON_LOG_GEN + 1))
    cp "$DAEMON_LOG" "$DAEMON_LOG.$DAEMON_LOG_GEN"
  fi
  start_daemon "$config" || rc=$?
  DAEMON_EXTRA=()
  return "$rc"
}

redirector_status() {
  timeout 10 "$REDIRECTOR_BIN" status --bpffs "$PIN_DIR" --handover-dir "$HANDOVER_DIR"
}

# relay_status: `redirector status --metrics`, asking the daemon in the
# node's netns which path its connections took.
relay_status() {
  in_netns "$NS_NODE" timeout 10 "$REDIRECTOR_BIN" status --bpffs "$PIN_DIR" \
    --handover-dir "$HANDOVER_DIR" --metrics "$METRICS_ADDR"
}

# relay_status_count PATH: connections relayed on PATH ("relay PATH: N connections").
relay_status_count() {
  relay_status 2>/dev/null | awk -v k="relay $1:" '$1 " " $2 == k { print $3; found=1 } END { exit !found }'
}

# status_counter NAME: one number from `redirector status` ("NAME: N").
status_counter() {
  redirector_status 2>/dev/null | awk -F': *' -v k="$1" '$1 == k { print $2; found=1 } END { exit !found }'
}

# Lines in the flow log: count now, and everything after an earlier count.
flow_count() { wc -l <"$FLOW_LOG"; }
flow_since() { tail -n "+$(( $1 + 1 ))" "$FLOW_LOG"; }
origin_count() { wc -l <"$ORIGIN_LOG"; }
origin_since() { tail -n "+$(( $1 + 1 ))" "$ORIGIN_LOG"; }

pins_present() { # anything pinned under the daemon's bpffs dir?
  [[ -n $(find "$PIN_DIR" -mindepth 1 ! -type d 2>/dev/null | head -n 1) ]]
}

# ---------------------------------------------------------------- hostile.sh / soak.sh helpers

# A third pod (not exempt): "another pod" whose connections go through the
# daemon like pod-a's but from another client address (per-pod limits).
# Added to ALL_NS only once made (build_network makes every namespace in
# ALL_NS), so that node_down removes it with the others.
NS_POD_C=rde-pod-c
POD_C_IP4=10.249.5.2
POD_C_MADE=0

pod_c_up() { # idempotent; needs the node up
  ((POD_C_MADE)) && return 0
  # a crashed run's (we hold the lock): its veth went with that run's rde-node
  [[ -e /run/netns/$NS_POD_C ]] && ip netns del "$NS_POD_C"
  ALL_NS+=("$NS_POD_C")
  make_netns "$NS_POD_C" || return 1
  veth_pair "$NS_NODE" rde-pc-n "$NS_POD_C" rde-pc-p || return 1
  addr "$NS_NODE" rde-pc-n 10.249.5.1/24 || return 1
  addr "$NS_POD_C" rde-pc-p "$POD_C_IP4/24" || return 1
  ip -n "$NS_POD_C" route add "$TEST_NET4" via 10.249.5.1 || return 1
  mkdir -p "$CG_ROOT/pods/pod-c" || return 1
  POD_C_MADE=1
}

# pod_bg POD NAME CMD...: CMD as a process of that pod, in the background,
# output in $WORK/NAME.out; its pid in POD_BG_PID (and BG_PIDS).
POD_BG_PID=""
pod_bg() {
  local pod=$1 name=$2 CMD_ARRAY; shift 2
  cg_ns_cmd "$CG_ROOT/pods/$pod" "rde-$pod" "$@"
  "${CMD_ARRAY[@]}" >"$WORK/$name.out" 2>&1 9>&- &
  POD_BG_PID=$!
  BG_PIDS+=("$POD_BG_PID")
}

daemon_rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$DAEMON_PID/status"; }
daemon_fd_count() { find "/proc/$DAEMON_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }
# daemon_fds KIND: the daemon's open fds of one kind (socket, pipe, anon_inode, ...)
daemon_fds() {
  find "/proc/$DAEMON_PID/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' 2>/dev/null \
    | grep -c "^$1:" || true
}

# daemon_rss_watch_start / daemon_rss_watch_stop: the daemon's peak VmRSS
# (KiB) while something runs, sampled every 0.1 s; stop prints it.
RSS_WATCH_PID=""
daemon_rss_watch_start() {
  local file=$WORK/rss-peak pid=$DAEMON_PID
  daemon_rss_kb >"$file"
  (
    local r peak
    peak=$(cat "$file")
    while [[ ! -e $file.stop ]] && kill -0 "$pid" 2>/dev/null; do
      r=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null)
      if [[ -n $r ]] && ((r > peak)); then peak=$r; echo "$peak" >"$file"; fi
      sleep 0.1
    done
  ) 9>&- &
  RSS_WATCH_PID=$!
  BG_PIDS+=("$RSS_WATCH_PID")
}
daemon_rss_watch_stop() {
  touch "$WORK/rss-peak.stop"
  wait "$RSS_WATCH_PID" 2>/dev/null
  rm -f "$WORK/rss-peak.stop"
  RSS_WATCH_PID=""
  cat "$WORK/rss-peak"
}

# daemon_metrics: the /metrics text; metric_value TEXT 'NAME{LABELS}': one
# value, 0 when absent.
daemon_metrics() {
  in_netns "$NS_NODE" curl -q -sS --fail --max-time 5 "http://$METRICS_ADDR/metrics"
}
metric_value() {
  awk -v k="$2" '$1 == k { v = $2 } END { printf "%d\n", v + 0 }' <<<"$1"
}

# map_entries NAME: the entry count `redirector status` shows for a map.
map_entries() {
  redirector_status 2>/dev/null | sed -n "s/^map $1: [^,]*, \([0-9]*\) of [0-9]* entries\$/\1/p"
}

# jget JSON KEY[.KEY...]: one field of a JSON object (lists and objects as JSON).
jget() {
  "$PYTHON" -c '
import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print(json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v))
' "$1" "$2"
}
