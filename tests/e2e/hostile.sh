# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh and lib.sh
# Hostile clients and upstream faults (issue 7), sourced by run.sh after
# lib.sh; uses run.sh's why/expect_* helpers. The peers come from
# hostile.py:
#
#   fake proxy  rde-inet 10.249.0.2:8090, a scriptable upstream proxy (modes
#               in $FAKE_PROXY_MODE, read per connection: tunnel, close,
#               status CODE, delay SECS, abort-after BYTES, garbage,
#               endless-head); CONNECT to port 9 is a sink that it answers
#               and holds itself, so thousands of held connections cost the
#               origin nothing
#   eof server  rde-inet :7020, answers only after the client's EOF (proves
#               a half-close is carried, not turned into a close)
#   pod-c       rde-pod-c 10.249.5.2, a third pod (not exempt): "another
#               pod" for per-pod limits and well-behaved neighbours
#
# Each hostile-client test runs a well-behaved client meanwhile (hostile.py
# steady: a 4 KiB echo on a new connection every 0.2 s, through the daemon
# and the fake proxy) and asserts it never failed, and bounds the daemon's
# RSS (peak sampled every 0.1 s). Every test runs the daemon it needs with
# use_daemon and restores the standard one (and the fake proxy in tunnel
# mode) at its end, pass or fail.

FAKE_PROXY_PORT=8090
FAKE_PROXY_URL=http://$INET_IP4:$FAKE_PROXY_PORT/
FAKE_PROXY_MODE=$WORK/fakeproxy.mode
FAKE_PROXY_LOG=$WORK/fakeproxy.log
FAKE_PROXY_PID=""
SINK_PORT=9
EOF_PORT=7020
EOF_LOG=$WORK/eof-server.log
EOF_PID=""
STEADY_PID=""
STEADY_NAME=""
# httpsProxy (CONNECT: TLS and raw TCP) is the fake proxy, httpProxy (plain
# HTTP in absolute form) is mitmproxy.
HOSTILE_CONFIG=$WORK/hostile-config.json
# Both proxies are the fake proxy: its faults hit both classes.
FAULT_CONFIG=$WORK/fault-config.json
# On the node's uplink subnet but owned by nobody: ARP never answers, so a
# connect to it neither succeeds nor is refused.
SILENT_PROXY_IP=10.249.0.99
# The plain-HTTP server's bound on reading a request head (http_forward's
# HEAD_TIMEOUT); a client that has not sent a whole head by then is closed.
HEADER_TIMEOUT_S=${RDE_HEADER_TIMEOUT_S:-10}
# RSS bounds (KiB): a fixed slack plus an allowance per held connection
# (measured here: about 6 KiB per held connection with the splice relay).
RSS_SLACK_KB=8192
RSS_PER_CONN_KB=16
PYH=("$PYTHON" "$E2E_DIR/hostile.py")

# ---------------------------------------------------------------- peers

fake_proxy_mode() { # fake_proxy_mode WORDS...: for the next connections
  printf '%s\n' "$*" >"$FAKE_PROXY_MODE.tmp" && mv -f "$FAKE_PROXY_MODE.tmp" "$FAKE_PROXY_MODE"
}

fake_proxy_up() { # idempotent
  if [[ -n $FAKE_PROXY_PID ]] && kill -0 "$FAKE_PROXY_PID" 2>/dev/null; then return 0; fi
  [[ -f $FAKE_PROXY_MODE ]] || fake_proxy_mode tunnel
  touch "$FAKE_PROXY_LOG"
  bg fakeproxy nsenter --net="/run/netns/$NS_INET" -- "${PYH[@]}" proxy \
    --listen "$INET_IP4:$FAKE_PROXY_PORT" --mode-file "$FAKE_PROXY_MODE" \
    --log "$FAKE_PROXY_LOG" --sink-port "$SINK_PORT"
  FAKE_PROXY_PID=${BG_PIDS[-1]}
  wait_for 10 "fake proxy on $INET_IP4:$FAKE_PROXY_PORT" port_listening "$NS_INET" "$FAKE_PROXY_PORT" \
    || why "fake proxy did not start:" "$(tail -n 5 "$WORK/fakeproxy.out")"
}

fake_proxy_kill() { # SIGKILL: its sockets die with it
  [[ -n $FAKE_PROXY_PID ]] || return 0
  kill -KILL "$FAKE_PROXY_PID" 2>/dev/null
  wait "$FAKE_PROXY_PID" 2>/dev/null
  FAKE_PROXY_PID=""
}

fake_proxy_count() { wc -l <"$FAKE_PROXY_LOG"; }
fake_proxy_since() { tail -n "+$(( $1 + 1 ))" "$FAKE_PROXY_LOG"; }

eof_server_up() {
  if [[ -n $EOF_PID ]] && kill -0 "$EOF_PID" 2>/dev/null; then return 0; fi
  touch "$EOF_LOG"
  bg eof-server nsenter --net="/run/netns/$NS_INET" -- "${PYH[@]}" eof-server \
    --listen "$INET_IP4:$EOF_PORT" --log "$EOF_LOG"
  EOF_PID=${BG_PIDS[-1]}
  wait_for 10 "eof server on :$EOF_PORT" port_listening "$NS_INET" "$EOF_PORT" \
    || why "eof server did not start:" "$(tail -n 5 "$WORK/eof-server.out")"
}

hostile_peers_up() {
  pod_c_up || why "pod-c could not be set up" || return 1
  write_config "$HOSTILE_CONFIG" "http://$INET_IP4:$PROXY_PORT/" "$FAKE_PROXY_URL" "$POLICY_NOPROXY"
  write_config "$FAULT_CONFIG" "$FAKE_PROXY_URL" "$FAKE_PROXY_URL" "$POLICY_NOPROXY"
  fake_proxy_mode tunnel
  fake_proxy_up || return 1
  eof_server_up || return 1
}

# hostile_test BODY: peers up, run BODY, then the standard daemon and the
# fake proxy in tunnel mode again, whatever BODY returned.
hostile_test() {
  local rc=0 n0 pid left=()
  hostile_peers_up || return 1
  n0=${#BG_PIDS[@]}
  "$1" || rc=$?
  if [[ -n $STEADY_PID ]]; then
    touch "$WORK/$STEADY_NAME.stop"
    wait "$STEADY_PID" 2>/dev/null
    STEADY_PID=""
  fi
  [[ -n $RSS_WATCH_PID ]] && daemon_rss_watch_stop >/dev/null
  # clients a failed body left running (by id; the peers stay)
  for pid in "${BG_PIDS[@]:n0}"; do
    [[ $pid == "$FAKE_PROXY_PID" || $pid == "$DAEMON_PID" ]] && continue
    [[ $(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ') == "$$" ]] && left+=("$pid")
  done
  if ((${#left[@]})); then kill_pids "${left[@]}"; fi
  fake_proxy_mode tunnel
  fake_proxy_up >/dev/null 2>&1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}

# ---------------------------------------------------------------- checks

# steady_start POD NAME: the well-behaved client, until steady_check.
steady_start() {
  rm -f "$WORK/$2.stop"
  pod_bg "$1" "$2" "${PYH[@]}" steady "$INET_IP4" 7007 --stop "$WORK/$2.stop"
  STEADY_PID=$POD_BG_PID
  STEADY_NAME=$2
}
# steady_check NAME WHAT: stop it; it made attempts and none failed, each
# within 2 s.
steady_check() {
  local out
  touch "$WORK/$1.stop"
  wait "$STEADY_PID" 2>/dev/null
  STEADY_PID=""
  out=$(cat "$WORK/$1.out")
  info "  $2: $out"
  (( $(jget "$out" attempts) >= 3 )) || why "$2: too few attempts:" "$out" || return 1
  [[ $(jget "$out" failed) == 0 ]] || why "$2: the well-behaved client failed meanwhile:" "$out" || return 1
  "$PYTHON" -c 'import json,sys; sys.exit(json.loads(sys.argv[1])["ms"]["max"] >= 2000)' "$out" \
    || why "$2: a well-behaved request took 2 s or more:" "$out" || return 1
}

# rss_within BEFORE PEAK ALLOWED_KB WHAT
rss_within() {
  info "  daemon RSS: $1 KiB before, peak $2 KiB (+$(( $2 - $1 )) KiB, allowed +$3 KiB)"
  (( $2 - $1 <= $3 )) || why "$4: daemon RSS grew by $(( $2 - $1 )) KiB (from $1), allowed $3 KiB"
}

# back_to_idle SOCKETS_BEFORE WHAT: no active connection left and no
# socket leaked; pipes (the splice relay keeps up to 256 idle ones for
# reuse) stay within that pool.
back_to_idle() {
  # shellcheck disable=SC2016  # expanded by eval, at each try
  wait_for 10 "redirector_active_connections back to 0" \
    eval '(( $(metric_value "$(daemon_metrics)" redirector_active_connections) == 0 ))' \
    || why "$2: active connections: $(metric_value "$(daemon_metrics)" redirector_active_connections)" || return 1
  wait_for 5 "daemon sockets back to $1 (+2)" eval "(( \$(daemon_fds socket) <= $1 + 2 ))" \
    || why "$2: the daemon holds $(daemon_fds socket) sockets, $1 before" || return 1
  (( $(daemon_fds pipe) <= 2 * 256 + 4 )) || why "$2: the daemon holds $(daemon_fds pipe) pipe fds" || return 1
  info "  back to idle: $(daemon_fds socket) sockets, $(daemon_fds pipe) pipe fds, $(daemon_fd_count) fds in all"
}

# hostile_json NAME: a finished client's JSON (its last output line).
hostile_json() { tail -n 1 "$WORK/$1.out"; }

p_le() { # p_le JSON PATH LIMIT: a number in the JSON is <= LIMIT
  "$PYTHON" -c '
import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v[k]
sys.exit(0 if v <= float(sys.argv[3]) else 1)' "$1" "$2" "$3"
}

# listen_overflows: the node's TcpExt ListenOverflows (connections dropped
# because the daemon's accept queue was full).
listen_overflows() {
  # shellcheck disable=SC2016  # awk's own $fields
  in_netns "$NS_NODE" awk '/^TcpExt:/ { if (!h) { split($0, k); h = 1 } else {
    for (i = 2; i <= NF; i++) if (k[i] == "ListenOverflows") print $i } }' /proc/net/netstat
}

# ---------------------------------------------------------------- hostile clients

# Many clients that connect and send nothing: each waits --peek-timeout
# (0.5 s) and is then tunnelled by IP, so the peek phase is bounded in time;
# held connections cost a bounded amount each.
h_silent() {
  local n=400 ready=$WORK/silent.ready f0 rss0 peak out m t0 ms ov
  use_daemon "$HOSTILE_CONFIG" || why "daemon with $HOSTILE_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  f0=$(daemon_fds socket); rss0=$(daemon_rss_kb); m=$(fake_proxy_count); ov=$(listen_overflows)
  steady_start pod-c steady-silent
  daemon_rss_watch_start
  rm -f "$ready"
  t0=$(now_ms)
  pod_bg pod-a silent "${PYH[@]}" conns "$INET_IP4" "$SINK_PORT" --count "$n" --hold 6 --ready "$ready"
  wait_for 10 "$n silent connections made" test -s "$ready" || return 1
  # A client whose handshake the node completed (SYN cookie) while the
  # accept queue was full exists only on its own side: if it stays silent,
  # nothing ever reaches the daemon for it.
  wait_for 5 "$n CONNECTs (by IP, after the peek timeout) at the fake proxy" \
    eval "(( \$(fake_proxy_since $m | grep -c '^CONNECT $INET_IP4:$SINK_PORT ') >= $n ))" \
    || why "only $(fake_proxy_since "$m" | grep -c "^CONNECT $INET_IP4:$SINK_PORT ") of $n dialled" \
      "connections: $(cat "$ready"); node ListenOverflows +$(( $(listen_overflows) - ov ))" \
      "(a small listen backlog drops handshakes of a burst)" || return 1
  ms=$(( $(now_ms) - t0 ))
  info "  $n silent clients connected and dialled by IP within ${ms} ms (ListenOverflows +$(( $(listen_overflows) - ov )))"
  wait "$POD_BG_PID"
  out=$(hostile_json silent)
  info "  clients: $out"
  [[ $(jget "$out" open) == "$n" ]] || why "silent clients still open at the end: expected $n:" "$out" || return 1
  peak=$(daemon_rss_watch_stop)
  steady_check steady-silent "pod-c meanwhile" || return 1
  rss_within "$rss0" "$peak" $(( RSS_SLACK_KB + n * RSS_PER_CONN_KB )) "$n silent connections" || return 1
  back_to_idle "$f0" "after the silent clients" || return 1
}
t_hostile_silent() { hostile_test h_silent; }

# A ClientHello that announces 16 MiB and never ends (as 16 KiB records,
# and as one record header over TLS's limit), and an HTTP header line that
# never ends. The peek stops at 16 KiB and the hello is relayed by IP, every
# byte of it (the sink counts them); the plain-HTTP server refuses the head
# at its size limit. The daemon's memory does not follow the bytes.
h_endless() {
  local f0 rss0 peak out m variant sent up
  use_daemon "$HOSTILE_CONFIG" || why "daemon with $HOSTILE_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  f0=$(daemon_fds socket); rss0=$(daemon_rss_kb)
  steady_start pod-a steady-endless
  daemon_rss_watch_start
  for variant in records huge-record; do
    m=$(fake_proxy_count)
    out=$(in_pod pod-a "${PYH[@]}" endless-hello "$INET_IP4" "$SINK_PORT" --seconds 5 --variant "$variant")
    info "  endless hello ($variant): $out"
    sent=$(jget "$out" sent_bytes)
    ((sent >= 32 << 20)) || why "endless hello ($variant): only $sent bytes accepted in 5 s (stalled?):" "$out" || return 1
    [[ $(jget "$out" outcome) == open ]] || why "endless hello ($variant): a tunnel should stay open:" "$out" || return 1
    wait_for 5 "the sink's END line" eval "fake_proxy_since $m | grep -q '^END .*result=sink'" || return 1
    expect_count "$(fake_proxy_since "$m")" "^CONNECT $INET_IP4:$SINK_PORT " 1 "endless hello ($variant): one CONNECT by IP" || return 1
    up=$(fake_proxy_since "$m" | sed -n 's/^END .*result=sink up=\([0-9]*\) .*/\1/p')
    [[ $up == "$sent" ]] || why "endless hello ($variant): sent $sent bytes, the sink got $up" || return 1
  done
  out=$(in_pod pod-a "${PYH[@]}" endless-header "$INET_IP4" 80 --seconds 10)
  info "  endless header: $out"
  [[ $(jget "$out" outcome) =~ ^(closed|reset)$ ]] \
    || why "endless header on port 80: still open after 10 s (no size limit on the request head):" "$out" || return 1
  sent=$(jget "$out" sent_bytes)
  ((sent < 16 << 20)) || why "endless header: $sent bytes accepted before the close" || return 1
  if [[ -n $(jget "$out" reply_first_line) ]]; then
    expect_match "$(jget "$out" reply_first_line)" "^HTTP/1\\.[01] 4(31|00|13)" "endless header: the answer" || return 1
  fi
  peak=$(daemon_rss_watch_stop)
  steady_check steady-endless "pod-a meanwhile" || return 1
  rss_within "$rss0" "$peak" 8192 "endless hello and header" || return 1
  back_to_idle "$f0" "after the endless clients" || return 1
}
t_hostile_endless() { hostile_test h_endless; }

# Slowloris, 1 byte/s. On port 80 after a whole request line: the
# plain-HTTP server reads the head and must give up within its header
# timeout. A ClientHello from its first byte: the peek gives up after 0.5 s
# and tunnels by IP (to the sink), and every dripped byte goes through at
# once; a slow tunnel is a tunnel, so it stays open.
h_slowloris() {
  local n=8 f0 rss0 peak m out hello limit=$(( HEADER_TIMEOUT_S + 5 )) ups sent
  use_daemon "$HOSTILE_CONFIG" || why "daemon with $HOSTILE_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  f0=$(daemon_fds socket); rss0=$(daemon_rss_kb); m=$(fake_proxy_count)
  hello=$("$PYTHON" -c '
import sys
sys.path.insert(0, sys.argv[1])
import netprobe
print("".join("\\x%02x" % b for b in netprobe.client_hello(b"slow.test", 0)))' "$E2E_DIR")
  steady_start pod-c steady-slow
  daemon_rss_watch_start
  pod_bg pod-a slow-http "${PYH[@]}" slow "$INET_IP4" 80 --count "$n" --seconds "$((limit + 5))" \
    --prefix 'GET /slow HTTP/1.1\r\nHost: slow.test\r\n' --drip 'X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'
  local http_pid=$POD_BG_PID
  pod_bg pod-a slow-tls "${PYH[@]}" slow "$INET_IP4" "$SINK_PORT" --count "$n" --seconds 12 --drip "$hello"
  local tls_pid=$POD_BG_PID
  wait_for 3 "$n CONNECTs by IP for the slow hellos" \
    eval "(( \$(fake_proxy_since $m | grep -c '^CONNECT $INET_IP4:$SINK_PORT ') >= $n ))" \
    || why "the slow hellos were not dialled within the peek timeout:" "$(fake_proxy_since "$m" | tail -n 3)" || return 1
  wait "$tls_pid"
  out=$(hostile_json slow-tls)
  info "  slow TLS: $out"
  [[ $(jget "$out" open) == "$n" ]] || why "slow hellos: a slow tunnel was closed:" "$out" || return 1
  expect_count "$(fake_proxy_since "$m")" "^CONNECT slow\\.test:" 0 "slow hellos: no CONNECT by name (the SNI came too late)" || return 1
  sent=$(jget "$out" sent_total)
  wait_for 5 "the sink's END lines for the slow hellos" \
    eval "(( \$(fake_proxy_since $m | grep -c '^END .*result=sink') >= $n ))" || return 1
  ups=$(fake_proxy_since "$m" | sed -n 's/^END .*result=sink up=\([0-9]*\) .*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
  [[ $ups == "$sent" ]] || why "slow hellos: sent $sent bytes in all, the sink got $ups" || return 1
  wait "$http_pid"
  out=$(hostile_json slow-http)
  info "  slow HTTP head: $out"
  [[ $(jget "$out" open) == 0 ]] \
    || why "slow request heads still open after $((limit + 5)) s: the plain-HTTP path has no header timeout:" "$out" || return 1
  p_le "$out" end_ms.max $((limit * 1000)) \
    || why "slow request heads: closed later than ${limit} s:" "$out" || return 1
  peak=$(daemon_rss_watch_stop)
  steady_check steady-slow "pod-c meanwhile" || return 1
  rss_within "$rss0" "$peak" $(( RSS_SLACK_KB + 2 * n * RSS_PER_CONN_KB )) "slowloris" || return 1
  back_to_idle "$f0" "after the slowloris clients" || return 1
}
t_hostile_slowloris() { hostile_test h_slowloris; }

# A client that sends, shuts down its write side and waits for the answer:
# through a CONNECT tunnel (the fake proxy passes the half-close on), dialled
# directly by the daemon, and plain HTTP through the HTTP server.
h_half_close() {
  local direct=$WORK/direct-config.json out
  use_daemon "$HOSTILE_CONFIG" || why "daemon with $HOSTILE_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  out=$(in_pod pod-a "${PYH[@]}" half-close "$INET_IP4" "$EOF_PORT" --bytes 300000)
  info "  tunnel: $out"
  [[ $(jget "$out" ok) == True ]] || why "half-close through the tunnel: no answer after the client's FIN:" "$out" || return 1
  [[ $(jget "$out" client) == "$INET_IP4" ]] || why "half-close: the eof server saw $(jget "$out" client), not the proxy" || return 1
  out=$(in_pod pod-a "${PYH[@]}" half-close-http "$INET_IP4" 80 --host-header plain.test --path /half-close)
  info "  plain HTTP: $out"
  [[ $(jget "$out" ok) == True ]] || why "plain HTTP request then half-close: no answer:" "$out" || return 1
  # no proxy for any class: the daemon dials the destination itself
  write_config "$direct" "" "" '["10.249.3.0/24"]'
  use_daemon "$direct" || why "daemon with $direct did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  out=$(in_pod pod-a "${PYH[@]}" half-close "$INET_IP4" "$EOF_PORT" --bytes 300000)
  info "  direct: $out"
  [[ $(jget "$out" ok) == True ]] || why "half-close on a direct connection: no answer after the client's FIN:" "$out" || return 1
  [[ $(jget "$out" client) == "$NODE_IP4" ]] || why "half-close direct: the eof server saw $(jget "$out" client), not the node" || return 1
}
t_hostile_half_close() { hostile_test h_half_close; }

# burst_checks OUT N CAP REASON BEFORE AFTER EXTRA: the client saw exactly
# CAP held and N - CAP refused at once (from the connect's completion: what
# the daemon does; the kernel's SYN handling comes before), and
# refused_total{REASON} moved by the refusals (+ EXTRA seen elsewhere).
burst_checks() {
  local out=$1 n=$2 cap=$3 reason=$4 before=$5 after=$6 extra=$7 refused d k other=global_limit
  [[ $reason == global_limit ]] && other=pod_limit
  k="redirector_connections_refused_total{reason=\"$reason\"}"
  d=$(( $(metric_value "$after" "$k") - $(metric_value "$before" "$k") ))
  refused=$(( $(jget "$out" reset) + $(jget "$out" closed) ))
  info "  held $(jget "$out" open), refused $refused; $k +$d"
  [[ $(jget "$out" open) == "$cap" ]] || why "open at the end: expected exactly $cap (the cap):" "$out" \
    "$(grep -F redirector_connections_refused_total <<<"$after")" || return 1
  ((refused == n - cap)) || why "refused: expected $((n - cap)) reset or closed:" "$out" || return 1
  p_le "$out" end_after_connect_ms.p50 200 || why "refusals not at once (p50 of connected-to-reset):" "$out" || return 1
  p_le "$out" end_after_connect_ms.max 3000 || why "a refusal took 3 s or more (queued?):" "$out" || return 1
  ((d == refused + extra)) || why "$k moved by $d; refusals seen: $refused + $extra" \
    "$(grep -F redirector_connections_refused_total <<<"$after")" || return 1
  k="redirector_connections_refused_total{reason=\"$other\"}"
  d=$(( $(metric_value "$after" "$k") - $(metric_value "$before" "$k") ))
  ((d == 0)) || why "$k moved by $d" || return 1
}

# 5,000 connections at once from pod-a (each sends one byte once connected,
# then holds 8 s) against a per-pod cap of 1,000: exactly 1,000 stay open,
# the rest are reset at once and counted as pod_limit; pod-c's client keeps
# working meanwhile.
h_5000_pod_cap() {
  local n=5000 cap=1000 f0 rss0 peak out before after log0 lines ov
  use_daemon "$HOSTILE_CONFIG" --max-connections-per-pod "$cap" --max-connections 4000 \
    || why "daemon with --max-connections-per-pod $cap --max-connections 4000 did not start:" \
      "$(tail -n 5 "$DAEMON_LOG")" || return 1
  f0=$(daemon_fds socket); rss0=$(daemon_rss_kb); ov=$(listen_overflows)
  before=$(daemon_metrics) || why "no /metrics" || return 1
  log0=$(wc -l <"$DAEMON_LOG")
  steady_start pod-c steady-5000
  daemon_rss_watch_start
  pod_bg pod-a burst "${PYH[@]}" conns "$INET_IP4" "$SINK_PORT" --count "$n" --hold 8 --send '\x00'
  wait "$POD_BG_PID"
  out=$(hostile_json burst)
  info "  burst: $out"
  info "  node ListenOverflows +$(( $(listen_overflows) - ov ))"
  peak=$(daemon_rss_watch_stop)
  after=$(daemon_metrics)
  steady_check steady-5000 "pod-c during pod-a's burst" || return 1
  burst_checks "$out" "$n" "$cap" pod_limit "$before" "$after" 0 || return 1
  lines=$(tail -n "+$((log0 + 1))" "$DAEMON_LOG" | grep -c "connection limit reached" || true)
  info "  'connection limit reached' log lines: $lines"
  ((lines >= 1)) || why "no 'connection limit reached' line in the daemon log" || return 1
  ((lines <= 10)) || why "$lines 'connection limit reached' lines: not rate-limited" || return 1
  rss_within "$rss0" "$peak" $(( RSS_SLACK_KB + cap * RSS_PER_CONN_KB )) "5,000 connections, $cap held" || return 1
  back_to_idle "$f0" "after the burst" || return 1
  out=$(probe pod-a tcp-echo "$INET_IP4" 7007 2>&1) || why "pod-a after the burst: $out" || return 1
}
t_hostile_5000_pod_cap() { hostile_test h_5000_pod_cap; }

# The same burst against a global cap of 1,500 only: 1,500 held, 3,500
# reset at once and counted as global_limit; while the cap is full another
# pod's connect is refused at once too (never queued), and works after.
h_5000_global_cap() {
  local n=5000 cap=1500 f0 rss0 peak out before after ready=$WORK/burst-global.ready other ov
  # The per-pod cap defaults to half the node cap: lift it, so that one
  # pod can fill the node cap.
  use_daemon "$HOSTILE_CONFIG" --max-connections "$cap" --max-connections-per-pod "$n" \
    || why "daemon with --max-connections $cap did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  f0=$(daemon_fds socket); rss0=$(daemon_rss_kb); ov=$(listen_overflows)
  before=$(daemon_metrics) || why "no /metrics" || return 1
  daemon_rss_watch_start
  rm -f "$ready"
  pod_bg pod-a burst-global "${PYH[@]}" conns "$INET_IP4" "$SINK_PORT" --count "$n" --hold 10 \
    --ready "$ready" --send '\x00'
  local burst_pid=$POD_BG_PID
  wait_for 10 "the burst connected" test -s "$ready" || return 1
  sleep 2
  other=$(in_pod pod-c "${PYH[@]}" conns "$INET_IP4" "$SINK_PORT" --count 1 --hold 2 --send '\x00')
  info "  pod-c while the cap is full: $other"
  [[ $(jget "$other" open) == 0 ]] || why "pod-c got a connection beyond the global cap:" "$other" || return 1
  p_le "$other" end_ms.max 1000 || why "pod-c was not refused at once:" "$other" || return 1
  wait "$burst_pid"
  out=$(hostile_json burst-global)
  info "  burst: $out"
  info "  node ListenOverflows +$(( $(listen_overflows) - ov ))"
  peak=$(daemon_rss_watch_stop)
  after=$(daemon_metrics)
  burst_checks "$out" "$n" "$cap" global_limit "$before" "$after" 1 || return 1
  rss_within "$rss0" "$peak" $(( RSS_SLACK_KB + cap * RSS_PER_CONN_KB )) "5,000 connections, $cap held" || return 1
  back_to_idle "$f0" "after the burst" || return 1
  out=$(probe pod-c tcp-echo "$INET_IP4" 7007 2>&1) || why "pod-c after the burst: $out" || return 1
}
t_hostile_5000_global_cap() { hostile_test h_5000_global_cap; }

# ---------------------------------------------------------------- upstream faults

# curl_bg NAME CURL-ARGS...: a download from pod-a in the background.
curl_bg() {
  local name=$1; shift
  pod_bg pod-a "$name" curl -q -sS -k --max-time 30 -o "$WORK/$name.bin" -w '%{http_code}\n' "$@"
}

# The proxy dies under a running download (SIGKILL; then a proxy that
# resets both sides after 1 MiB): the client sees the end within seconds,
# never a hang.
h_upstream_killed() {
  local pid t0 ms rc
  use_daemon "$FAULT_CONFIG" || why "daemon with $FAULT_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  rm -f "$WORK/killed.bin"
  curl_bg killed --limit-rate 4M "https://$INET_IP4/bytes/67108864"
  pid=$POD_BG_PID
  wait_for 10 "the download under way" \
    eval "(( \$(stat -c %s '$WORK/killed.bin' 2>/dev/null || echo 0) > 2097152 ))" || return 1
  t0=$(now_ms)
  fake_proxy_kill
  rc=0; wait "$pid" || rc=$?
  ms=$(( $(now_ms) - t0 ))
  info "  proxy killed mid-transfer: curl exit $rc ${ms} ms after the kill, $(stat -c %s "$WORK/killed.bin") bytes"
  ((rc != 0)) || why "curl succeeded although the proxy died mid-transfer" || return 1
  ((rc != 28)) || why "curl hung until its own timeout (exit 28)" || return 1
  # What the sockets on the way had buffered still drains at 4 MB/s first.
  within_ms "$ms" 10000 "the end of the transfer reaching the client" || return 1
  kill -0 "$DAEMON_PID" 2>/dev/null || why "the daemon died" || return 1

  fake_proxy_mode abort-after 1048576
  fake_proxy_up || return 1
  t0=$(now_ms)
  rc=0; pod_curl pod-a -k -o /dev/null --max-time 20 "https://$INET_IP4/bytes/16777216" 2>/dev/null || rc=$?
  ms=$(( $(now_ms) - t0 ))
  info "  proxy reset both sides after 1 MiB: curl exit $rc after ${ms} ms"
  ((rc != 0 && rc != 28)) || why "curl exit $rc after a reset tunnel, expected an error (not a timeout)" || return 1
  within_ms "$ms" 3000 "a reset tunnel reaching the client" || return 1
}
t_upstream_killed() { hostile_test h_upstream_killed; }

# The proxy answers CONNECT with 403, 407 or 502, closes without a word,
# answers garbage, or sends a response head that never ends: each time the
# client fails within a second, nothing reaches the origin, the daemon says
# why and counts it. Plain HTTP gets the proxy's status as it is.
h_upstream_status() {
  local code port=7011 before after k d out rss0 peak
  use_daemon "$FAULT_CONFIG" || why "daemon with $FAULT_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  for code in 403 407 502; do
    fake_proxy_mode status "$code"
    before=$(daemon_metrics)
    expect_prompt_failure "CONNECT answered $code" -k "https://$INET_IP4:$port/status-$code" || return 1
    wait_for 2 "daemon log names the $code for $INET_IP4:$port" \
      eval "grep 'CONNECT $INET_IP4:$port' '$DAEMON_LOG' | grep -q ': $code'" \
      || why "daemon log:" "$(tail -n 3 "$DAEMON_LOG")" || return 1
    k=upstream_refused; [[ $code == 407 ]] && k=auth_failed
    wait_for 2 "outcome $k counted" eval "(( \$(metric_value \"\$(daemon_metrics)\" 'redirector_connection_outcomes_total{outcome=\"$k\"}') > $(metric_value "$before" "redirector_connection_outcomes_total{outcome=\"$k\"}") ))" \
      || why "outcome $k not counted for a $code" || return 1
    out=$(pod_curl pod-a -s -o /dev/null -w '%{http_code}' "http://$INET_IP4/status-plain-$code" 2>&1)
    [[ $out == "$code" ]] || why "plain HTTP through a proxy answering $code: got '$out'" || return 1
  done
  fake_proxy_mode close
  expect_prompt_failure "CONNECT closed unanswered" -k "https://$INET_IP4:$port/closed" || return 1
  fake_proxy_mode garbage
  expect_prompt_failure "CONNECT answered with garbage" -k "https://$INET_IP4:$port/garbage" || return 1
  rss0=$(daemon_rss_kb)
  daemon_rss_watch_start
  fake_proxy_mode endless-head
  expect_prompt_failure "CONNECT answered with an endless head" -k "https://$INET_IP4:$port/endless-head" || return 1
  peak=$(daemon_rss_watch_stop)
  rss_within "$rss0" "$peak" 4096 "an endless CONNECT answer" || return 1
  after=$(grep -c "upstream failed" "$DAEMON_LOG" || true)
  ((after >= 6)) || why "expected a warn line per failed tunnel (6), found $after" || return 1
}
t_upstream_status() { hostile_test h_upstream_status; }

# Slow CONNECT answers are bounded by --connect-timeout (2 s here): an
# answer after 4 s fails the client at ~2 s, one after 0.5 s works; a proxy
# address that never answers (no ARP) fails at the timeout too.
h_upstream_slow() {
  local t0 ms out rc silent=$WORK/silent-proxy-config.json
  use_daemon "$FAULT_CONFIG" --connect-timeout 2 \
    || why "daemon with --connect-timeout 2 did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  fake_proxy_mode delay 4
  t0=$(now_ms)
  out=$(pod_curl pod-a -k --max-time 8 "https://$INET_IP4/slow-connect" 2>&1); rc=$?
  ms=$(( $(now_ms) - t0 ))
  info "  CONNECT answered after 4 s: curl exit $rc after ${ms} ms"
  ((rc != 0 && rc != 28)) || why "curl exit $rc, expected a prompt error:" "$out" || return 1
  ((ms >= 1500 && ms < 3500)) || why "failed after ${ms} ms, expected about 2000 (--connect-timeout 2)" || return 1
  wait_for 2 "daemon log says timed out" grep -q "timed out" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 3 "$DAEMON_LOG")" || return 1
  fake_proxy_mode delay 0.5
  out=$(pod_curl pod-a -k "https://$INET_IP4/slow-but-in-time" 2>&1) \
    || why "CONNECT answered after 0.5 s (under the timeout) failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 " "slow but in time" || return 1
  write_config "$silent" "http://$SILENT_PROXY_IP:$FAKE_PROXY_PORT/" "http://$SILENT_PROXY_IP:$FAKE_PROXY_PORT/" "$POLICY_NOPROXY"
  use_daemon "$silent" --connect-timeout 2 \
    || why "daemon with $silent did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  t0=$(now_ms)
  out=$(pod_curl pod-a -k --max-time 8 "https://$INET_IP4/silent-proxy" 2>&1); rc=$?
  ms=$(( $(now_ms) - t0 ))
  info "  proxy address that never answers: curl exit $rc after ${ms} ms"
  ((rc != 0 && rc != 28)) || why "curl exit $rc, expected a prompt error:" "$out" || return 1
  ((ms < 3500)) || why "failed after ${ms} ms, expected about 2000 (--connect-timeout 2)" || return 1
}
t_upstream_slow() { hostile_test h_upstream_slow; }

# The proxy goes away and comes back: meanwhile clients are refused at once
# (never sent direct); afterwards new connections work, with the same
# daemon process.
h_upstream_restarted() {
  local pid out t0 ms o
  use_daemon "$FAULT_CONFIG" || why "daemon with $FAULT_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  pid=$DAEMON_PID
  out=$(probe pod-a tcp-echo "$INET_IP4" 7007 2>&1) || why "before: $out" || return 1
  fake_proxy_kill
  expect_prompt_failure "proxy down (TLS)" -k "https://$INET_IP4/proxy-down" || return 1
  o=$(origin_count)
  t0=$(now_ms)
  out=$(probe pod-a tcp-echo "$INET_IP4" 7007 2>&1) && why "raw TCP with the proxy down succeeded:" "$out" && return 1
  ms=$(( $(now_ms) - t0 ))
  within_ms "$ms" 1000 "raw TCP with the proxy down ($out)" || return 1
  expect_empty "$(origin_since "$o")" "origin log while the proxy is down" || return 1
  fake_proxy_up || return 1
  t0=$(now_ms)
  wait_for 2 "a connection through the restarted proxy" probe pod-a tcp-echo "$INET_IP4" 7007 \
    || why "no connection got through within 2 s of the proxy's restart" || return 1
  info "  through again $(( $(now_ms) - t0 )) ms after the proxy listened"
  out=$(pod_curl pod-a -k "https://$INET_IP4/proxy-back" 2>&1) || why "TLS after the restart: $out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 " "TLS after the proxy's restart" || return 1
  [[ $DAEMON_PID == "$pid" ]] && kill -0 "$pid" 2>/dev/null || why "the daemon was restarted or died" || return 1
}
t_upstream_restarted() { hostile_test h_upstream_restarted; }

# failmode_config FILE MODE: FAULT_CONFIG's proxies, with failMode MODE
# ("" leaves the key out).
failmode_config() {
  local key=""
  [[ -n $2 ]] && key="\"failMode\":\"$2\","
  printf '{%s"httpProxy":"%s","httpsProxy":"%s","noProxy":%s,"trustedCA":"%s"}\n' \
    "$key" "$FAKE_PROXY_URL" "$FAKE_PROXY_URL" "$POLICY_NOPROXY" "$CA_B64" >"$1.tmp"
  mv -f "$1.tmp" "$1"
}
reloads() { grep -c "config reloaded" "$DAEMON_LOG" || true; }
# reload_to FILE MODE: rewrite the daemon's config and wait until it is in force.
reload_to() {
  local n
  n=$(reloads)
  failmode_config "$1" "$2"
  wait_for 3 "config reloaded (failMode ${2:-default})" eval "(( \$(reloads) > $n ))" \
    || why "no reload after writing failMode '$2':" "$(tail -n 3 "$DAEMON_LOG")"
}
# echo_through WHAT WANT-CLIENT: a raw TCP echo works and the origin saw WANT-CLIENT
echo_through() {
  local o out
  o=$(origin_count)
  out=$(probe pod-a tcp-echo "$INET_IP4" 7007 2>&1) || why "$1: $out" || return 1
  expect_match "$(origin_since "$o")" "^ECHO client=$2 open" "$1: the origin saw" || return 1
}
# echo_refused WHAT: the echo fails within a second and nothing reaches the origin
echo_refused() {
  local o out t0 ms
  o=$(origin_count)
  t0=$(now_ms)
  out=$(probe pod-a tcp-echo "$INET_IP4" 7007 2>&1) && why "$1: the echo worked:" "$out" && return 1
  ms=$(( $(now_ms) - t0 ))
  within_ms "$ms" 1000 "$1 ($out)" || return 1
  sleep 0.3
  expect_empty "$(origin_since "$o")" "$1: origin log (no byte may reach it)" || return 1
}

# failMode: closed (the default) never leaks; open connects direct when the
# proxy is unreachable (the origin sees the node's address), but not when
# the proxy answers and refuses, and still uses a proxy that works.
# Switched by hot reload.
h_fail_mode() {
  local cfg=$WORK/failmode-config.json o out
  failmode_config "$cfg" ""
  use_daemon "$cfg" || why "daemon with $cfg did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  echo_through "default, proxy up" "$INET_IP4" || return 1
  fake_proxy_kill
  echo_refused "default (closed), proxy down" || return 1
  reload_to "$cfg" open || return 1
  echo_through "failMode open, proxy down: direct" "$NODE_IP4" || return 1
  o=$(origin_count)
  out=$(pod_curl pod-a "http://$INET_IP4/fail-open-http" 2>&1) || why "plain HTTP, failMode open, proxy down:" "$out" || return 1
  expect_contains "$out" "origin ok client=$NODE_IP4 " "plain HTTP, failMode open, proxy down: direct from the node" || return 1
  out=$(pod_curl pod-a -k "https://$INET_IP4/fail-open-tls" 2>&1) || why "TLS, failMode open, proxy down:" "$out" || return 1
  expect_contains "$out" "origin ok client=$NODE_IP4 " "TLS, failMode open, proxy down: direct from the node" || return 1
  fake_proxy_mode status 403
  fake_proxy_up || return 1
  echo_refused "failMode open, proxy answers 403 (a refusal is not an outage)" || return 1
  fake_proxy_mode tunnel
  echo_through "failMode open, proxy up: still through it" "$INET_IP4" || return 1
  reload_to "$cfg" closed || return 1
  fake_proxy_kill
  echo_refused "failMode closed (after a reload), proxy down" || return 1
  o=$(origin_count)
  out=$(pod_curl pod-a -s -o /dev/null -w '%{http_code}' "http://$INET_IP4/fail-closed-http" 2>&1)
  [[ $out != 200 ]] || why "plain HTTP, failMode closed, proxy down: answered 200" || return 1
  expect_empty "$(origin_since "$o")" "plain HTTP, failMode closed: origin log" || return 1
}
t_fail_mode() { hostile_test h_fail_mode; }

HOSTILE_TESTS=(hostile_silent:t_hostile_silent hostile_endless:t_hostile_endless
  hostile_slowloris:t_hostile_slowloris hostile_half_close:t_hostile_half_close
  hostile_5000_pod_cap:t_hostile_5000_pod_cap hostile_5000_global_cap:t_hostile_5000_global_cap
  upstream_killed:t_upstream_killed upstream_status:t_upstream_status
  upstream_slow:t_upstream_slow upstream_restarted:t_upstream_restarted
  fail_mode:t_fail_mode)
