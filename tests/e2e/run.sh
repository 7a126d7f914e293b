#!/usr/bin/env bash
# End-to-end tests of egress-redirector on a node in miniature (see lib.sh).
#
#   sudo REDIRECTOR_BIN=target/release/redirector MITMDUMP=/path/to/mitmdump \
#       tests/e2e/run.sh
#
# Must run as root. Prints PASS/FAIL per test and ends with
# "N passed, M failed"; exits non-zero if anything failed or setup failed.
# Logs of the last run stay in $RDE_WORK (default /tmp/rde-e2e).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PASSED=0
FAILED=0
SETUP_DONE=0
FLOW_BASELINE=0      # flow-log lines before the first redirected connection
EXPECTED_CONNECTS=0  # redirected client connections made so far

# ---------------------------------------------------------------- helpers

# Reasons go to stderr, indented under the test name.
why() { printf '    %s\n' "$@" >&2; return 1; }

expect_contains() { # expect_contains TEXT NEEDLE WHAT
  [[ $1 == *"$2"* ]] || why "$3: expected to find '$2' in:" "$(printf '%s' "$1" | tail -n 20)"
}
expect_not_contains() {
  [[ $1 != *"$2"* ]] || why "$3: did not expect '$2' in:" "$(printf '%s' "$1" | tail -n 20)"
}
expect_match() { # expect_match TEXT ERE WHAT
  grep -Eq -- "$2" <<<"$1" || why "$3: expected a line matching /$2/ in:" "$(printf '%s' "$1" | tail -n 20)"
}
expect_count() { # expect_count TEXT ERE N WHAT
  local n
  n=$(grep -Ec -- "$2" <<<"$1" || true)
  [[ $n == "$3" ]] || why "$4: expected $3 line(s) matching /$2/, found $n in:" "$(printf '%s' "$1" | tail -n 20)"
}
expect_empty() { # expect_empty TEXT WHAT
  [[ -z $1 ]] || why "$2: expected nothing, got:" "$(printf '%s' "$1" | tail -n 20)"
}

diagnostics() {
  local f
  for f in "$DAEMON_LOG" "$FLOW_LOG" "$ORIGIN_LOG" "$WORK/mitmdump.out"; do
    [[ -s $f ]] || continue
    printf '    --- tail of %s\n' "$f" >&2
    tail -n 12 "$f" | sed 's/^/    | /' >&2
  done
}

# check NAME FUNC: run one test; never aborts the run (a function called
# in an `if` runs with errexit off, so each test checks its steps itself).
check() {
  local name=$1; shift
  info "--- $name"
  if "$@"; then
    echo "PASS $name"
    PASSED=$((PASSED + 1))
  else
    echo "FAIL $name"
    FAILED=$((FAILED + 1))
    diagnostics
  fi
}

skip_as_failed() { # a test that could not run counts as failed, never as passed
  echo "FAIL $1 (not run: $2)"
  FAILED=$((FAILED + 1))
}

on_exit() {
  local rc=$?
  trap - EXIT
  if ((!SETUP_DONE)); then
    echo "FAIL setup (exit $rc; see messages above and logs in $WORK)"
    FAILED=$((FAILED + 1))
    if ((LOCK_HELD)); then diagnostics; fi
  fi
  info "cleaning up"
  node_down_if_ours
  echo "$PASSED passed, $FAILED failed"
  if ((FAILED > 0)); then exit 1; fi
  exit 0
}

# ---------------------------------------------------------------- tests

# 1. A bad config is rejected up front: non-zero exit, names file and field,
#    attaches nothing.
t_invalid_config() {
  local unknown=$WORK/bad-unknown-key.json malformed=$WORK/bad-malformed.json
  local f out rc args
  sed 's/"httpsProxy"/"httpsProxyy"/' "$PROXY_CONFIG" >"$unknown"
  printf '{"httpProxy": "http://%s:%s/", "httpsProxy": \n' "$INET_IP4" "$PROXY_PORT" >"$malformed"
  for f in "$unknown" "$malformed"; do
    mapfile -t args < <(daemon_run_args "$f")
    out=$(in_cgroup_netns "$CG_ROOT/system/redirector" "$NS_NODE" \
      timeout 20 "$REDIRECTOR_BIN" "${args[@]}" 2>&1)
    rc=$?
    ((rc != 0)) || why "$(basename "$f"): exit status 0, expected an error" || return 1
    ((rc != 124)) || why "$(basename "$f"): still running after 20 s (timeout)" || return 1
    expect_contains "$out" "$f" "$(basename "$f"): error names the file" || return 1
    if [[ $f == "$unknown" ]]; then
      expect_contains "$out" "httpsProxyy" "unknown key: error names the field" || return 1
    fi
    ! pins_present || why "$(basename "$f"): objects pinned under $PIN_DIR:" \
      "$(find "$PIN_DIR" -mindepth 1)" || return 1
    info "  $(basename "$f"): exit $rc: $(head -n 3 <<<"$out" | tr '\n' ' ')"
  done
  # and no hook is active: a pod still connects directly
  out=$(pod_curl pod-a "http://$INET_IP4/after-invalid-config" 2>&1) \
    || why "pod-a curl failed after the rejected configs: $out" || return 1
  expect_contains "$out" "client=$POD_A_IP4 " "pod-a still direct" || return 1
}

# 2. HTTPS with no proxy settings in the pod ends up MITMed by mitmproxy.
t_https() {
  local m out leaf new
  m=$(flow_count)
  # The certificate first, with openssl (shows it even if it does not verify).
  EXPECTED_CONNECTS=$((EXPECTED_CONNECTS + 1))
  out=$(in_pod pod-a timeout 10 openssl s_client -connect "$INET_IP4:443" -servername origin.test \
    -CAfile "$CA_CERT" </dev/null 2>&1)
  leaf=$(openssl x509 -noout -issuer -ext authorityKeyIdentifier 2>/dev/null <<<"$out")
  expect_match "$leaf" "issuer=.*egress-redirector" "certificate issued by our MITM CA" || return 1
  if [[ $out != *"Verify return code: 0 (ok)"* ]]; then
    why "the MITM certificate does not verify against $CA_CERT:" \
      "$(grep -E 'verify error|Verify return code' <<<"$out")" \
      "leaf: $(tr '\n' ' ' <<<"$leaf")" \
      "CA:   $(openssl x509 -in "$CA_CERT" -noout -subject -ext subjectKeyIdentifier 2>&1 | tr '\n' ' ')"
    return 1
  fi
  # Then a real request, as an application would make it.
  EXPECTED_CONNECTS=$((EXPECTED_CONNECTS + 1))
  out=$(pod_curl pod-a -v --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
    https://origin.test/https-test 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/https-test" "body (client = the proxy)" || return 1
  expect_match "$out" "issuer:.*egress-redirector" "curl saw our MITM CA as issuer" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:443 " 2 "flow log: one CONNECT per connection (openssl, curl)" || return 1
  expect_match "$new" "^REQUEST GET https://origin.test/https-test " "flow log: the request" || return 1
}

# 3. Plain HTTP goes through the tunnel too.
t_http() {
  local m out new
  m=$(flow_count)
  EXPECTED_CONNECTS=$((EXPECTED_CONNECTS + 1))
  out=$(pod_curl pod-a "http://$INET_IP4/http-test" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/http-test" "body (client = the proxy)" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:80 " 1 "flow log: one CONNECT" || return 1
  expect_match "$new" "^REQUEST GET http://$INET_IP4/http-test " "flow log: the request" || return 1
}

# 4. Raw TCP (not HTTP) is tunnelled byte for byte.
t_tcp_echo() {
  local m o out new
  m=$(flow_count); o=$(origin_count)
  EXPECTED_CONNECTS=$((EXPECTED_CONNECTS + 1))
  out=$(probe pod-a tcp-echo "$INET_IP4" 7007 --bytes 65536 2>&1) || why "$out" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:7007 " 1 "flow log: one CONNECT" || return 1
  expect_match "$new" "^TCP $INET_IP4:7007 " "flow log: raw TCP stream" || return 1
  expect_match "$(origin_since "$o")" "^ECHO client=$INET_IP4 open" "echo server saw the proxy" || return 1
}

# 5. IPv6 destinations (connect6 hook, v6 listener).
t_ipv6() {
  local m out new
  m=$(flow_count)
  EXPECTED_CONNECTS=$((EXPECTED_CONNECTS + 1))
  out=$(pod_curl pod-a "http://[$INET_IP6]/v6-test" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP6 path=/v6-test" "body (client = the proxy)" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT \[$INET_IP6\]:80 " 1 "flow log: one CONNECT to the v6 authority" || return 1
  expect_match "$new" "^REQUEST GET http://\[$INET_IP6\]/v6-test " "flow log: the request" || return 1
}

# 6. An AF_INET6 socket connecting to an IPv4-mapped address is IPv4 traffic
#    that only the connect6 hook sees.
t_v4_mapped() {
  local m out new
  m=$(flow_count)
  EXPECTED_CONNECTS=$((EXPECTED_CONNECTS + 1))
  out=$(probe pod-a tcp-echo "::ffff:$INET_IP4" 7007 --family 6 2>&1) || why "$out" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT ($INET_IP4|\[::ffff:$INET_IP4\]):7007 " 1 "flow log: one CONNECT" || return 1
  expect_match "$new" "^TCP " "flow log: raw TCP stream" || return 1
}

# 7. An exempt cgroup connects directly.
t_exempt() {
  local m out before after
  m=$(flow_count)
  before=$(status_counter skipped_cgroup) || why "status has no skipped_cgroup:" "$(redirector_status 2>&1)" || return 1
  out=$(pod_curl pod-b "http://$INET_IP4/exempt-test" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$POD_B_IP4 path=/exempt-test" "body (client = pod-b itself)" || return 1
  expect_empty "$(flow_since "$m")" "flow log" || return 1
  after=$(status_counter skipped_cgroup)
  ((after > before)) || why "skipped_cgroup did not grow ($before -> $after)" || return 1
}

# 8. noProxy CIDRs are not redirected.
t_noproxy() {
  local m out before after
  m=$(flow_count)
  before=$(status_counter skipped_bypass) || why "status has no skipped_bypass:" "$(redirector_status 2>&1)" || return 1
  out=$(pod_curl pod-a "http://$NOPROXY_IP4/noproxy-test" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$POD_A_IP4 path=/noproxy-test" "body (client = pod-a itself)" || return 1
  expect_empty "$(flow_since "$m")" "flow log" || return 1
  after=$(status_counter skipped_bypass)
  ((after > before)) || why "skipped_bypass did not grow ($before -> $after)" || return 1
}

# 9. The listener is not an open proxy: a connection that the hook did not
#    redirect (process in the pod's netns but outside the attach root) gets
#    no answer at all.
t_open_proxy() {
  local m o out rc dst
  m=$(flow_count); o=$(origin_count)
  out=$(in_netns "$NS_POD_A" curl -q -sS --max-time 5 -x "http://$NODE_IP4:$LISTEN_PORT" \
    "http://$INET_IP4/open-proxy" 2>&1)
  rc=$?
  # 52 = empty reply, 56 = reset while reading, 7 = reset before curl saw the
  # connect complete (the raw probes below prove something does listen).
  # 0 = it proxied, 28 = it kept us hanging.
  [[ $rc == 52 || $rc == 56 || $rc == 7 ]] \
    || why "curl -x via the listener: exit $rc, expected 52, 56 or 7:" "$out" || return 1
  info "  curl -x $NODE_IP4:$LISTEN_PORT: exit $rc"
  # A raw CONNECT line, to both listeners: connect() must succeed (someone
  # listens), then the daemon closes or resets without sending a byte.
  for dst in "$NODE_IP4" "$NODE_IP6"; do
    out=$(in_netns "$NS_POD_A" "$PYTHON" "$E2E_DIR/netprobe.py" raw-send "$dst" "$LISTEN_PORT" \
      "CONNECT $INET_IP4:80 HTTP/1.1\r\nHost: $INET_IP4:80\r\n\r\n" 2>&1) \
      || why "raw CONNECT to $dst port $LISTEN_PORT: $out" || return 1
    info "  raw CONNECT to $dst port $LISTEN_PORT: $out"
  done
  expect_empty "$(flow_since "$m")" "flow log" || return 1
  expect_empty "$(origin_since "$o")" "origin log" || return 1
}

# 10. The daemon's own upstream connects (it sits under the attach root) are
#     skipped by SO_MARK: no loop, one CONNECT per client connection.
t_no_loop() {
  local mark all
  mark=$(status_counter skipped_mark) || why "status has no skipped_mark:" "$(redirector_status 2>&1)" || return 1
  ((mark > 0)) || why "skipped_mark is $mark after $EXPECTED_CONNECTS proxied connections" || return 1
  all=$(flow_since "$FLOW_BASELINE")
  expect_count "$all" "^CONNECT (${NODE_IP4//./\\.}|\\[$NODE_IP6\\]):[0-9]+ |^CONNECT [^ ]*:($LISTEN_PORT|$PROXY_PORT) " 0 \
    "flow log: CONNECTs to the listener or the proxy itself" || return 1
  expect_count "$all" "^CONNECT " "$EXPECTED_CONNECTS" "flow log: CONNECTs since the daemon started" || return 1
}

# 11. UDP is not touched.
t_udp() {
  local out
  out=$(probe pod-a udp-echo "$INET_IP4" 7008 2>&1) || why "$out" || return 1
  expect_contains "$out" "udp ok client=$POD_A_IP4 " "answer (client = pod-a itself)" || return 1
}

# 12. Fail closed: with the daemon SIGKILLed the hook stays, connects are
#     refused at once and nothing reaches the origin.
t_fail_closed() {
  local o out rc t0 ms
  o=$(origin_count)
  [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null || why "daemon not running before the kill" || return 1
  kill -KILL "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  DAEMON_PID=""
  t0=$(now_ms)
  out=$(pod_curl pod-a --max-time 5 "http://$INET_IP4/fail-closed" 2>&1)
  rc=$?
  ms=$(( $(now_ms) - t0 ))
  ((rc == 7)) || why "curl exit $rc after ${ms} ms, expected 7 (connection refused):" "$out" || return 1
  ((ms < 2000)) || why "curl took ${ms} ms to fail, expected < 2000" || return 1
  out=$(probe pod-a connect "$INET_IP4" 80 2>&1)
  expect_contains "$out" "ECONNREFUSED" "plain connect() errno" || return 1
  expect_empty "$(origin_since "$o")" "origin log" || return 1
  out=$(redirector_status 2>&1) || why "status without the daemon failed:" "$out" || return 1
  expect_contains "$out" "redirected:" "status without the daemon" || return 1
}

# 13. A new instance takes over the pins of a dead one: the old links go
#     (were they still attached, their connect4 would redirect first into
#     the old maps, and the new daemon would reset the connection).
t_restart() {
  local out
  pins_present || why "no pins left by the killed daemon" || return 1
  start_daemon || why "restart failed:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  expect_contains "$(cat "$DAEMON_LOG")" "taking over" "daemon log" || return 1
  out=$(pod_curl pod-a "http://$INET_IP4/after-restart" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/after-restart" "body (client = the proxy)" || return 1
}

# expect_prompt_failure URL WHAT: a pod's request fails (reset or closed,
# never answered, never direct) within a second.
expect_prompt_failure() {
  local o out rc t0 ms
  o=$(origin_count)
  t0=$(now_ms)
  out=$(pod_curl pod-a --max-time 5 "$1" 2>&1)
  rc=$?
  ms=$(( $(now_ms) - t0 ))
  info "  curl $1: exit $rc after ${ms} ms"
  [[ $rc == 52 || $rc == 56 || $rc == 7 ]] || why "$2: curl exit $rc, expected 52, 56 or 7:" "$out" || return 1
  ((ms < 1000)) || why "$2: took ${ms} ms, expected < 1000" || return 1
  expect_empty "$(origin_since "$o")" "$2: origin log (nothing may go direct)" || return 1
}

# 14. The proxy refuses the CONNECT (403): the client is closed promptly and
#     the daemon says why.
t_upstream_refused() {
  expect_prompt_failure "http://$INET_IP4:$REFUSED_PORT/refused" "CONNECT refused" || return 1
  wait_for 2 "daemon log names the 403" grep -q "refused CONNECT $INET_IP4:$REFUSED_PORT: 403" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
}

# 15. The proxy is unreachable: the same, and never a direct connection.
t_upstream_unreachable() {
  local dead=$WORK/proxy-config-dead.json
  sed "s/:$PROXY_PORT\//:$DEAD_PROXY_PORT\//g" "$PROXY_CONFIG" >"$dead"
  stop_daemon
  start_daemon "$dead" || why "start with $dead failed:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  expect_prompt_failure "http://$INET_IP4/unreachable" "proxy unreachable" || return 1
  wait_for 2 "daemon log names the failure" grep -q "unreachable" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
}

# 16. detach removes the hooks and the pins; pods connect directly again.
t_detach() {
  local out
  out=$(timeout 20 "$REDIRECTOR_BIN" detach --bpffs "$PIN_DIR" 2>&1) || why "detach failed:" "$out" || return 1
  ! pins_present || why "still pinned after detach:" "$(find "$PIN_DIR" -mindepth 1)" || return 1
  out=$(pod_curl pod-a "http://$INET_IP4/detached" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$POD_A_IP4 path=/detached" "body (client = pod-a itself)" || return 1
}

# ---------------------------------------------------------------- main

DAEMON_TESTS=(https:t_https http:t_http tcp_echo:t_tcp_echo ipv6:t_ipv6
  v4_mapped:t_v4_mapped exempt_cgroup:t_exempt noproxy_cidr:t_noproxy
  open_proxy_refused:t_open_proxy no_loop:t_no_loop udp_untouched:t_udp
  fail_closed:t_fail_closed restart_takeover:t_restart
  upstream_refused:t_upstream_refused upstream_unreachable:t_upstream_unreachable
  detach:t_detach)

main() {
  trap on_exit EXIT
  require_root
  require_prereqs
  info "redirector: $REDIRECTOR_BIN"
  info "mitmdump:   $MITMDUMP"
  node_up
  SETUP_DONE=1

  check invalid_config t_invalid_config

  local t
  if start_daemon; then
    FLOW_BASELINE=$(flow_count)
    for t in "${DAEMON_TESTS[@]}"; do
      check "${t%%:*}" "${t#*:}"
    done
  else
    echo "FAIL daemon_start"
    FAILED=$((FAILED + 1))
    diagnostics
    for t in "${DAEMON_TESTS[@]}"; do skip_as_failed "${t%%:*}" "daemon did not start"; done
  fi
}

main "$@"
