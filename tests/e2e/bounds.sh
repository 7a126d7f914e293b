# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh, lib.sh, hostile.sh
# Bounds one pod can break (issue 12, items 7-10), sourced by run.sh after
# lib.sh and hostile.sh (pod-c, the steady client, the metrics helpers).
# The peers come from bounds.py:
#
#   TLS proxy   rde-inet 10.249.0.2:8091, an https:// proxy (a certificate
#               for 10.249.0.2 from the test CA, trusted through trustedCA
#               like mitmproxy's); CONNECT to port 9
#               is answered and then flooded, never read; other test
#               addresses are tunnelled
#
# Every test restores the standard daemon at its end, pass or fail.

PYB=("$PYTHON" "$E2E_DIR/bounds.py")
TLS_PROXY_PORT=8091
TLS_PROXY_LOG=$WORK/tlsproxy.log
TLS_PROXY_PID=""
FLOOD_PORT=9
BOUNDS_TLS_CONFIG=$WORK/bounds-tls-config.json
# The daemon's memory limit in bounds_memory: small, so that the node at its
# cap would exceed it with the old relay's buffers and autotuned socket
# buffers (about 1.3 MiB a stalled tunnel).
BOUNDS_MEM_LIMIT=$((256 << 20))
MEMCG_KIND=""  # v1 (DAEMON_MEMCG, joined by the daemon) or v2 (its own cgroup)

# ---------------------------------------------------------------- peers

# tls_proxy_cert: a leaf certificate for the TLS proxy's address, from the
# test CA of this run (webpki refuses a self-signed CA certificate as a
# server's).
tls_proxy_cert() {
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$WORK/tlsproxy-key.pem" -out "$WORK/tlsproxy.csr" -subj /CN=tlsproxy.test >/dev/null 2>&1 \
    && printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\n' "$INET_IP4" >"$WORK/tlsproxy.ext" \
    && openssl x509 -req -in "$WORK/tlsproxy.csr" -CA "$CA_CERT" -CAkey "$CA_DIR/mitmproxy-ca-key.pem" \
      -CAcreateserial -days 2 -extfile "$WORK/tlsproxy.ext" -out "$WORK/tlsproxy-cert.pem" >/dev/null 2>&1 \
    || why "could not make the TLS proxy's certificate"
}

tls_proxy_up() { # idempotent
  if [[ -n $TLS_PROXY_PID ]] && kill -0 "$TLS_PROXY_PID" 2>/dev/null; then return 0; fi
  tls_proxy_cert || return 1
  touch "$TLS_PROXY_LOG"
  bg tlsproxy nsenter --net="/run/netns/$NS_INET" -- "${PYB[@]}" tls-proxy \
    --listen "$INET_IP4:$TLS_PROXY_PORT" --cert "$WORK/tlsproxy-cert.pem" --key "$WORK/tlsproxy-key.pem" \
    --log "$TLS_PROXY_LOG" --flood-port "$FLOOD_PORT"
  TLS_PROXY_PID=${BG_PIDS[-1]}
  wait_for 10 "TLS proxy on $INET_IP4:$TLS_PROXY_PORT" port_listening "$NS_INET" "$TLS_PROXY_PORT" \
    || why "TLS proxy did not start:" "$(tail -n 5 "$WORK/tlsproxy.out")"
}

# ---------------------------------------------------------------- memory cgroup

# memcg_limit BYTES: the next daemon runs under a memory limit of BYTES: a
# cgroup v1 memory cgroup under our own (hybrid hosts, like the CI machine),
# or else memory.max on its cgroup v2 directory.
memcg_limit() {
  local v1 own
  v1=$(awk '$3 == "cgroup" && $4 ~ /(^|,)memory(,|$)/ { print $2; exit }' /proc/mounts)
  if [[ -n $v1 ]]; then
    own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3; exit }' /proc/self/cgroup)
    DAEMON_MEMCG=$v1${own%/}/rde-bounds
    mkdir -p "$DAEMON_MEMCG" || return 1
    echo "$1" >"$DAEMON_MEMCG/memory.limit_in_bytes" || return 1
    # v1 charges socket buffers only when asked (v2 always does, to the
    # same limit): a limit switches the counting on; counted apart here
    # (memory.kmem.tcp.*), with a limit no test reaches.
    echo $((64 << 30)) >"$DAEMON_MEMCG/memory.kmem.tcp.limit_in_bytes" || return 1
    MEMCG_KIND=v1
  elif grep -qw memory "$CG2/cgroup.controllers"; then
    echo +memory >"$CG_ROOT/cgroup.subtree_control" || return 1
    echo +memory >"$CG_ROOT/system/cgroup.subtree_control" || return 1
    echo "$1" >"$CG_ROOT/system/redirector/memory.max" || return 1
    MEMCG_KIND=v2
  else
    why "no memory controller (cgroup v1 or v2) to limit the daemon with"
  fi
}
# memcg_unlimit: back to no limit (after the daemon in it stopped).
memcg_unlimit() {
  case $MEMCG_KIND in
    v1) rmdir "$DAEMON_MEMCG" 2>/dev/null; DAEMON_MEMCG="" ;;
    v2) echo max >"$CG_ROOT/system/redirector/memory.max" ;;
  esac
  MEMCG_KIND=""
}
# memcg_stat KEY: usage, peak (bytes), limit_hits (times usage reached the limit),
# oom_kills; socket (the kernel's socket buffers now, bytes), socket_peak (v1
# only: v2 keeps no peak of them). v1's usage leaves the socket buffers out,
# v2's includes them.
memcg_stat() {
  case $MEMCG_KIND:$1 in
    v1:usage) cat "$DAEMON_MEMCG/memory.usage_in_bytes" ;;
    v1:peak) cat "$DAEMON_MEMCG/memory.max_usage_in_bytes" ;;
    v1:limit_hits) cat "$DAEMON_MEMCG/memory.failcnt" ;;
    v1:oom_kills) awk '$1 == "oom_kill" { print $2 }' "$DAEMON_MEMCG/memory.oom_control" ;;
    v1:socket) cat "$DAEMON_MEMCG/memory.kmem.tcp.usage_in_bytes" ;;
    v1:socket_peak) cat "$DAEMON_MEMCG/memory.kmem.tcp.max_usage_in_bytes" ;;
    v2:usage) cat "$CG_ROOT/system/redirector/memory.current" ;;
    v2:peak) cat "$CG_ROOT/system/redirector/memory.peak" ;;
    v2:limit_hits) awk '$1 == "max" { print $2 }' "$CG_ROOT/system/redirector/memory.events" ;;
    v2:oom_kills) awk '$1 == "oom_kill" { print $2 }' "$CG_ROOT/system/redirector/memory.events" ;;
    v2:socket) awk '$1 == "sock" { print $2 }' "$CG_ROOT/system/redirector/memory.stat" ;;
  esac
}

# ---------------------------------------------------------------- item 7

# bounds_test BODY: run BODY, then the standard daemon (no memory limit,
# standard flags) again, whatever BODY returned.
bounds_test() {
  local rc=0 n0 pid left=()
  n0=${#BG_PIDS[@]}
  "$1" || rc=$?
  if [[ -n $STEADY_PID ]]; then
    touch "$WORK/$STEADY_NAME.stop"
    wait "$STEADY_PID" 2>/dev/null
    STEADY_PID=""
  fi
  for pid in "${BG_PIDS[@]:n0}"; do
    [[ $pid == "$TLS_PROXY_PID" || $pid == "$DAEMON_PID" ]] && continue
    [[ $(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ') == "$$" ]] && left+=("$pid")
  done
  if ((${#left[@]})); then kill_pids "${left[@]}"; fi
  # A restart, always: a test may have changed what use_daemon does not
  # compare (the memory limit, the metrics address).
  stop_daemon
  if [[ -n $MEMCG_KIND ]]; then memcg_unlimit; fi
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}

# flood_json NAME: a finished flood client's JSON.
flood_json() { tail -n 1 "$WORK/$1.out"; }

# caps_field NAME: one field of the daemon's 'connection caps' line.
caps_field() { grep -m1 'connection caps' "$DAEMON_LOG" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# One pod at its cap on the TLS-proxy path, every tunnel stalled both ways
# (the client and the proxy send and never read), keeps the daemon under a
# 256 MiB memory limit while another pod keeps working; then a second pod
# takes the node to its cap, derived from that limit, and what is beyond is
# refused and counted. The daemon is never OOM-killed and never even
# reaches its limit; the kernel's socket buffers of every tunnel stay within
# what the cap counts for them (cgroup v1 counts them apart when asked, v2
# within the limit); every tunnel closes once its client is gone.
b_memory() {
  local cost_idle cost_user cost_max cost_sock keepalive bound m global per_pod n_a n_c out before after pid
  local d_pod d_global peak hits ooms active sock sock_peak per_sock idle_s intvl_s count ready=$WORK/flood-a.ready
  pod_c_up || why "pod-c could not be set up" || return 1
  tls_proxy_up || return 1
  write_config "$BOUNDS_TLS_CONFIG" "http://$INET_IP4:$PROXY_PORT/" "https://$INET_IP4:$TLS_PROXY_PORT/" \
    "$POLICY_NOPROXY"
  memcg_limit "$BOUNDS_MEM_LIMIT" || return 1
  stop_daemon
  use_daemon "$BOUNDS_TLS_CONFIG" \
    || why "daemon under a $((BOUNDS_MEM_LIMIT >> 20)) MiB limit did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  pid=$DAEMON_PID
  info "  $(grep -m1 'connection caps' "$DAEMON_LOG" | sed 's/.*INFO //')"
  m=$(daemon_metrics) || why "no /metrics" || return 1
  global=$(metric_value "$m" 'redirector_connection_limit{cap="global"}')
  per_pod=$(metric_value "$m" 'redirector_connection_limit{cap="pod"}')
  grep -m1 'connection caps' "$DAEMON_LOG" | grep -q "memory_bound=Some($global)" \
    || why "the node cap $global is not the one the memory limit allows:" "$(grep -m1 'connection caps' "$DAEMON_LOG")" || return 1
  grep -m1 'connection caps' "$DAEMON_LOG" | grep -Eq 'memory_limit=[0-9]+ MiB \(/sys/fs/cgroup/.*(rde-bounds/memory.limit_in_bytes|redirector/memory.max)\)' \
    || why "the limit was not found in the daemon's cgroup:" "$(grep -m1 'connection caps' "$DAEMON_LOG")" || return 1
  ((global > 100 && per_pod == (global + 1) / 2)) || why "caps: global $global, per pod $per_pod" || return 1
  # What the cap assumes a connection costs: idle and at most in userspace,
  # its socket buffers at most, and in all; and the keepalive.
  cost_idle=$(caps_field per_connection_idle_bytes) cost_user=$(caps_field per_connection_userspace_bytes)
  cost_sock=$(caps_field per_connection_socket_bytes) cost_max=$(caps_field per_connection_max_bytes)
  keepalive=$(caps_field keepalive)
  [[ -n $cost_idle && -n $cost_user && -n $cost_sock && -n $cost_max && -n $keepalive ]] \
    || why "no per-connection costs or keepalive in the 'connection caps' line" || return 1
  ((cost_max == cost_user + cost_sock)) || why "per-connection max $cost_max != $cost_user + $cost_sock" || return 1
  IFS=, read -r idle_s intvl_s count <<<"$keepalive"
  bound=$((idle_s + intvl_s * count))

  # 0. What an idle tunnel costs: $idle silent connections held, all of
  #    pod-a's places (each is tunnelled by IP to the echo port after the
  #    peek timeout).
  local idle=$per_pod u0 u1 per_idle per_stalled l0
  u0=$(memcg_stat usage); l0=$(wc -l <"$TLS_PROXY_LOG")
  rm -f "$ready"
  pod_bg pod-a idle "${PYH[@]}" conns "$INET_IP4" 7007 --count "$idle" --hold 6 --ready "$ready"
  local idle_pid=$POD_BG_PID
  wait_for 10 "$idle idle connections" test -s "$ready" || return 1
  # shellcheck disable=SC2016
  wait_for 10 "$idle idle tunnels" eval '(( $(tail -n "+$((l0 + 1))" "$TLS_PROXY_LOG" | grep -c "^CONNECT $INET_IP4:7007 ") >= idle ))' || return 1
  sleep 1
  u1=$(memcg_stat usage)
  per_idle=$(( (u1 - u0) / idle ))
  wait "$idle_pid"
  info "  an idle TLS tunnel: $per_idle bytes in the memory cgroup ($idle held: $(( (u1 - u0) >> 20 )) MiB; the cap assumes $cost_idle)"
  ((per_idle <= cost_idle)) || why "an idle tunnel costs $per_idle bytes, more than the $cost_idle the cap assumes" || return 1
  # shellcheck disable=SC2016
  wait_for 10 "back to idle" eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) == 0 ))' || return 1
  rm -f "$ready"
  u0=$(memcg_stat usage)

  # 1. pod-a at its cap (and 100 beyond it, refused), all stalled both ways;
  #    pod-c works meanwhile.
  out=$(pod_curl pod-c -k "https://$INET_IP4/bounds-before" 2>&1) || why "pod-c before the flood: $out" || return 1
  before=$(daemon_metrics)
  n_a=$((per_pod + 100))
  rm -f "$ready"
  pod_bg pod-a flood-a "${PYB[@]}" flood "$INET_IP4" "$FLOOD_PORT" --count "$n_a" --seconds 40 --ready "$ready"
  local flood_a=$POD_BG_PID
  wait_for 15 "pod-a's $n_a connections made" test -s "$ready" || return 1
  # shellcheck disable=SC2016  # expanded by eval, at each try
  wait_for 15 "pod-a's $per_pod tunnels open" \
    eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) >= per_pod ))' \
    || why "active: $(metric_value "$(daemon_metrics)" redirector_active_connections)" || return 1
  sleep 5  # every buffer on the way fills
  # (Only now: the test's proxy, in Python, is slow while hundreds of
  # floods start through it; the daemon is not what pod-c would wait for.)
  steady_start pod-c steady-bounds
  out=$(pod_curl pod-c -k "https://$INET_IP4/bounds-during" 2>&1) || why "pod-c during pod-a's flood: $out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/bounds-during" "pod-c through the TLS proxy" || return 1
  sleep 2
  steady_check steady-bounds "pod-c during pod-a's flood" || return 1
  u1=$(memcg_stat usage)
  per_stalled=$(( (u1 - u0) / per_pod ))
  info "  a stalled TLS tunnel: $((per_stalled / 1024)) KiB in the memory cgroup ($per_pod at pod-a's cap: $(( (u1 - u0) >> 20 )) MiB; peak so far $(( $(memcg_stat peak) >> 20 )) MiB)"
  # v1's usage leaves the socket buffers out: userspace (and the sockets'
  # kernel objects) alone; v2's has them.
  local cost_usage=$cost_max
  [[ $MEMCG_KIND == v1 ]] && cost_usage=$cost_user
  ((per_stalled <= cost_usage)) || why "a stalled tunnel costs $per_stalled bytes, more than the $cost_usage the cap assumes" || return 1

  # 2. pod-c floods too: the node reaches its cap; beyond it, refused.
  n_c=$((per_pod + 100))
  pod_bg pod-c flood-c "${PYB[@]}" flood "$INET_IP4" "$FLOOD_PORT" --count "$n_c" --seconds 25
  local flood_c=$POD_BG_PID
  # shellcheck disable=SC2016
  wait_for 20 "the node cap ($global) reached" \
    eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) >= global ))' \
    || why "active: $(metric_value "$(daemon_metrics)" redirector_active_connections) of $global" || return 1
  sleep 8
  active=$(metric_value "$(daemon_metrics)" redirector_active_connections)
  # Every tunnel stalled both ways: each of its four socket queues full.
  sock=$(memcg_stat socket)
  per_sock=$((sock / (active > 0 ? active : 1)))
  info "  socket buffers at the node cap: $((sock >> 10)) KiB, $((per_sock >> 10)) KiB per tunnel; the cap counts $((cost_sock >> 10)) KiB"
  ((per_sock <= cost_sock)) \
    || why "a stalled tunnel's socket buffers take $per_sock bytes, more than the $cost_sock the cap counts" || return 1
  wait "$flood_c"; wait "$flood_a"
  after=$(daemon_metrics)
  peak=$(memcg_stat peak); hits=$(memcg_stat limit_hits); ooms=$(memcg_stat oom_kills)
  info "  pod-a: $(flood_json flood-a)"
  info "  pod-c: $(flood_json flood-c)"
  info "  node cap $global reached ($active active); memory peak $((peak >> 20)) MiB of $((BOUNDS_MEM_LIMIT >> 20)) MiB, limit reached $hits times, OOM kills $ooms"
  if [[ $MEMCG_KIND == v1 ]]; then
    # Never, at any moment of the test, more than the cap counts for them.
    sock_peak=$(memcg_stat socket_peak)
    info "  socket buffers, counted apart by cgroup v1: peak $((sock_peak >> 10)) KiB of the $(( (global * cost_sock) >> 10 )) KiB the cap counts"
    ((sock_peak <= global * cost_sock)) \
      || why "socket buffers peaked at $sock_peak bytes, more than $global x $cost_sock" || return 1
  fi
  [[ $DAEMON_PID == "$pid" ]] && kill -0 "$pid" 2>/dev/null || why "the daemon died (OOM?)" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  ((ooms == 0)) || why "$ooms OOM kills in the daemon's cgroup" || return 1
  ((hits == 0)) || why "the daemon's memory reached its limit $hits times (peak $peak)" || return 1
  ((active == global)) || why "active at the peak: $active, expected the node cap $global" || return 1
  [[ $(jget "$(flood_json flood-a)" stalled) == "$per_pod" ]] \
    || why "pod-a: expected $per_pod tunnels open and stalled:" "$(flood_json flood-a)" || return 1
  d_pod=$(( $(metric_value "$after" 'redirector_connections_refused_total{reason="pod_limit"}') \
    - $(metric_value "$before" 'redirector_connections_refused_total{reason="pod_limit"}') ))
  d_global=$(( $(metric_value "$after" 'redirector_connections_refused_total{reason="global_limit"}') \
    - $(metric_value "$before" 'redirector_connections_refused_total{reason="global_limit"}') ))
  info "  refused: pod_limit +$d_pod, global_limit +$d_global"
  ((d_pod == 100)) || why "pod_limit refusals +$d_pod, expected 100 (pod-a beyond its cap)" || return 1
  ((d_global == n_c - (global - per_pod))) \
    || why "global_limit refusals +$d_global, expected $((n_c - (global - per_pod))) (pod-c beyond the node cap)" || return 1
  (( $(jget "$(flood_json flood-a)" reset) + $(jget "$(flood_json flood-c)" reset) == d_pod + d_global )) \
    || why "the clients saw $(( $(jget "$(flood_json flood-a)" reset) + $(jget "$(flood_json flood-c)" reset) )) resets" || return 1
  # The clients are gone: every tunnel closes, at the latest when keepalive
  # (idle) or the user timeout (data waiting) finds its client gone. (Before
  # keepalive, 2-3 of 853 stayed open in full runs: a lost reset.)
  local left t0
  t0=$(now_ms)
  # shellcheck disable=SC2016
  wait_for $((bound + 5)) "back to idle" eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) == 0 ))' || true
  left=$(metric_value "$(daemon_metrics)" redirector_active_connections)
  info "  all tunnels closed $(( ($(now_ms) - t0) / 1000 )) s after the clients were gone (keepalive $keepalive: at most $bound s)"
  ((left == 0)) || why "still active $bound s after the clients were gone: $left of $global" \
    "(the daemon's sockets by state: $(in_netns "$NS_NODE" ss -tan | awk 'NR > 1 { n[$1]++ } END { for (s in n) printf "%s=%d ", s, n[s] }'))" || return 1
  out=$(pod_curl pod-c -k "https://$INET_IP4/bounds-after" 2>&1) || why "pod-c after the floods: $out" || return 1
}
t_bounds_memory() { bounds_test b_memory; }

# ---------------------------------------------------------------- vanished clients

# pod-v: a pod made to vanish: deleted with its network namespace, so that
# nothing (no FIN, no reset) ever reaches the daemon from its sockets.
NS_POD_V=rde-pod-v
POD_V_LINK=rde-pv-n
pod_v_up() {
  pod_v_down
  ALL_NS+=("$NS_POD_V")
  make_netns "$NS_POD_V" || return 1
  veth_pair "$NS_NODE" "$POD_V_LINK" "$NS_POD_V" rde-pv-p || return 1
  addr "$NS_NODE" "$POD_V_LINK" 10.249.6.1/24 || return 1
  addr "$NS_POD_V" rde-pv-p 10.249.6.2/24 || return 1
  ip -n "$NS_POD_V" route add "$TEST_NET4" via 10.249.6.1 || return 1
  mkdir -p "$CG_ROOT/pods/pod-v"
}
# pod_v_vanish: the link first (the pod's end goes with it), then its
# processes, whose closing sockets now reach nobody, then the namespace.
pod_v_vanish() {
  ip -n "$NS_NODE" link del "$POD_V_LINK" 2>/dev/null
  local pids=()
  if [[ -f $CG_ROOT/pods/pod-v/cgroup.procs ]]; then mapfile -t pids <"$CG_ROOT/pods/pod-v/cgroup.procs"; fi
  if ((${#pids[@]})); then kill -KILL "${pids[@]}" 2>/dev/null; fi
  ip netns del "$NS_POD_V" 2>/dev/null
  return 0
}
pod_v_down() { # idempotent
  pod_v_vanish
  local i
  for i in 1 2 3 4 5; do
    [[ -d $CG_ROOT/pods/pod-v ]] || break
    rmdir "$CG_ROOT/pods/pod-v" 2>/dev/null || sleep 0.2
  done
}

# vanish_round LABEL CONFIG TARGET-DESC CMD...: the daemon with CONFIG and a
# short keepalive; pod-v opens 20 idle tunnels (echo port, silent) and 20
# that carry data without pause (CMD), then vanishes mid-tunnel. Every
# tunnel must close within the keepalive's bound: the idle ones by
# keepalive, the busy ones by the user timeout (their data is never
# acknowledged).
VANISH_KEEPALIVE=2,1,2 VANISH_BOUND=4
vanish_round() {
  local label=$1 config=$2 ready=$WORK/vanish-idle.ready t0 ms active
  shift 2
  use_daemon "$config" --keepalive "$VANISH_KEEPALIVE" \
    || why "daemon with --keepalive $VANISH_KEEPALIVE did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  pod_v_up || why "pod-v could not be set up" || return 1
  rm -f "$ready"
  pod_bg pod-v "vanish-idle-$label" "${PYH[@]}" conns "$INET_IP4" 7007 --count 20 --hold 120 --ready "$ready"
  pod_bg pod-v "vanish-busy-$label" "$@"
  wait_for 10 "pod-v's idle connections" test -s "$ready" || return 1
  # shellcheck disable=SC2016
  wait_for 15 "pod-v's 40 tunnels open" \
    eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) >= 40 ))' \
    || why "active: $(metric_value "$(daemon_metrics)" redirector_active_connections)" || return 1
  # Past the keepalive's idle time: the idle tunnels have answered probes.
  sleep 3
  active=$(metric_value "$(daemon_metrics)" redirector_active_connections)
  ((active == 40)) || why "$label: $active tunnels before pod-v vanished, expected 40 (keepalive closed live ones?)" || return 1
  t0=$(now_ms)
  pod_v_vanish
  # shellcheck disable=SC2016
  wait_for $((VANISH_BOUND + 10)) "every tunnel of pod-v closed" \
    eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) == 0 ))' || true
  ms=$(( $(now_ms) - t0 ))
  active=$(metric_value "$(daemon_metrics)" redirector_active_connections)
  info "  $label: pod-v's 40 tunnels closed $ms ms after it vanished ($active left; bound $VANISH_BOUND s)"
  ((active == 0)) || why "$label: $active of pod-v's tunnels still open $((ms / 1000)) s after it vanished" || return 1
  within_ms "$ms" $(( (VANISH_BOUND + 2) * 1000 )) "$label: closing the vanished pod's tunnels" || return 1
  pod_v_down
}

# A pod deleted with its network namespace mid-tunnel: its tunnels, idle and
# carrying data, through both relays (TLS to an https:// proxy; splice
# through a plain one), are closed within the keepalive's bound
# (--keepalive 2,1,2: 4 s), and the connection gauge drops to zero.
b_vanished() {
  local rc=0
  tls_proxy_up || return 1
  write_config "$BOUNDS_TLS_CONFIG" "http://$INET_IP4:$PROXY_PORT/" "https://$INET_IP4:$TLS_PROXY_PORT/" \
    "$POLICY_NOPROXY"
  # A download without pause: the TLS proxy floods port 9, the client reads.
  vanish_round tls "$BOUNDS_TLS_CONFIG" "${PYH[@]}" conns "$INET_IP4" "$FLOOD_PORT" --count 20 --hold 120 || rc=1
  # Both ways without pause: the echo port, the client writes and reads.
  ((rc)) || vanish_round splice "$PROXY_CONFIG" "${PYB[@]}" flood "$INET_IP4" 7007 --count 20 --seconds 120 --read || rc=1
  pod_v_down
  return "$rc"
}
t_bounds_vanished() { bounds_test b_vanished; }

# ---------------------------------------------------------------- item 8

# A slowloris on the metrics port from a pod (pod-b, not redirected: it
# reaches the node's address directly): connections beyond its share are
# closed at accept and counted, the others at the 2 s header timeout; the
# kubelet's probe from the node is answered within a second all along, and
# the data path works.
b_metrics() {
  local addr=$NODE_IP4:9465 out before after i t0 ms d slow_pid
  stop_daemon
  METRICS_ADDR=$addr use_daemon "$PROXY_CONFIG" || why "daemon with --metrics $addr did not start" || return 1
  before=$(METRICS_ADDR=$addr daemon_metrics) || why "no /metrics on $addr" || return 1
  pod_bg pod-b slow-metrics "${PYH[@]}" slow "$NODE_IP4" 9465 --count 40 --seconds 8 \
    --prefix 'GET /healthz HTTP/1.1\r\n' --drip 'X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'
  slow_pid=$POD_BG_PID
  sleep 0.5
  for i in 1 2 3 4 5 6; do
    t0=$(now_ms)
    out=$(in_netns "$NS_NODE" curl -q -sS --max-time 1 "http://$addr/healthz" 2>&1) \
      || why "probe $i during the slowloris failed:" "$out" || return 1
    ms=$(( $(now_ms) - t0 ))
    [[ $out == ok ]] || why "probe $i: '$out'" || return 1
    within_ms "$ms" 1000 "probe $i during the slowloris" || return 1
    sleep 0.5
  done
  out=$(probe pod-a tcp-echo "$INET_IP4" 7007 2>&1) || why "the data path during the slowloris: $out" || return 1
  wait "$slow_pid"
  out=$(hostile_json slow-metrics)
  info "  slowloris: $out"
  after=$(METRICS_ADDR=$addr daemon_metrics)
  d=$(( $(metric_value "$after" redirector_metrics_connections_refused_total) \
    - $(metric_value "$before" redirector_metrics_connections_refused_total) ))
  info "  metrics connections refused: +$d"
  ((d == 32)) || why "refused at accept: +$d, expected 32 (40 from one address, 8 allowed)" || return 1
  [[ $(jget "$out" open) == 0 ]] || why "slow heads still open after 8 s (no header timeout):" "$out" || return 1
  p_le "$out" end_ms.max 4000 || why "slow heads closed later than 4 s (header timeout 2 s):" "$out" || return 1
  p_le "$out" end_ms.p50 1000 || why "the connections beyond the cap were not closed at once:" "$out" || return 1
}
t_bounds_metrics() { bounds_test b_metrics; }

# ---------------------------------------------------------------- item 9

# 2,000 connections to the listener that our hook did not redirect (from
# pod-b, exempt): each is refused and counted, but the log gets at most ten
# lines for them and one that says how many more were suppressed; the lines
# and the suppressed count add up to 2,000.
b_log_flood() {
  local n=2000 log0 before after lines suppressed d out
  use_daemon "$PROXY_CONFIG" || return 1
  sleep 11  # a fresh rate-limit window for the kind
  log0=$(wc -l <"$DAEMON_LOG")
  before=$(daemon_metrics)
  out=$(in_pod pod-b "${PYH[@]}" conns "$NODE_IP4" "$LISTEN_PORT" --count "$n" --hold 3)
  info "  clients: $out"
  # shellcheck disable=SC2016
  wait_for 15 "the suppressed count in the log" \
    eval 'tail -n "+$((log0 + 1))" "$DAEMON_LOG" | grep -q "suppressed [0-9]* similar log lines (no_original_destination)"' \
    || why "no suppressed line:" "$(tail -n 3 "$DAEMON_LOG")" || return 1
  after=$(daemon_metrics)
  d=$(( $(metric_value "$after" 'redirector_connection_outcomes_total{outcome="no_original_destination"}') \
    - $(metric_value "$before" 'redirector_connection_outcomes_total{outcome="no_original_destination"}') ))
  lines=$(tail -n "+$((log0 + 1))" "$DAEMON_LOG" | grep -c "no original destination" || true)
  suppressed=$(tail -n "+$((log0 + 1))" "$DAEMON_LOG" \
    | sed -n 's/.*suppressed \([0-9]*\) similar log lines (no_original_destination).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
  info "  $d refused (counted); log: $lines lines, $suppressed suppressed"
  ((d == n)) || why "no_original_destination +$d, expected $n" || return 1
  ((lines >= 1 && lines <= 10)) || why "$lines 'no original destination' lines, expected 1 to 10" || return 1
  ((lines + suppressed == n)) || why "$lines lines + $suppressed suppressed != $n" || return 1
}
t_bounds_log_flood() { bounds_test b_log_flood; }

# ---------------------------------------------------------------- item 10

# A connection reset at accept over the per-pod cap leaves no entry in
# DST_BY_CLIENT, and a later connection from the same source port (bound
# explicitly) is served with its own destination. (A stale entry would be
# served to it, or, since the kernel refuses a second claim of a key, make
# it a refused conflict.) The kernel also removes an entry when the socket
# that saved it closes; so that the check is the daemon's alone, pod-a
# drops the daemon's reset meanwhile: its socket stays open.
b_refused_entry() {
  local port=$((20000 + RANDOM % 10000)) ready=$WORK/hold.ready out n rst_rule
  use_daemon "$PROXY_CONFIG" --max-connections-per-pod 2 \
    || why "daemon with --max-connections-per-pod 2 did not start" || return 1
  rm -f "$ready"
  pod_bg pod-a hold "${PYH[@]}" conns "$INET_IP4" 7007 --count 2 --hold 6 --ready "$ready"
  local hold_pid=$POD_BG_PID
  wait_for 5 "two connections held" test -s "$ready" || return 1
  # shellcheck disable=SC2016
  wait_for 5 "both admitted" eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) == 2 ))' || return 1
  rst_rule=(INPUT -s "$NODE_IP4" -p tcp --sport "$LISTEN_PORT" --dport "$port" --tcp-flags RST RST -j DROP)
  in_netns "$NS_POD_A" iptables -I "${rst_rule[@]}" || why "cannot add the iptables rule in pod-a" || return 1
  pod_bg pod-a refused "${PYB[@]}" bound-connect "$INET_IP4" 7007 --source-port "$port" --send 'refused?' --expect 'refused?'
  local refused_pid=$POD_BG_PID
  sleep 1
  n=$(jget "$("${PYH[@]}" map-entries --pid "$DAEMON_PID")" DST_BY_CLIENT.entries)
  # before the client closes (at its 3 s timeout), so that the node's reset
  # to its FIN ends it
  in_netns "$NS_POD_A" iptables -D "${rst_rule[@]}"
  wait "$refused_pid"
  info "  third connection from port $port (to the echo port): $(tail -n 1 "$WORK/refused.out")"
  info "  DST_BY_CLIENT entries after the refusal, the client's socket still open: $n"
  [[ $n == 0 ]] || why "the refused connection's entry is left in DST_BY_CLIENT ($n entries)" || return 1
  [[ $(jget "$(tail -n 1 "$WORK/refused.out")" outcome) != answered ]] \
    || why "over the cap, the connection was served:" "$(tail -n 1 "$WORK/refused.out")" || return 1
  wait "$hold_pid"
  # shellcheck disable=SC2016
  wait_for 5 "the held ones closed" eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) == 0 ))' || return 1
  out=$(in_pod pod-a "${PYB[@]}" bound-connect "$INET_IP4" "$BANNER_PORT" --source-port "$port" --expect '220 origin banner')
  info "  later connection from port $port (to the banner port): $out"
  [[ $(jget "$out" outcome) == answered ]] \
    || why "the same source port, later, to another destination: not served with its own:" "$out" || return 1
  expect_contains "$(jget "$out" reply)" "220 origin banner client=$INET_IP4" "the banner, through the proxy" || return 1
}
t_bounds_refused_entry() { bounds_test b_refused_entry; }

BOUNDS_TESTS=(bounds_memory:t_bounds_memory bounds_vanished:t_bounds_vanished bounds_metrics:t_bounds_metrics
  bounds_log_flood:t_bounds_log_flood bounds_refused_entry:t_bounds_refused_entry)
