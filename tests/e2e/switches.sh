# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh and lib.sh
# Operator switches of the proxy configuration (issue 12): `refuseUdpPorts`
# and `allowOtherStreamProtocols` reach the kernel at start and on a hot
# reload, and a proxy URL with an unencoded delimiter in its password stops
# the daemon with the position and the fix named, never the password.
#
# The kernel's side of UDP refusal (sendmsg/connect, IPv6, v4-mapped,
# exempt pods) is tested elsewhere; these tests drive it through the
# configuration file. Sourced by run.sh after lib.sh; uses run.sh's why,
# expect_*, scrape and metric helpers. Each test that changes the daemon's
# configuration restores the standard daemon at its end, pass or fail.

SWITCH_CONFIG=$WORK/switches-config.json
SWITCH_UDP_PORTS=(443 8443)   # UDP echo servers in rde-inet while a test runs
SWITCH_UDP_PID=""

# switch_config EXTRA-JSON: the standard config plus EXTRA's keys, replacing
# $SWITCH_CONFIG atomically (a rename, as a ConfigMap update does).
switch_config() {
  "$PYTHON" - "$PROXY_CONFIG" "$1" "$SWITCH_CONFIG.tmp" <<'EOF' || return 1
import json, sys
config = json.load(open(sys.argv[1]))
config.update(json.loads(sys.argv[2]))
json.dump(config, open(sys.argv[3], "w"))
EOF
  mv -f "$SWITCH_CONFIG.tmp" "$SWITCH_CONFIG"
}

# reloads_logged: how many "config reloaded" lines the daemon logged.
reloads_logged() { grep -c "config reloaded" "$DAEMON_LOG" || true; }

# switch_reload EXTRA-JSON: rewrite the config and wait for the daemon to
# apply it (one more "config reloaded").
switch_reload() {
  local n
  n=$(reloads_logged)
  switch_config "$1" || return 1
  wait_for 5 "the reload of $1" eval "(( \$(grep -c 'config reloaded' '$DAEMON_LOG') > $n ))" \
    || why "no reload of $1:" "$(tail -n 5 "$DAEMON_LOG")"
}

# UDP echo servers on $SWITCH_UDP_PORTS in rde-inet, answering "udp PORT".
switch_udp_up() {
  bg switch-udp nsenter --net="/run/netns/$NS_INET" -- "$PYTHON" -c '
import select, socket, sys
socks = []
for port in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(port)))
    socks.append(s)
print("listening", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048)
        s.sendto(b"udp %d" % s.getsockname()[1], peer)
' "$INET_IP4" "${SWITCH_UDP_PORTS[@]}"
  SWITCH_UDP_PID=$!
  wait_for 5 "the UDP echo servers" grep -q listening "$WORK/switch-udp.out"
}
switch_udp_down() {
  [[ -n $SWITCH_UDP_PID ]] && kill_pids "$SWITCH_UDP_PID"
  wait "$SWITCH_UDP_PID" 2>/dev/null
  SWITCH_UDP_PID=""
}

# udp_verdicts PORT...: from pod-a, one datagram to rde-inet on each port
# (sendto on an unconnected socket); prints "PORT:refused" (EPERM from the
# kernel), "PORT:answered" or "PORT:<other>" per port, space-separated.
udp_verdicts() {
  in_pod pod-a "$PYTHON" -c '
import errno, socket, sys
out = []
for port in map(int, sys.argv[2:]):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(b"ping", (sys.argv[1], port))
        data = s.recv(64)
        out.append("%d:%s" % (port, "answered" if data == b"udp %d" % port else data))
    except OSError as e:
        out.append("%d:%s" % (port, "refused" if e.errno == errno.EPERM else errno.errorcode.get(e.errno, e)))
    finally:
        s.close()
print(" ".join(out))
' "$INET_IP4" "$@"
}

# expect_udp WANT WHAT: the verdicts for 443 and 8443 are WANT.
expect_udp() {
  local got
  got=$(udp_verdicts 443 8443 2>&1)
  [[ $got == "$1" ]] || why "$2: UDP from pod-a: expected '$1', got '$got'"
}

# status_line KEY: the value of one `KEY: value` line of `redirector status`.
status_line() {
  redirector_status 2>/dev/null | sed -n "s/^$1: //p"
}

# expect_status KEY WANT WHAT
expect_status() {
  local got
  got=$(status_line "$1")
  [[ $got == "$2" ]] || why "$3: status '$1: $got', expected '$2'"
}

# --- refuseUdpPorts: 443 by default; [443, 8443] and [] by hot reload,
#     seen by pods at once, by `status` and in the counters; a bad list is
#     refused whole and changes nothing.
t_switch_udp_ports() {
  local rc=0
  switch_udp_up || return 1
  switch_udp_ports_body || rc=1
  switch_udp_down
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}
switch_udp_ports_body() {
  local before after metrics_before metrics_after k='redirector_kernel_connects_total{reason="refused_udp"}'
  switch_config '{}' || return 1
  use_daemon "$SWITCH_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  before=$(status_counter refused_udp) || why "status has no refused_udp counter:" "$(redirector_status 2>&1)" || return 1
  metrics_before=$(scrape /metrics) || why "GET /metrics failed" || return 1
  expect_status refuse_udp_ports "443" "default" || return 1
  expect_udp "443:refused 8443:answered" "default (no refuseUdpPorts key)" || return 1
  after=$(status_counter refused_udp)
  ((after == before + 1)) || why "refused_udp: $before -> $after, expected one more" || return 1
  metrics_after=$(scrape /metrics) || why "GET /metrics failed" || return 1
  (( $(metric "$metrics_after" "$k") == $(metric "$metrics_before" "$k") + 1 )) \
    || why "/metrics $k: $(metric "$metrics_before" "$k") -> $(metric "$metrics_after" "$k")" || return 1

  switch_reload '{"refuseUdpPorts": [443, 8443]}' || return 1
  expect_udp "443:refused 8443:refused" "after the reload to [443, 8443]" || return 1
  expect_status refuse_udp_ports "443, 8443" "[443, 8443]" || return 1
  after=$(status_counter refused_udp)
  ((after == before + 3)) || why "refused_udp: $before -> $after, expected 3 more" || return 1

  switch_reload '{"refuseUdpPorts": []}' || return 1
  expect_udp "443:answered 8443:answered" "after the reload to []" || return 1
  expect_status refuse_udp_ports "none" "[]" || return 1

  # A bad list: refused, logged with the reason, the kernel's set unchanged.
  local n
  n=$(grep -c "config reload failed" "$DAEMON_LOG" || true)
  switch_config '{"refuseUdpPorts": [8443, 8443]}' || return 1
  wait_for 5 "the refused reload" eval "(( \$(grep -c 'config reload failed' '$DAEMON_LOG') > $n ))" \
    || why "no refused reload:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  expect_contains "$(grep "config reload failed" "$DAEMON_LOG" | tail -n 1)" "port 8443 is listed twice" \
    "the error names the duplicate" || return 1
  expect_udp "443:answered 8443:answered" "after a refused reload ([] stays)" || return 1

  # The key removed: the default again.
  switch_reload '{}' || return 1
  expect_udp "443:refused 8443:answered" "after the reload back to the default" || return 1
  expect_status refuse_udp_ports "443" "default again" || return 1
}

# --- allowOtherStreamProtocols reaches the kernel's CONFIG map, at start
#     and on a hot reload (`status` reads the pinned map). This kernel has
#     no SCTP or SMC (socket() answers EPROTONOSUPPORT before any hook
#     runs), so the refusal itself cannot be shown here; MPTCP, which must
#     stay redirected, is still created whatever the flag.
t_switch_other_streams() {
  local rc=0
  switch_other_streams_body || rc=1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}
switch_other_streams_body() {
  local out
  switch_config '{"allowOtherStreamProtocols": true}' || return 1
  use_daemon "$SWITCH_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  expect_status allow_other_stream_protocols true "at start with true" || return 1
  expect_contains "$(timeout 10 "$REDIRECTOR_BIN" status --bpffs "$PIN_DIR" --json 2>&1)" \
    '"allow_other_stream_protocols":true' "status --json" || return 1
  switch_reload '{"allowOtherStreamProtocols": false}' || return 1
  expect_status allow_other_stream_protocols false "after the reload to false" || return 1
  switch_reload '{}' || return 1
  expect_status allow_other_stream_protocols false "default" || return 1
  switch_reload '{"allowOtherStreamProtocols": true}' || return 1
  expect_status allow_other_stream_protocols true "after the reload to true" || return 1
  out=$(in_pod pod-a "$PYTHON" -c '
import socket
for name, proto in (("sctp", 132), ("mptcp", 262)):
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto).close()
        print(name, "created")
    except OSError as e:
        print(name, e.strerror)
' 2>&1)
  info "  in pod-a: $(tr '\n' ';' <<<"$out")"
  expect_contains "$out" "mptcp created" "MPTCP socket in pod-a" || return 1
}

# --- a proxy URL whose password holds an unencoded `/` or `@` stops the
#     daemon at start: exit non-zero, the message names the field, the
#     character's position and the fix (percent-encode), and never the
#     password; nothing is pinned. The percent-encoded forms are accepted
#     (`explain` parses the file as the daemon does).
t_switch_url_delimiters() {
  local secret_a=K9qv secret_b=zT4w f out rc args bpffs=$WORK/bpffs-url-test
  local proxy=$INET_IP4:$PROXY_PORT
  local -a bad=("http://user:$secret_a/$secret_b@$proxy/" "http://user:$secret_a@$secret_b@$proxy/"
    "http://us@er:$secret_a$secret_b@$proxy/")
  local -a want=("\`/\` at character 17" "characters 17, 22" "characters 10, 22")
  local i
  rm -rf "$bpffs"
  for i in "${!bad[@]}"; do
    f=$WORK/bad-url-$i.json
    write_config "$f" "" "${bad[$i]}" '["localhost"]'
    mapfile -t args < <(daemon_run_args "$f")
    args=("${args[@]/#$PIN_DIR/$bpffs}")
    out=$(in_cgroup_netns "$CG_ROOT/system/redirector" "$NS_NODE" \
      timeout 20 "$REDIRECTOR_BIN" "${args[@]}" 2>&1)
    rc=$?
    ((rc != 0 && rc != 124)) || why "${bad[$i]%%@*}...: exit status $rc, expected an error" "$out" || return 1
    expect_contains "$out" "field \`httpsProxy\`" "the error names the field" || return 1
    expect_contains "$out" "${want[$i]}" "the error names the position" || return 1
    expect_contains "$out" "percent-encode" "the error names the fix" || return 1
    expect_not_contains "$out" "$secret_a" "the error shows the password" || return 1
    expect_not_contains "$out" "$secret_b" "the error shows the password" || return 1
    [[ ! -e $bpffs ]] || why "the refused daemon created $bpffs" || return 1
    info "  $(grep -o 'field `httpsProxy`.*' <<<"$out" | head -n 1)"
  done
  for i in "http://user:$secret_a%2F$secret_b@$proxy/" "http://user:$secret_a%40$secret_b@$proxy/" \
    "http://us%40er:$secret_a$secret_b@$proxy/"; do
    f=$WORK/good-url.json
    write_config "$f" "" "$i" '["localhost"]'
    out=$(timeout 10 "$REDIRECTOR_BIN" explain --proxy-config "$f" "https://example.test/" 2>&1) \
      || why "explain refused the percent-encoded ${i%%@*}...:" "$out" || return 1
    expect_contains "$out" "decision: proxy" "explain with the percent-encoded URL" || return 1
  done
}

SWITCHES_TESTS=(switch_udp_ports:t_switch_udp_ports switch_other_streams:t_switch_other_streams
  switch_url_delimiters:t_switch_url_delimiters)
