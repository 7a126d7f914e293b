# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh and lib.sh
# Escapes end-to-end tests (issue 12, "close the escapes"), sourced by
# run.sh after lib.sh; uses run.sh's why/expect_* helpers and security.sh's
# sec_fresh_daemon.
#
#   esc_local_unspecified  connects to 0.0.0.0, ::, ::ffff:0.0.0.0 (and
#                          127.0.0.1, ::1) reach the pod's own loopback,
#                          never the node's nor the proxy's (skipped_local)
#   esc_udp_held_port      UDP to the held-back port 443 is refused with
#                          EPERM (sendto and connect; IPv4, IPv6, v4-mapped)
#                          in redirected pods only (refused_udp)
#   esc_mptcp              an MPTCP socket is redirected like TCP
#   esc_forged_key         a second socket claiming another pod's client
#                          (address, port) makes a conflict: the victim's
#                          connection is refused, never sent where the
#                          attacker asked (key_conflict)
#   esc_forged_key_evicted the same after flooding the original-destination
#                          map: an evicted entry must not let the attacker's
#                          claim through
#   esc_key_freed_on_close a socket that closes before being established
#                          frees its key: the next connect from the same
#                          port is served
#   esc_key_freed_after_refusal
#                          the same for a connection the daemon refused at
#                          its per-pod cap without taking the key
#
# SCTP (refused at socket() by cgroup/sock_create) has no test: this
# kernel is built without it (CONFIG_IP_SCTP unset, no modules), so
# socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT
# whether hooked or not, and there is no other stream protocol (SMC is
# not built either) to be refused.
#
# Every test runs its body through esc_test, which undoes what the body
# set up whatever it returned: the daemon SIGCONTed, helper processes
# killed (by id), neighbour entries restored, the attacker pod removed and
# the standard daemon running.

ESC_PIDS=()     # processes of the current test, killed by id at its end
ESC_STOPPED=0   # the daemon is SIGSTOPped
ESC_NEIGH=()    # "NS DEV ADDR" of neighbour entries to delete at the end
ESC_POD_X=0     # the attacker pod exists

# The attacker: a redirected pod (not exempt) with IPv4 and IPv6, made by
# the tests that need it and removed after them.
NS_POD_X=rde-pod-x
POD_X_IP4=10.249.7.2
POD_X_IP6=fd42:e9e5:7::2
POD_X_FAKE6=fd42:e9e5:7::99   # on pod-x's subnet, owned by nobody

# Fixed client ports (241xx) lie below the pods' ephemeral range (32768-
# 60999), so that no connection of another test can hold one.

# Origins of the forged-key tests, in rde-inet: each logs who sent what.
ESC_D1_PORT=7042  # where the victim connects
ESC_D2_PORT=7043  # where the attacker asks the victim's bytes to go

# ---------------------------------------------------------------- helpers

esc_test() { # esc_test BODY
  local rc=0 pid mine=() n
  "$1" || rc=$?
  if ((ESC_STOPPED)); then
    kill -CONT "$DAEMON_PID" 2>/dev/null
    ESC_STOPPED=0
  fi
  for n in "${ESC_NEIGH[@]}"; do
    # shellcheck disable=SC2086  # three words
    set -- $n
    ip -n "$1" neigh del "$3" dev "$2" 2>/dev/null
  done
  ESC_NEIGH=()
  for pid in "${ESC_PIDS[@]}"; do
    [[ $(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ') == "$$" ]] && mine+=("$pid")
  done
  if ((${#mine[@]})); then kill_pids "${mine[@]}"; fi
  for pid in "${mine[@]}"; do wait "$pid" 2>/dev/null; done
  ESC_PIDS=()
  ((ESC_POD_X)) && esc_pod_x_down
  if ! use_daemon "$PROXY_CONFIG" >/dev/null 2>&1; then
    why "the standard daemon did not start again:" "$(tail -n 5 "$DAEMON_LOG")"
    rc=1
  fi
  return "$rc"
}

# esc_listen NS NAME HOST PORT [listen-args...]: a netprobe recorder in NS
# (outside our cgroups), its log in $WORK/NAME.log.
esc_listen() {
  local ns=$1 name=$2 host=$3 port=$4; shift 4
  : >"$WORK/$name.log"
  bg "$name" nsenter --net="/run/netns/$ns" -- "$PYTHON" "$E2E_DIR/netprobe.py" listen \
    "$host" "$port" --log "$WORK/$name.log" "$@"
  ESC_PIDS+=("${BG_PIDS[-1]}")
  wait_for 5 "$name on [$host]:$port in $ns" grep -qx listening "$WORK/$name.out" \
    || why "$name did not start:" "$(tail -n 5 "$WORK/$name.out")"
}

# esc_pod_bg POD NAME NETPROBE-ARGS...: netprobe as a process of that pod,
# in the background; its pid in ESC_BG_PID, its output in $WORK/NAME.out.
ESC_BG_PID=""
esc_pod_bg() {
  local pod=$1 name=$2; shift 2
  pod_bg "$pod" "$name" "$PYTHON" "$E2E_DIR/netprobe.py" "$@"
  ESC_BG_PID=$POD_BG_PID
  ESC_PIDS+=("$ESC_BG_PID")
}

# A counter of `redirector status`, or "absent" (an older daemon has fewer).
esc_counter() { status_counter "$1" 2>/dev/null || echo absent; }

# esc_counter_moved NAME BEFORE DELTA WHAT: NAME moved by exactly DELTA.
esc_counter_moved() {
  local now
  now=$(esc_counter "$1")
  [[ $2 != absent && $now != absent ]] || why "$4: status has no counter $1:" \
    "$(redirector_status 2>&1 | tail -n 12)" || return 1
  (( now - $2 == $3 )) || why "$4: $1 went $2 -> $now, expected +$3" || return 1
}

# The entries of the running daemon's DST_BY_CLIENT map (not pinned, so
# read through the daemon's fds).
esc_dst_entries() {
  local json
  json=$("$PYTHON" "$E2E_DIR/hostile.py" map-entries --pid "$DAEMON_PID") || return 1
  jget "$json" DST_BY_CLIENT.entries
}

esc_stop_daemon() {
  kill -0 "$DAEMON_PID" 2>/dev/null || why "the daemon is not running" || return 1
  ESC_STOPPED=1
  kill -STOP "$DAEMON_PID"
}
esc_cont_daemon() {
  kill -CONT "$DAEMON_PID"
  ESC_STOPPED=0
}

esc_pod_x_up() {
  [[ -e /run/netns/$NS_POD_X ]] && ip netns del "$NS_POD_X"  # a crashed run's
  [[ " ${ALL_NS[*]} " == *" $NS_POD_X "* ]] || ALL_NS+=("$NS_POD_X")
  ESC_POD_X=1
  make_netns "$NS_POD_X" || return 1
  veth_pair "$NS_NODE" rde-px-n "$NS_POD_X" rde-px-p || return 1
  addr "$NS_NODE" rde-px-n 10.249.7.1/24 || return 1
  addr "$NS_NODE" rde-px-n fd42:e9e5:7::1/64 || return 1
  addr "$NS_POD_X" rde-px-p "$POD_X_IP4/24" || return 1
  addr "$NS_POD_X" rde-px-p "$POD_X_IP6/64" || return 1
  ip -n "$NS_POD_X" route add "$TEST_NET4" via 10.249.7.1 || return 1
  ip -n "$NS_POD_X" -6 route add "$TEST_NET6" via fd42:e9e5:7::1 || return 1
  mkdir -p "$CG_ROOT/pods/pod-x" || return 1
}

esc_pod_x_down() {
  local pids=() f=$CG_ROOT/pods/pod-x/cgroup.procs
  if [[ -e /run/netns/$NS_POD_X ]]; then mapfile -t pids < <(ip netns pids "$NS_POD_X"); fi
  [[ -f $f ]] && mapfile -t -O "${#pids[@]}" pids <"$f"
  if ((${#pids[@]})); then kill_pids "${pids[@]}"; fi
  [[ -e /run/netns/$NS_POD_X ]] && ip netns del "$NS_POD_X"  # its veth goes with it
  [[ -d $CG_ROOT/pods/pod-x ]] && rmdir "$CG_ROOT/pods/pod-x"
  ESC_POD_X=0
  return 0
}

# esc_bogus_neighbour NS DEV ADDR: packets to ADDR leave with a MAC nobody
# has, so the peer drops them (PACKET_OTHERHOST) before TCP sees them.
esc_bogus_neighbour() {
  ip -n "$1" neigh replace "$3" lladdr 02:00:00:e5:c0:99 dev "$2" nud permanent || return 1
  ESC_NEIGH+=("$1 $2 $3")
}

# ---------------------------------------------------------------- (2) loopback and unspecified

# --- a pod's connect to 0.0.0.0, ::, ::ffff:0.0.0.0 (which Linux turns
#     into the pod's own loopback) and to 127.0.0.1, ::1 is answered by the
#     pod's own listener, with the daemon proxying (CONNECT via mitmproxy,
#     which would dial rde-inet's loopback) and with a config in which raw
#     TCP goes direct (the daemon would dial the node's loopback). A canary
#     on each of those loopbacks sees no connection, the flow log names no
#     such destination, and skipped_local counts each connect.
t_esc_local() { esc_test esc_local_body; }
esc_local_body() {
  local port=7041 cfg=$WORK/esc-direct-config.json dsts=(0.0.0.0 :: ::ffff:0.0.0.0 127.0.0.1 ::1)
  local ns lo phase config before m k out dst new canary
  esc_listen "$NS_POD_A" esc-pod-self :: "$port" --reply POD-A-SELF || return 1
  for ns in "$NS_NODE" "$NS_INET"; do
    for lo in 127.0.0.1 ::1; do
      esc_listen "$ns" "esc-canary-${ns#rde-}-lo${lo//[^0-9]/}" "$lo" "$port" --reply "CANARY-$ns" || return 1
    done
  done
  # httpProxy only: raw TCP has no proxy, so the daemon dials it itself.
  write_config "$cfg" "http://$INET_IP4:$PROXY_PORT/" "" '["10.249.3.0/24","localhost"]'
  for phase in proxied direct; do
    config=$PROXY_CONFIG
    [[ $phase == direct ]] && config=$cfg
    use_daemon "$config" || why "daemon with $config did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
    before=$(esc_counter skipped_local); m=$(flow_count); k=$(wc -l <"$WORK/esc-pod-self.log")
    for dst in "${dsts[@]}"; do
      out=$(probe pod-a send-split "$dst" "$port" --pause 0 "~esc-local-$phase-$dst\n" 2>&1)
      expect_contains "$out" "reply first-line=POD-A-SELF " \
        "$phase: pod-a to [$dst]:$port is answered by pod-a's own listener" || return 1
    done
    new=$(tail -n "+$((k + 1))" "$WORK/esc-pod-self.log")
    for dst in "${dsts[@]}"; do
      expect_match "$new" "^DATA peer=(127\.0\.0\.1|::1) port=[0-9]+ data=~esc-local-$phase-$dst\$" \
        "$phase: pod-a's listener got [$dst]'s bytes over loopback" || return 1
    done
    for canary in "$WORK"/esc-canary-*.log; do
      expect_empty "$(cat "$canary")" "$phase: $(basename "$canary" .log) (no connection)" || return 1
    done
    expect_empty "$(flow_since "$m" | grep -E ":$port( |\$)" || true)" \
      "$phase: flow log lines for port $port" || return 1
    esc_counter_moved skipped_local "$before" "${#dsts[@]}" "$phase" || return 1
  done
}

# ---------------------------------------------------------------- (3) UDP to held-back ports

# --- pod-a's datagrams to port 443 are refused with EPERM: by sendto() and
#     by connect() on IPv4, IPv6 and an AF_INET6 socket to a v4-mapped
#     address; nothing of them reaches the recorder on rde-inet:443, and
#     refused_udp counts exactly those 6 refusals. Left alone: other ports
#     (the echo on 7008, both ways, both families), the pod's own loopback
#     (127.0.0.1, ::1), a bypassed destination (noProxy CIDR 10.249.3.2),
#     and the exempt pod-b (IPv4 and IPv6), whose datagrams arrive.
t_esc_udp() { esc_test esc_udp_body; }
esc_udp_body() {
  local spec fam dst how out before refused=0 got
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  esc_listen "$NS_INET" esc-udp443-inet :: 443 --udp || return 1
  esc_listen "$NS_POD_A" esc-udp443-pod-a :: 443 --udp || return 1
  before=$(esc_counter refused_udp)
  for spec in "4 $INET_IP4" "6 $INET_IP6" "6 ::ffff:$INET_IP4"; do
    fam=${spec%% *}; dst=${spec#* }
    out=$(probe pod-a udp-send "$dst" 443 --family "$fam" --data "~esc-a-sendto-$dst" 2>&1)
    expect_contains "$out" "send failed: EPERM" "pod-a sendto [$dst]:443 (AF_INET$([[ $fam == 6 ]] && echo 6))" || return 1
    out=$(probe pod-a udp-send "$dst" 443 --family "$fam" --connect --data "~esc-a-connect-$dst" 2>&1)
    expect_contains "$out" "connect failed: EPERM" "pod-a connect [$dst]:443 (AF_INET$([[ $fam == 6 ]] && echo 6))" || return 1
    refused=$((refused + 2))
  done
  # other ports: the echo answers pod-a itself
  for dst in "$INET_IP4" "$INET_IP6" "::ffff:$INET_IP4"; do
    for how in "" --connect; do
      out=$(probe pod-a udp-send "$dst" 7008 ${how:+"$how"} --reply --data "~esc-a-echo" 2>&1) \
        || why "pod-a UDP ${how:-sendto} [$dst]:7008:" "$out" || return 1
      expect_match "$out" "^udp ok client=($POD_A_IP4|$POD_A_IP6) " "pod-a UDP ${how:-sendto} [$dst]:7008 answered" || return 1
    done
  done
  # the pod's own loopback, a bypassed destination, the exempt pod
  for dst in 127.0.0.1 ::1; do
    for how in "" --connect; do
      out=$(probe pod-a udp-send "$dst" 443 ${how:+"$how"} --data "~esc-a-loopback-$dst${how}" 2>&1) \
        || why "pod-a UDP ${how:-sendto} [$dst]:443:" "$out" || return 1
    done
  done
  for how in "" --connect; do
    out=$(probe pod-a udp-send "$NOPROXY_IP4" 443 ${how:+"$how"} --data "~esc-a-bypass${how}" 2>&1) \
      || why "pod-a UDP ${how:-sendto} $NOPROXY_IP4:443 (noProxy CIDR):" "$out" || return 1
    for dst in "$INET_IP4" "$INET_IP6"; do
      out=$(probe pod-b udp-send "$dst" 443 ${how:+"$how"} --data "~esc-b-$dst${how}" 2>&1) \
        || why "pod-b (exempt) UDP ${how:-sendto} [$dst]:443:" "$out" || return 1
    done
  done
  wait_for 3 "6 datagrams at rde-inet:443" eval "(( \$(grep -c . '$WORK/esc-udp443-inet.log') >= 6 ))" || true
  wait_for 3 "4 datagrams at pod-a's own :443" eval "(( \$(grep -c . '$WORK/esc-udp443-pod-a.log') >= 4 ))" || true
  got=$(cat "$WORK/esc-udp443-inet.log")
  expect_count "$got" "data=~esc-a-(sendto|connect)-" 0 "rde-inet:443 got a refused datagram of pod-a" || return 1
  expect_count "$got" "^UDP peer=$POD_A_IP4 port=[0-9]+ data=~esc-a-bypass" 2 "rde-inet:443 got pod-a's bypassed datagrams" || return 1
  expect_count "$got" "^UDP peer=$POD_B_IP4 port=[0-9]+ data=~esc-b-$INET_IP4" 2 "rde-inet:443 got exempt pod-b's IPv4 datagrams" || return 1
  expect_count "$got" "^UDP peer=fd42:e9e5:2::2 port=[0-9]+ data=~esc-b-$INET_IP6" 2 "rde-inet:443 got exempt pod-b's IPv6 datagrams" || return 1
  got=$(cat "$WORK/esc-udp443-pod-a.log")
  expect_count "$got" "^UDP peer=(127\.0\.0\.1|::1) port=[0-9]+ data=~esc-a-loopback-" 4 "pod-a's own :443 got its loopback datagrams" || return 1
  esc_counter_moved refused_udp "$before" "$refused" "refusals counted" || return 1
}

# ---------------------------------------------------------------- (4) MPTCP

# --- an MPTCP socket (IPPROTO_MPTCP; it falls back to TCP against the
#     daemon) from pod-a, IPv4 and IPv6, goes through the proxy exactly like
#     TCP: one CONNECT each in the flow log, the echo server sees the proxy,
#     never pod-a; redirected counts both, refused_stream_protocol none.
#     From the exempt pod-b it goes direct. (net.mptcp.enabled is per
#     network namespace; the test turns it on in the pods if it is off.)
t_esc_mptcp() { esc_test esc_mptcp_body; }
esc_mptcp_body() {
  local ns m o r0 s0 out new dst
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  for ns in "$NS_POD_A" "$NS_POD_B"; do
    if [[ $(in_netns "$ns" cat /proc/sys/net/mptcp/enabled 2>/dev/null) != 1 ]]; then
      ns_sysctl "$ns" net.mptcp.enabled=1 || why "cannot enable MPTCP in $ns" || return 1
      info "  net.mptcp.enabled was off in $ns: turned on"
    fi
  done
  m=$(flow_count); o=$(origin_count)
  r0=$(esc_counter redirected); s0=$(esc_counter refused_stream_protocol)
  for dst in "$INET_IP4" "$INET_IP6"; do
    out=$(probe pod-a tcp-echo "$dst" 7007 --mptcp --bytes 65536 2>&1) || why "MPTCP echo to [$dst]:7007:" "$out" || return 1
    expect_contains "$out" "proto=262" "the probe's socket is MPTCP" || return 1
  done
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:7007 " 1 "flow log: one CONNECT for IPv4" || return 1
  expect_count "$new" "^CONNECT \[$INET_IP6\]:7007 " 1 "flow log: one CONNECT for IPv6" || return 1
  new=$(origin_since "$o")
  expect_count "$new" "^ECHO client=($INET_IP4|$INET_IP6) open" 2 "echo server saw the proxy" || return 1
  expect_count "$new" "client=($POD_A_IP4|$POD_A_IP6) " 0 "echo server saw pod-a directly" || return 1
  esc_counter_moved redirected "$r0" 2 "MPTCP connects" || return 1
  esc_counter_moved refused_stream_protocol "$s0" 0 "MPTCP sockets" || return 1
  o=$(origin_count); m=$(flow_count)
  out=$(probe pod-b tcp-echo "$INET_IP4" 7007 --mptcp 2>&1) || why "pod-b MPTCP echo:" "$out" || return 1
  expect_contains "$out" "proto=262" "pod-b's socket is MPTCP" || return 1
  expect_match "$(origin_since "$o")" "^ECHO client=$POD_B_IP4 open" "exempt pod-b's MPTCP goes direct" || return 1
  expect_empty "$(flow_since "$m")" "flow log for pod-b" || return 1
}

# ---------------------------------------------------------------- (5) forged original-destination keys

# esc_claim_run LABEL FAMILY PORT EXPECT [ATTACKER-FLAGS...]: with the
# daemon stopped, pod-a (the victim) connects from its own address and PORT
# to D1 and sends a marker (the handshake completes in the listen backlog);
# with flags, pod-x (the attacker) then binds the same address and port
# (IP_FREEBIND / IP_TRANSPARENT) and connects to D2. Then the daemon goes
# on. Always: D2 gets nothing, the victim sees nothing of D2. EXPECT
# served: the victim is served by D1 through the proxy, no conflict.
# conflict: the attacker's connect started, the victim's connection is
# refused without a byte, D1 gets nothing either, key_conflict +1.
# attacker-unroutable: the kernel refused the attacker's connect (an IPv4
# source that is not local without IP_TRANSPARENT), the victim is served.
esc_claim_run() {
  local label=$1 fam=$2 port=$3 expect=$4; shift 4
  local src dst c0 m d1 d2 out aout="" vpid apid="" marker="~esc-victim-$label" rel=$WORK/esc-attacker-$label.release
  if [[ $fam == 4 ]]; then src=$POD_A_IP4:$port; dst=$INET_IP4; else src="[$POD_A_IP6]:$port"; dst=$INET_IP6; fi
  c0=$(esc_counter key_conflict); m=$(flow_count)
  d1=$(wc -l <"$WORK/esc-d1.log"); d2=$(wc -l <"$WORK/esc-d2.log")
  esc_stop_daemon || return 1
  esc_pod_bg pod-a "esc-victim-$label" bind-connect "$dst" "$ESC_D1_PORT" --source "$src" \
    --send "$marker\n" --read-secs 10
  vpid=$ESC_BG_PID
  wait_for 5 "$label: the victim's connect completed (daemon stopped)" \
    grep -qx connected "$WORK/esc-victim-$label.out" \
    || why "victim:" "$(cat "$WORK/esc-victim-$label.out")" || return 1
  if (($#)); then
    esc_pod_bg pod-x "esc-attacker-$label" bind-connect "$dst" "$ESC_D2_PORT" --source "$src" "$@" \
      --nonblock --hold 20 --release-file "$rel"
    apid=$ESC_BG_PID
    wait_for 5 "$label: the attacker's connect" grep -q "^connect started: " "$WORK/esc-attacker-$label.out" \
      || why "attacker:" "$(cat "$WORK/esc-attacker-$label.out")" || return 1
  fi
  esc_cont_daemon
  wait_for 15 "$label: the victim's outcome" eval "[[ \$(wc -l <'$WORK/esc-victim-$label.out') -ge 4 ]]" \
    || why "victim:" "$(cat "$WORK/esc-victim-$label.out")" || return 1
  wait "$vpid" 2>/dev/null
  out=$(cat "$WORK/esc-victim-$label.out")
  if (($#)); then
    touch "$rel"
    wait "$apid" 2>/dev/null
    aout=$(cat "$WORK/esc-attacker-$label.out")
    info "  $label: attacker ($*): $(grep '^connect started' <<<"$aout")"
  fi
  info "  $label: victim: $(sed -n 3p <<<"$out")"
  expect_empty "$(tail -n "+$((d2 + 1))" "$WORK/esc-d2.log")" "$label: D2 (the attacker's destination)" || return 1
  expect_not_contains "$out" "D2-SERVED" "$label: the victim's answer" || return 1
  expect_count "$(flow_since "$m")" "^CONNECT [^ ]*:$ESC_D2_PORT " 0 "$label: CONNECTs to D2 in the flow log" || return 1
  case $expect in
    served|attacker-unroutable)
      if [[ $expect == attacker-unroutable ]]; then
        expect_contains "$aout" "connect started: ENETUNREACH" "$label: the attacker's connect" || return 1
      fi
      expect_match "$out" "^reply bytes=[0-9]+ data=b'D1-SERVED" "$label: the victim is served by D1" || return 1
      expect_match "$(tail -n "+$((d1 + 1))" "$WORK/esc-d1.log")" \
        "^DATA peer=($INET_IP4|$INET_IP6) port=[0-9]+ data=$marker\$" "$label: D1 got the marker from the proxy" || return 1
      esc_counter_moved key_conflict "$c0" 0 "$label" || return 1
      ;;
    conflict)
      expect_contains "$aout" "connect started: EINPROGRESS" "$label: the attacker's connect" || return 1
      expect_match "$out" "^(reset|closed) bytes=0\$" "$label: the victim's connection is refused" || return 1
      expect_empty "$(tail -n "+$((d1 + 1))" "$WORK/esc-d1.log")" "$label: D1 (neither is served)" || return 1
      esc_counter_moved key_conflict "$c0" 1 "$label" || return 1
      ;;
  esac
}

esc_claim_origins() {
  esc_listen "$NS_INET" esc-d1 :: "$ESC_D1_PORT" --reply D1-SERVED || return 1
  esc_listen "$NS_INET" esc-d2 :: "$ESC_D2_PORT" --reply D2-SERVED || return 1
}

# --- with the daemon SIGSTOPped, pod-a connects from a fixed port and
#     waits; pod-x binds pod-a's address and that port and connects
#     elsewhere (D2). Controls first: no attacker (served), and IPv4
#     IP_FREEBIND, which the kernel does not route (served). Then the
#     attacks that do reach sock_ops: IPv4 IP_TRANSPARENT (CAP_NET_RAW),
#     IPv6 IPV6_FREEBIND (no privilege) and IPV6_TRANSPARENT. Each: the
#     victim's bytes never reach D2; the victim is refused, and counted.
t_esc_forged() { esc_test esc_forged_body; }
esc_forged_body() {
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  esc_pod_x_up || why "the attacker pod could not be set up" || return 1
  esc_claim_origins || return 1
  esc_claim_run control4 4 24101 served || return 1
  esc_claim_run control6 6 24102 served || return 1
  esc_claim_run freebind4 4 24103 attacker-unroutable --freebind || return 1
  esc_claim_run transparent4 4 24104 conflict --transparent || return 1
  esc_claim_run freebind6 6 24105 conflict --freebind || return 1
  esc_claim_run transparent6 6 24106 conflict --transparent || return 1
}

# --- the claim cannot be won by eviction: the original-destination map is
#     shrunk to 4 entries, the daemon stopped; pod-a connects from a fixed
#     port, then pod-x (unprivileged IPV6_FREEBIND) opens 16 connects from
#     a made-up source (their SYN-ACKs go nowhere, they hold their keys)
#     and then claims pod-a's address and port for D2. After SIGCONT, D2
#     has nothing of pod-a, and pod-a is refused (or, at most, served by
#     the D1 it asked for).
t_esc_evicted() { esc_test esc_evicted_body; }
esc_evicted_body() {
  local rc=0 port=24111 src out d1 d2 vpid fpid apid marker="~esc-victim-evicted" c0
  src="[$POD_A_IP6]:$port"
  export REDIRECTOR_DEBUG_MAP_MAX=DST_BY_CLIENT=4
  sec_fresh_daemon "$PROXY_CONFIG" || rc=$?
  unset REDIRECTOR_DEBUG_MAP_MAX
  ((rc == 0)) || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  grep -q "map shrunk" "$DAEMON_LOG" || why "the daemon did not shrink the map" || return 1
  esc_pod_x_up || why "the attacker pod could not be set up" || return 1
  esc_claim_origins || return 1
  d1=$(wc -l <"$WORK/esc-d1.log"); d2=$(wc -l <"$WORK/esc-d2.log"); c0=$(esc_counter key_conflict)
  esc_stop_daemon || return 1
  esc_pod_bg pod-a esc-victim-evicted bind-connect "$INET_IP6" "$ESC_D1_PORT" --source "$src" \
    --send "$marker\n" --read-secs 10
  vpid=$ESC_BG_PID
  wait_for 5 "the victim's connect completed (daemon stopped)" grep -qx connected "$WORK/esc-victim-evicted.out" \
    || why "victim:" "$(cat "$WORK/esc-victim-evicted.out")" || return 1
  esc_pod_bg pod-x esc-flood claim-many "$INET_IP6" "$ESC_D2_PORT" --source "[$POD_X_FAKE6]:25000" \
    --count 16 --spread-cpus --freebind --hold 20 --release-file "$WORK/esc-flood.release"
  fpid=$ESC_BG_PID
  wait_for 5 "16 flood connects" grep -q "^started 16 " "$WORK/esc-flood.out" \
    || why "flood:" "$(cat "$WORK/esc-flood.out")" || return 1
  esc_pod_bg pod-x esc-attacker-evicted bind-connect "$INET_IP6" "$ESC_D2_PORT" --source "$src" --freebind \
    --nonblock --hold 20 --release-file "$WORK/esc-flood.release"
  apid=$ESC_BG_PID
  wait_for 5 "the attacker's connect" grep -q "^connect started: EINPROGRESS" "$WORK/esc-attacker-evicted.out" \
    || why "attacker:" "$(cat "$WORK/esc-attacker-evicted.out")" || return 1
  esc_cont_daemon
  wait_for 15 "the victim's outcome" eval "[[ \$(wc -l <'$WORK/esc-victim-evicted.out') -ge 4 ]]" \
    || why "victim:" "$(cat "$WORK/esc-victim-evicted.out")" || return 1
  wait "$vpid" 2>/dev/null
  touch "$WORK/esc-flood.release"
  wait "$fpid" "$apid" 2>/dev/null
  out=$(cat "$WORK/esc-victim-evicted.out")
  info "  victim: $(sed -n 3p <<<"$out"); key_conflict $c0 -> $(esc_counter key_conflict)"
  expect_empty "$(tail -n "+$((d2 + 1))" "$WORK/esc-d2.log")" "D2 (the attacker's destination)" || return 1
  expect_not_contains "$out" "D2-SERVED" "the victim's answer" || return 1
  expect_match "$out" "^((reset|closed) bytes=0|reply bytes=[0-9]+ data=b'D1-SERVED.*)\$" \
    "the victim is refused or served by its own D1" || return 1
}

# --- a key is freed when its socket closes before being established: the
#     SYN from pod-a never reaches the node (pod-a's neighbour entry for its
#     gateway names a MAC nobody has), the socket sits in SYN_SENT holding
#     its key in DST_BY_CLIENT, then closes (plainly over IPv4, with
#     SO_LINGER 0 over IPv6) and the key is gone. With the neighbour
#     restored, a connect from the same address and port is served (no
#     conflict), through the proxy to the destination it asked for.
t_esc_closed() { esc_test esc_closed_body; }
esc_closed_body() {
  local spec fam port how src dst gw n0 n out c0 rel marker
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  esc_listen "$NS_INET" esc-d1 :: "$ESC_D1_PORT" --reply D1-SERVED || return 1
  for spec in "4 24121 close" "6 24122 abort"; do
    read -r fam port how <<<"$spec"
    if [[ $fam == 4 ]]; then
      src=$POD_A_IP4:$port; dst=$INET_IP4; gw=10.249.1.1
    else
      src="[$POD_A_IP6]:$port"; dst=$INET_IP6; gw=fd42:e9e5:1::1
    fi
    rel=$WORK/esc-unborn-$fam.release; marker="~esc-reborn-$fam"
    c0=$(esc_counter key_conflict)
    n0=$(esc_dst_entries) || why "cannot read the daemon's DST_BY_CLIENT" || return 1
    esc_bogus_neighbour "$NS_POD_A" rde-pa-p "$gw" || return 1
    local abort=()
    [[ $how == abort ]] && abort=(--abort)
    esc_pod_bg pod-a "esc-unborn-$fam" bind-connect "$dst" "$ESC_D1_PORT" --source "$src" --nonblock \
      --hold 20 --release-file "$rel" "${abort[@]}"
    wait_for 5 "IPv$fam: the connect started" grep -q "^connect started: EINPROGRESS" "$WORK/esc-unborn-$fam.out" \
      || why "probe:" "$(cat "$WORK/esc-unborn-$fam.out")" || return 1
    # shellcheck disable=SC2016
    wait_for 3 "IPv$fam: the key saved" eval '[[ $(esc_dst_entries) == $((n0 + 1)) ]]' \
      || why "DST_BY_CLIENT has $(esc_dst_entries) entries, expected $((n0 + 1))" || return 1
    touch "$rel"
    wait_for 5 "IPv$fam: the socket closed" grep -qx closed "$WORK/esc-unborn-$fam.out" || return 1
    out=$(cat "$WORK/esc-unborn-$fam.out")
    expect_contains "$out" "state=SYN_SENT" "IPv$fam: closed before being established" || return 1
    # shellcheck disable=SC2016
    wait_for 3 "IPv$fam: the key freed" eval '[[ $(esc_dst_entries) == $n0 ]]' \
      || why "IPv$fam ($how): DST_BY_CLIENT still has $(esc_dst_entries) entries after the close, expected $n0" || return 1
    ip -n "$NS_POD_A" neigh del "$gw" dev rde-pa-p || return 1
    ESC_NEIGH=()
    n=$(wc -l <"$WORK/esc-d1.log")
    out=$(probe pod-a bind-connect "$dst" "$ESC_D1_PORT" --source "$src" --send "$marker\n" 2>&1) \
      || why "IPv$fam: the second connect from $src:" "$out" || return 1
    expect_match "$out" "^reply bytes=[0-9]+ data=b'D1-SERVED" "IPv$fam: the second connect from $src is served" || return 1
    expect_match "$(tail -n "+$((n + 1))" "$WORK/esc-d1.log")" \
      "^DATA peer=($INET_IP4|$INET_IP6) port=[0-9]+ data=$marker\$" "IPv$fam: D1 got it from the proxy" || return 1
    esc_counter_moved key_conflict "$c0" 0 "IPv$fam" || return 1
  done
}

# --- a key is freed when the daemon refuses a connection without taking
#     it: with a per-pod cap of 1 and one connection of pod-a held open,
#     pod-a's next connect (from a fixed port) is reset at accept; once the
#     held one is gone, a connect from that same address and port is served
#     (not refused as a conflict with a stale key). The refused connection's
#     key was freed when its socket closed (DST_BY_CLIENT back to what it
#     held before).
t_esc_capped() { esc_test esc_capped_body; }
esc_capped_body() {
  local port=24131 src n0 c0 out n left k='redirector_active_connections'
  src=$POD_A_IP4:$port
  use_daemon "$PROXY_CONFIG" --max-connections-per-pod 1 \
    || why "daemon with --max-connections-per-pod 1 did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  esc_listen "$NS_INET" esc-d1 :: "$ESC_D1_PORT" --reply D1-SERVED || return 1
  # shellcheck disable=SC2016
  wait_for 5 "no connection active" eval '[[ $(metric "$(scrape /metrics)" '"$k"') == 0 ]]' || return 1
  n0=$(esc_dst_entries) || why "cannot read the daemon's DST_BY_CLIENT" || return 1
  c0=$(esc_counter key_conflict)
  # pod-a's one allowed connection: the echo answered, so the daemon took it
  esc_pod_bg pod-a esc-holder bind-connect "$INET_IP4" 7007 --source "$POD_A_IP4:$((port + 1))" \
    --send "~esc-hold\n" --read-secs 1 --hold 20 --release-file "$WORK/esc-holder.release"
  wait_for 8 "the held connection echoed" grep -q "^timeout bytes=[1-9]" "$WORK/esc-holder.out" \
    || why "holder:" "$(cat "$WORK/esc-holder.out")" || return 1
  out=$(probe pod-a bind-connect "$INET_IP4" "$ESC_D1_PORT" --source "$src" --send "~esc-capped\n" 2>&1)
  # reset at once: before or after connect() returned
  expect_match "$out" "^((reset|closed) bytes=0|connect failed: ECONNRESET)\$" \
    "pod-a's second connection, over the cap, is refused" || return 1
  # shellcheck disable=SC2016
  wait_for 3 "the refused connection's key freed" eval '[[ $(esc_dst_entries) == "$n0" ]]' || true
  left=$(esc_dst_entries)
  touch "$WORK/esc-holder.release"
  # shellcheck disable=SC2016
  wait_for 5 "the held connection gone" eval '[[ $(metric "$(scrape /metrics)" '"$k"') == 0 ]]' || return 1
  n=$(wc -l <"$WORK/esc-d1.log")
  out=$(probe pod-a bind-connect "$INET_IP4" "$ESC_D1_PORT" --source "$src" --send "~esc-after-cap\n" 2>&1)
  expect_match "$out" "^reply bytes=[0-9]+ data=b'D1-SERVED" "a connect from $src after the refusal is served" || return 1
  expect_match "$(tail -n "+$((n + 1))" "$WORK/esc-d1.log")" \
    "^DATA peer=$INET_IP4 port=[0-9]+ data=~esc-after-cap\$" "D1 got it from the proxy" || return 1
  esc_counter_moved key_conflict "$c0" 0 "after a refusal at the cap" || return 1
  [[ $left == "$n0" ]] || why "after the refusal DST_BY_CLIENT had $left entries, expected $n0" \
    "(the refused connection's key was left behind)" || return 1
}

# shellcheck disable=SC2034  # run.sh runs them
ESCAPE_TESTS=(esc_local_unspecified:t_esc_local esc_udp_held_port:t_esc_udp esc_mptcp:t_esc_mptcp
  esc_forged_key:t_esc_forged esc_forged_key_evicted:t_esc_evicted esc_key_freed_on_close:t_esc_closed
  esc_key_freed_after_refusal:t_esc_capped)
