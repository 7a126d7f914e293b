#!/usr/bin/env bash
# End-to-end tests of egress-redirector on a node in miniature (see lib.sh).
#
#   sudo REDIRECTOR_BIN=target/release/redirector MITMDUMP=/path/to/mitmdump \
#       tests/e2e/run.sh
#
# RDE_ONLY="name name..." runs only those of the tests after the daemon's
# start (for iterating; tests that count flow-log lines since the start,
# such as no_loop, expect the ones before them to have run).
#
# Must run as root. Prints PASS/FAIL per test and ends with
# "N passed, M failed"; exits non-zero if anything failed or setup failed.
# Logs of the last run stay in $RDE_WORK (default /tmp/rde-e2e).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=kube.sh
source "$(dirname "${BASH_SOURCE[0]}")/kube.sh"
# shellcheck source-path=SCRIPTDIR source=nodetraffic.sh
source "$(dirname "${BASH_SOURCE[0]}")/nodetraffic.sh"
# shellcheck source-path=SCRIPTDIR source=cainject.sh
source "$(dirname "${BASH_SOURCE[0]}")/cainject.sh"
# shellcheck source-path=SCRIPTDIR source=security.sh
source "$(dirname "${BASH_SOURCE[0]}")/security.sh"
# shellcheck source-path=SCRIPTDIR source=hostile.sh
source "$(dirname "${BASH_SOURCE[0]}")/hostile.sh"
# shellcheck source-path=SCRIPTDIR source=bounds.sh
source "$(dirname "${BASH_SOURCE[0]}")/bounds.sh"
# shellcheck source-path=SCRIPTDIR source=switches.sh
source "$(dirname "${BASH_SOURCE[0]}")/switches.sh"
# shellcheck source-path=SCRIPTDIR source=names.sh
source "$(dirname "${BASH_SOURCE[0]}")/names.sh"
# shellcheck source-path=SCRIPTDIR source=escapes.sh
source "$(dirname "${BASH_SOURCE[0]}")/escapes.sh"
# shellcheck source-path=SCRIPTDIR source=protocols.sh
source "$(dirname "${BASH_SOURCE[0]}")/protocols.sh"
# shellcheck source-path=SCRIPTDIR source=layouts.sh
source "$(dirname "${BASH_SOURCE[0]}")/layouts.sh"
# shellcheck source-path=SCRIPTDIR source=upgrade.sh
source "$(dirname "${BASH_SOURCE[0]}")/upgrade.sh"
# shellcheck source-path=SCRIPTDIR source=identity.sh
source "$(dirname "${BASH_SOURCE[0]}")/identity.sh"
# shellcheck source-path=SCRIPTDIR source=profiles.sh
source "$(dirname "${BASH_SOURCE[0]}")/profiles.sh"
# shellcheck source-path=SCRIPTDIR source=failover.sh
source "$(dirname "${BASH_SOURCE[0]}")/failover.sh"

PASSED=0
FAILED=0
SETUP_DONE=0
FLOW_BASELINE=0      # flow-log lines before the first redirected connection
EXPECTED_CONNECTS=0  # proxied client connections made so far (each is one
                     # upstream connection: one conn= id in the flow log)

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
# expect_conns TEXT N WHAT: flow-log lines from exactly N proxy client
# connections (conn= ids), whether they were CONNECT tunnels or plain
# absolute-form requests.
expect_conns() {
  local n
  n=$(grep -Eo ' conn=[0-9a-f]+' <<<"$1" | sort -u | wc -l)
  [[ $n == "$2" ]] || why "$3: expected $2 proxy connection(s), found $n in:" "$(printf '%s' "$1" | tail -n 20)"
}
# elapsed_ok MS MAX WHAT
within_ms() {
  (($1 < $2)) || why "$3: took $1 ms, expected < $2 ms"
}
# All daemon logs of this run (use_daemon keeps earlier instances' logs).
all_daemon_logs() {
  local f
  for f in "$DAEMON_LOG" "$DAEMON_LOG".[0-9]*; do
    [[ -f $f ]] && cat "$f"
  done
  return 0
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
  # by IP, or by the SNI name once the daemon recovers it (see connect_hostname)
  expect_count "$new" "^CONNECT ($INET_IP4|origin\.test):443 " 2 \
    "flow log: one CONNECT per connection (openssl, curl)" || return 1
  expect_match "$new" "^REQUEST GET https://origin.test/https-test " "flow log: the request" || return 1
}

# 3. Plain HTTP goes through the proxy too (in absolute form to httpProxy;
#    http_absolute_form checks the form itself).
t_http() {
  local m out new
  m=$(flow_count)
  EXPECTED_CONNECTS=$((EXPECTED_CONNECTS + 1))
  out=$(pod_curl pod-a "http://$INET_IP4/http-test" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/http-test" "body (client = the proxy)" || return 1
  new=$(flow_since "$m")
  expect_conns "$new" 1 "flow log: one proxy connection" || return 1
  expect_count "$new" "^REQUEST GET http://$INET_IP4/http-test " 1 "flow log: the request" || return 1
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
  expect_conns "$new" 1 "flow log: one proxy connection" || return 1
  if grep -q '^CONNECT ' <<<"$new"; then
    expect_count "$new" "^CONNECT \[$INET_IP6\]:80 " 1 "flow log: a CONNECT names the v6 authority" || return 1
  fi
  expect_count "$new" "^REQUEST GET http://\[$INET_IP6\]/v6-test " 1 "flow log: the request" || return 1
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
#     skipped by SO_MARK: no loop, one proxy connection per client connection.
t_no_loop() {
  local mark all
  mark=$(status_counter skipped_mark) || why "status has no skipped_mark:" "$(redirector_status 2>&1)" || return 1
  ((mark > 0)) || why "skipped_mark is $mark after $EXPECTED_CONNECTS proxied connections" || return 1
  all=$(flow_since "$FLOW_BASELINE")
  expect_count "$all" "^CONNECT (${NODE_IP4//./\\.}|\\[$NODE_IP6\\]):[0-9]+ |^CONNECT [^ ]*:($LISTEN_PORT|$PROXY_PORT) " 0 \
    "flow log: CONNECTs to the listener or the proxy itself" || return 1
  expect_count "$all" "^REQUEST [A-Z]+ http://(${NODE_IP4//./\\.}|\\[$NODE_IP6\\])[:/]|^REQUEST [A-Z]+ http://[^/ ]*:($LISTEN_PORT|$PROXY_PORT)/" 0 \
    "flow log: plain requests to the listener or the proxy itself" || return 1
  expect_conns "$all" "$EXPECTED_CONNECTS" "flow log: proxy connections since the daemon started" || return 1
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

# expect_prompt_failure WHAT CURL-ARGS...: a pod's request fails (reset or
# closed, never answered, never direct) within a second. 35 = reset during
# the client's TLS handshake (an https:// URL through a failed tunnel).
expect_prompt_failure() {
  local what=$1 o out rc t0 ms; shift
  o=$(origin_count)
  t0=$(now_ms)
  out=$(pod_curl pod-a --max-time 5 "$@" 2>&1)
  rc=$?
  ms=$(( $(now_ms) - t0 ))
  info "  curl ${*: -1}: exit $rc after ${ms} ms"
  [[ $rc == 35 || $rc == 52 || $rc == 56 || $rc == 7 ]] \
    || why "$what: curl exit $rc, expected 35, 52, 56 or 7:" "$out" || return 1
  ((ms < 1000)) || why "$what: took ${ms} ms, expected < 1000" || return 1
  expect_empty "$(origin_since "$o" | grep -v '^HTTP-GOT-TLS ')" "$what: origin log (nothing may go direct)" || return 1
}

# 14. The proxy refuses the CONNECT (403): the client is closed promptly and
#     the daemon says why. (TLS without SNI, so that it is a CONNECT by IP
#     whatever the daemon makes of plain HTTP.)
t_upstream_refused() {
  expect_prompt_failure "CONNECT refused" -k "https://$INET_IP4:$REFUSED_PORT/refused" || return 1
  wait_for 2 "daemon log names the 403" grep -q "refused CONNECT $INET_IP4:$REFUSED_PORT: 403" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
}

# 15. The proxy is unreachable: the same, and never a direct connection. For
#     plain HTTP (which the daemon may answer itself) a prompt 5xx is fine too.
t_upstream_unreachable() {
  local dead=$WORK/proxy-config-dead.json o out rc t0 ms
  sed "s/:$PROXY_PORT\//:$DEAD_PROXY_PORT\//g" "$PROXY_CONFIG" >"$dead"
  use_daemon "$dead" || why "start with $dead failed:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  expect_prompt_failure "proxy unreachable (TLS)" -k "https://$INET_IP4/unreachable" || return 1
  wait_for 2 "daemon log names the failure" grep -q "unreachable" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  o=$(origin_count)
  t0=$(now_ms)
  out=$(pod_curl pod-a --max-time 5 -o /dev/null -w '%{http_code}' "http://$INET_IP4/unreachable-http" 2>&1)
  rc=$?
  ms=$(( $(now_ms) - t0 ))
  info "  curl http://$INET_IP4/unreachable-http: exit $rc after ${ms} ms: $out"
  [[ $rc == 52 || $rc == 56 || $rc == 7 || ($rc == 0 && $out =~ ^5[0-9][0-9]$) ]] \
    || why "plain HTTP, proxy unreachable: curl exit $rc, expected 52, 56, 7 or a 5xx:" "$out" || return 1
  within_ms "$ms" 1000 "plain HTTP, proxy unreachable" || return 1
  expect_empty "$(origin_since "$o")" "plain HTTP: origin log (nothing may go direct)" || return 1
}

# ---------------------------------------------------------------- policy (issue 3)
# Host-name recovery (TLS SNI, HTTP Host), noProxy name rules, httpProxy for
# plain HTTP in absolute form, TLS and Basic auth to the proxy, `explain`.
# Test names (*.test) never reach a real DNS: pods use curl --resolve,
# mitmproxy pins them with flowlog.py, and the daemon and `explain` verify
# noProxy name rules with the test name server (dns.py), which answers
# every *.test name with the origin's addresses.

# explain ARGS...: `redirector explain` in the node's netns, with the test
# name server as its resolver.
# explain ARGS...: on the node, with the daemon's --handover-dir and its flags
# that change decisions (the harness's proxy address is not bypassed).
explain() {
  in_netns "$NS_NODE" timeout 10 "$REDIRECTOR_BIN" explain --resolv-conf "$RESOLV_CONF" \
    --handover-dir "$HANDOVER_DIR" "${DAEMON_BASE_FLAGS[@]}" "$@" 2>&1
}
unmask() { # unmask URL: without a masked userinfo (scheme://***@) and a trailing /
  local u=${1%/}
  [[ $u =~ ^([a-z]+://)\*+@(.*)$ ]] && u=${BASH_REMATCH[1]}${BASH_REMATCH[2]}
  printf '%s' "$u"
}
field() { # field TEXT KEY: the value of the first "KEY: value" line
  sed -n "s/^$2: //p" <<<"$1" | head -n 1
}
# expect_explain DECISION RULE-ERE PROXY ARGS...: `explain ARGS...` exits 0
# and prints that decision, a rule matching ^(RULE-ERE)$ and, if PROXY is
# not "-", that proxy URL (a trailing slash does not matter, nor masked
# credentials such as http://***@host:port); with "-" no proxy line at all.
expect_explain() {
  local decision=$1 rule=$2 proxy=$3 out rc got what; shift 3
  what="explain ${*:3}"  # without --proxy-config FILE
  out=$(explain "$@")
  rc=$?
  ((rc == 0)) || why "$what: exit $rc:" "$out" || return 1
  got=$(field "$out" decision)
  [[ $got == "$decision" ]] || why "$what: decision '$got', expected '$decision':" "$out" || return 1
  got=$(field "$out" rule)
  [[ $got =~ ^($rule)$ ]] || why "$what: rule '$got', expected /^($rule)\$/:" "$out" || return 1
  got=$(field "$out" proxy)
  if [[ $proxy == - ]]; then
    [[ -z $got ]] || why "$what: a proxy line for decision $decision:" "$out" || return 1
  else
    [[ $(unmask "$got") == "${proxy%/}" ]] || why "$what: proxy '$got', expected '$proxy':" "$out" || return 1
  fi
  info "  $what: $(grep -E '^(decision|proxy|rule):' <<<"$out" | tr '\n' ' ')"
}

# 16. explain: the daemon's decision from the command line (names, CIDRs,
#     built-ins, proxy per class), credentials never printed, --json, the
#     comma-separated noProxy string, an invalid entry named.
t_explain() {
  local cfg=$WORK/explain-config.json str=$WORK/explain-string.json bad=$WORK/explain-bad.json
  local P=http://$INET_IP4:$PROXY_PORT A=http://$INET_IP4:$AUTH_PROXY_PORT out rc
  write_config "$cfg" "$A/" "http://$AUTH_USER:$AUTH_PASS@$INET_IP4:$PROXY_PORT/" "$POLICY_NOPROXY"
  local c=(--proxy-config "$cfg")
  expect_explain direct 'direct\.test' - "${c[@]}" https://direct.test/x || return 1
  expect_explain direct 'direct\.test' - "${c[@]}" https://sub.direct.test/ || return 1
  expect_explain direct 'direct\.test' - "${c[@]}" --protocol tls sub.direct.test:443 || return 1
  # raw TCP carries no name: as the daemon, by the address the name resolves to
  expect_explain proxy httpsProxy "$P" "${c[@]}" sub.direct.test:443 || return 1
  out=$(explain "${c[@]}" sub.direct.test:443)
  expect_contains "$out" "name: raw TCP carries no name" "explain of a raw TCP host:port" || return 1
  expect_explain direct '\.only-sub\.test' - "${c[@]}" https://x.only-sub.test/ || return 1
  expect_explain proxy httpsProxy "$P" "${c[@]}" https://only-sub.test/ || return 1
  expect_explain direct 'porthost\.test:80' - "${c[@]}" http://porthost.test/ || return 1
  expect_explain proxy httpsProxy "$P" "${c[@]}" https://porthost.test/ || return 1
  expect_explain kernel-bypass '10\.249\.3\.0/24' - "${c[@]}" "$NOPROXY_IP4:80" || return 1
  expect_explain proxy httpsProxy "$P" "${c[@]}" https://origin.test/ || return 1
  expect_explain proxy httpProxy "$A" "${c[@]}" http://plain.test/ || return 1
  expect_explain proxy httpsProxy "$P" "${c[@]}" "$INET_IP4:7007" || return 1
  # built-ins, and the flags that switch them off or add to them
  expect_explain kernel-bypass '.*([Ll]oopback|127\.0\.0\.0/8).*' - "${c[@]}" 127.0.0.1:80 || return 1
  expect_explain proxy httpsProxy "$P" "${c[@]}" --no-bypass-loopback 127.0.0.1:80 || return 1
  expect_explain kernel-bypass '.*([Ll]ink-?local|169\.254\.0\.0/16).*' - "${c[@]}" 169.254.169.254:80 || return 1
  expect_explain proxy httpsProxy "$P" "${c[@]}" --no-bypass-link-local 169.254.169.254:80 || return 1
  expect_explain kernel-bypass '(--cluster-cidr )?10\.96\.0\.0/12' - "${c[@]}" --cluster-cidr 10.96.0.0/12 10.96.0.10:443 || return 1
  expect_explain proxy httpsProxy "$P" "${c[@]}" --cluster-cidr 10.96.0.0/12 10.112.0.10:443 || return 1
  # credentials stay out of the output
  out=$(explain "${c[@]}" https://origin.test/)
  expect_not_contains "$out" "$AUTH_PASS" "explain output (password)" || return 1
  expect_not_contains "$out" "$AUTH_USER:" "explain output (user:)" || return 1
  # --json: one object with decision, proxy (when proxied) and rule
  out=$(explain "${c[@]}" --json https://origin.test/) || why "explain --json: exit $?:" "$out" || return 1
  expect_not_contains "$out" "$AUTH_PASS" "explain --json output (password)" || return 1
  "$PYTHON" -c '
import json, re, sys
d = json.loads(sys.argv[1])
assert isinstance(d, dict), "not an object"
assert d.get("decision") == "proxy", "decision %r" % d.get("decision")
assert d.get("rule") == "httpsProxy", "rule %r" % d.get("rule")
proxy = re.sub(r"^([a-z]+://)[*]+@", r"\1", str(d.get("proxy", ""))).rstrip("/")
assert proxy == sys.argv[2], "proxy %r" % d.get("proxy")
' "$out" "$P" 2>&1 || why "explain --json https://origin.test/:" "$out" || return 1
  out=$(explain "${c[@]}" --json https://direct.test/) || why "explain --json: exit $?:" "$out" || return 1
  "$PYTHON" -c '
import json, sys
d = json.loads(sys.argv[1])
assert d.get("decision") == "direct", "decision %r" % d.get("decision")
assert d.get("rule") == "direct.test", "rule %r" % d.get("rule")
assert d.get("proxy") in (None, ""), "proxy %r for a direct decision" % d.get("proxy")
' "$out" 2>&1 || why "explain --json https://direct.test/:" "$out" || return 1
  # noProxy as one comma-separated string, as in a NO_PROXY variable (with
  # Go's spellings: *.domain = subdomains only, names match in any case)
  write_config "$str" "$P/" "$P/" '"direct.test, 10.249.3.0/24,*.wild.test,.Upper.TEST"'
  expect_explain direct 'direct\.test' - --proxy-config "$str" https://direct.test/ || return 1
  expect_explain direct '\*\.wild\.test' - --proxy-config "$str" https://a.wild.test/ || return 1
  expect_explain proxy httpsProxy "$P" --proxy-config "$str" https://wild.test/ || return 1
  expect_explain direct '\.Upper\.TEST' - --proxy-config "$str" https://x.upper.test/ || return 1
  expect_explain direct 'direct\.test' - --proxy-config "$str" https://SUB.Direct.Test/ || return 1
  expect_explain kernel-bypass '10\.249\.3\.0/24' - --proxy-config "$str" "$NOPROXY_IP4:80" || return 1
  expect_explain proxy httpsProxy "$P" --proxy-config "$str" https://origin.test/ || return 1
  # an invalid entry: non-zero exit, naming the entry
  write_config "$bad" "$P/" "$P/" '["direct.test","*.*.com"]'
  out=$(explain --proxy-config "$bad" https://origin.test/)
  rc=$?
  ((rc != 0 && rc != 124)) || why "explain with noProxy *.*.com: exit $rc, expected an error:" "$out" || return 1
  expect_contains "$out" '*.*.com' "the error names the entry" || return 1
  info "  invalid *.*.com: exit $rc: $(head -n 2 <<<"$out" | tr '\n' ' ')"
}

# 17. TLS through CONNECT carries the SNI name as the authority
#     (CONNECT origin.test:443), so the proxy can apply domain ACLs and mint
#     the right certificate; TLS without SNI falls back to the IP.
t_connect_hostname() {
  local m out new
  use_daemon "$POLICY_CONFIG" || why "daemon with $POLICY_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count)
  out=$(pod_curl pod-a --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
    https://origin.test/x 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/x" "body (client = the proxy)" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT origin\.test:443 " 1 "flow log: CONNECT by the SNI name" || return 1
  expect_count "$new" "^CONNECT $INET_IP4:443 " 0 "flow log: CONNECT by IP" || return 1
  expect_match "$new" "^REQUEST GET https://origin\.test/x " "flow log: the request" || return 1
  expect_count "$new" "^NAME-REFUSED " 0 "flow log: names mitmproxy refused" || return 1
  # the same over IPv6 (connect6, v6 listener)
  m=$(flow_count)
  out=$(pod_curl pod-a --cacert "$CA_CERT" --resolve "origin.test:443:[$INET_IP6]" \
    https://origin.test/x6 2>&1) || why "curl (IPv6) failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/x6" "body (client = the proxy)" || return 1
  expect_count "$(flow_since "$m")" "^CONNECT origin\.test:443 " 1 "flow log: CONNECT by the SNI name (IPv6)" || return 1
  # no SNI at all: the IP it is
  m=$(flow_count)
  out=$(in_pod pod-a timeout 10 openssl s_client -connect "$INET_IP4:443" -noservername \
    -CAfile "$CA_CERT" </dev/null 2>&1)
  expect_contains "$out" "BEGIN CERTIFICATE" "openssl s_client without SNI got a certificate" || return 1
  expect_count "$(flow_since "$m")" "^CONNECT $INET_IP4:443 " 1 "flow log: CONNECT by IP without SNI" || return 1
}

# body_client BODY: the client= of an origin answer
body_client() { sed -n 's/.*origin ok client=\([^ ]*\) .*/\1/p' <<<"$1" | head -n 1; }

# expect_direct_body BODY WHAT: the origin saw the pod or the node (the
# daemon dialled it directly), never the proxy.
expect_direct_body() {
  local c
  c=$(body_client "$1")
  [[ $c == "$POD_A_IP4" || $c == "$NODE_IP4" ]] \
    || why "$2: origin saw client '$c', expected $POD_A_IP4 or $NODE_IP4 (direct), not via the proxy:" "$1"
}

# 18. noProxy name rules: direct.test = apex and subdomains, .only-sub.test =
#     subdomains only, porthost.test:80 = that port only; HTTPS (SNI) and
#     plain HTTP (Host) alike. Matches connect directly: no flow-log line.
t_noproxy_names() {
  local m o out new name
  use_daemon "$POLICY_CONFIG" || why "daemon with $POLICY_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count); o=$(origin_count)
  for name in direct.test sub.direct.test x.only-sub.test; do
    out=$(pod_curl pod-a -k --resolve "$name:443:$INET_IP4" "https://$name/np-$name" 2>&1) \
      || why "curl https://$name/ failed:" "$out" || return 1
    expect_direct_body "$out" "https://$name/" || return 1
  done
  out=$(pod_curl pod-a --resolve "direct.test:80:$INET_IP4" http://direct.test/np-plain 2>&1) \
    || why "curl http://direct.test/ failed:" "$out" || return 1
  expect_direct_body "$out" "http://direct.test/ (Host header)" || return 1
  out=$(pod_curl pod-a --resolve "porthost.test:80:$INET_IP4" http://porthost.test/np-port80 2>&1) \
    || why "curl http://porthost.test/ failed:" "$out" || return 1
  expect_direct_body "$out" "http://porthost.test/ (rule porthost.test:80)" || return 1
  expect_empty "$(flow_since "$m")" "flow log after the direct requests" || return 1
  expect_count "$(origin_since "$o")" "host=(direct\.test|sub\.direct\.test|x\.only-sub\.test|porthost\.test) " 5 \
    "origin log: the five direct requests, with their Host" || return 1
  # not matched: the apex of a leading-dot rule, another port of a host:port rule
  m=$(flow_count)
  out=$(pod_curl pod-a -k --resolve "only-sub.test:443:$INET_IP4" https://only-sub.test/np-apex 2>&1) \
    || why "curl https://only-sub.test/ failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 " "only-sub.test via the proxy" || return 1
  out=$(pod_curl pod-a -k --resolve "porthost.test:443:$INET_IP4" https://porthost.test/np-port443 2>&1) \
    || why "curl https://porthost.test/ failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 " "porthost.test:443 via the proxy" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT only-sub\.test:443 " 1 "flow log: apex only-sub.test proxied" || return 1
  expect_count "$new" "^CONNECT porthost\.test:443 " 1 "flow log: porthost.test:443 proxied" || return 1
}

# 19. Plain HTTP reaches httpProxy in absolute form (GET http://plain.test/abs),
#     never as a CONNECT tunnel; every request of a keep-alive connection
#     and a request body arrive; the Host header is kept.
t_http_absolute() {
  local m o out new
  use_daemon "$POLICY_CONFIG" || why "daemon with $POLICY_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count); o=$(origin_count)
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" http://plain.test/abs 2>&1) \
    || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/abs" "body (client = the proxy)" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^REQUEST GET http://plain\.test/abs .*form=absolute" 1 "flow log: absolute-form request" || return 1
  expect_count "$new" "^CONNECT " 0 "flow log: CONNECT for plain HTTP" || return 1
  expect_match "$(origin_since "$o")" "^HTTP client=$INET_IP4 method=GET host=plain\.test path=/abs$" \
    "origin log: Host header kept" || return 1
  # two requests on one keep-alive connection, then a POST with a body
  m=$(flow_count)
  out=$(pod_curl pod-a -v --resolve "plain.test:80:$INET_IP4" http://plain.test/ka1 http://plain.test/ka2 2>&1) \
    || why "curl (keep-alive) failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/ka1" "first body" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/ka2" "second body" || return 1
  expect_match "$out" "Re-using existing connection" "curl reused its connection" || return 1
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" --data-binary 'k=v&rde=1' \
    http://plain.test/post 2>&1) || why "curl POST failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/post" "POST body" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^REQUEST GET http://plain\.test/ka[12] .*form=absolute" 2 "flow log: both keep-alive requests" || return 1
  expect_count "$new" "^REQUEST POST http://plain\.test/post .*form=absolute" 1 "flow log: the POST" || return 1
  expect_count "$new" "^CONNECT " 0 "flow log: CONNECT for plain HTTP" || return 1
  # each request's own Host makes its URL, also when the second request on
  # a connection names another host
  m=$(flow_count)
  out=$(probe pod-a send-split "$INET_IP4" 80 --pause 100 'GET /first HTTP/1.1\r\nHost: plain.test\r\n\r\n' \
    'GET /second HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n' 2>&1) \
    || why "two hosts on one connection: $out" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^REQUEST GET http://plain\.test/first .*form=absolute" 1 "flow log: first request" || return 1
  expect_count "$new" "^REQUEST GET http://other\.test/second .*form=absolute" 1 \
    "flow log: second request, with its own Host" || return 1
  # a 2 MiB body (curl sends Expect: 100-continue for it)
  head -c 2097152 /dev/zero >"$WORK/post-2m.bin"
  local t0 ms
  t0=$(now_ms)
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" --data-binary "@$WORK/post-2m.bin" \
    http://plain.test/post-2m 2>&1) || why "curl POST 2 MiB failed:" "$out" || return 1
  ms=$(( $(now_ms) - t0 ))
  info "  POST 2 MiB: ${ms} ms"
  expect_contains "$out" "origin ok client=$INET_IP4 path=/post-2m" "POST 2 MiB body" || return 1
}

# expect_bulk WHAT N CURL-ARGS...: a pod downloads N bytes of 0..255 repeated
# (origin.py /bytes/N or /chunked/N) and gets exactly them.
expect_bulk() {
  local what=$1 n=$2 out t0 ms; shift 2
  rm -f "$WORK/bulk.bin"
  t0=$(now_ms)
  out=$(pod_curl pod-a -o "$WORK/bulk.bin" "$@" 2>&1) || why "$what: curl failed:" "$out" || return 1
  ms=$(( $(now_ms) - t0 ))
  out=$("$PYTHON" -c '
import sys
n = int(sys.argv[2])
data = open(sys.argv[1], "rb").read()
want = (bytes(range(256)) * (n // 256 + 1))[:n]
print("ok" if data == want else "got %d bytes, expected %d%s" % (
    len(data), n, "" if len(data) != n else " (content differs)"))
' "$WORK/bulk.bin" "$n" 2>&1)
  [[ $out == ok ]] || why "$what: $out" || return 1
  info "  $what: $n bytes in ${ms} ms"
}

# 20. Bulk transfers in both paths: 8 MiB with a Content-Length and chunked
#     through the absolute-form path, 8 MiB through a CONNECT tunnel, and an
#     8 MiB upload in absolute form; every byte arrives. The tunnel takes
#     a bulk lane (wide buffers) and gives it back.
t_bulk() {
  local n=8388608 out
  use_daemon "$POLICY_CONFIG" || why "daemon with $POLICY_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  expect_bulk "absolute form, Content-Length" "$n" --resolve "plain.test:80:$INET_IP4" \
    "http://plain.test/bytes/$n" || return 1
  expect_bulk "absolute form, chunked" "$n" --resolve "plain.test:80:$INET_IP4" \
    "http://plain.test/chunked/$n" || return 1
  # The tunnel (spliced) moves past 1 MiB: it takes a bulk lane, widens
  # its buffers mid-transfer (the download stays byte-exact) and gives the
  # lane back at its end. The absolute-form requests above take none.
  # The metrics and `status --metrics` say which path it took.
  local granted='redirector_bulk_lane_requests_total{result="granted"}' m0 m1 st0 st1
  local on_lane='redirector_relayed_connections_total{path="splice_bulk_lane"}'
  m0=$(daemon_metrics) || why "no /metrics" || return 1
  st0=$(relay_status_count splice_bulk_lane) || why "status --metrics:" "$(relay_status)" || return 1
  expect_bulk "CONNECT tunnel" "$n" --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
    "https://origin.test/bytes/$n" || return 1
  m1=$(daemon_metrics) || why "no /metrics" || return 1
  (( $(metric_value "$m1" "$granted") - $(metric_value "$m0" "$granted") == 1 )) \
    || why "bulk lanes granted: $(grep bulk_lane <<<"$m1")" || return 1
  # shellcheck disable=SC2016
  wait_for 5 "the bulk lane given back" \
    eval '(( $(metric_value "$(daemon_metrics)" redirector_bulk_lanes_in_use) == 0 ))' || return 1
  # Counted once the relay has ended (the lane is back by then).
  (( $(metric_value "$(daemon_metrics)" "$on_lane") - $(metric_value "$m0" "$on_lane") == 1 )) \
    || why "relayed on a bulk lane: $(daemon_metrics | grep relayed_connections)" || return 1
  st1=$(relay_status_count splice_bulk_lane) || why "status --metrics:" "$(relay_status)" || return 1
  (( st1 - st0 == 1 )) || why "status: splice_bulk_lane $st0 -> $st1:" "$(relay_status)" || return 1
  expect_match "$(relay_status)" "^bulk_lanes: 0 of [1-9][0-9]* in use$" "status shows the lanes, none held" || return 1
  head -c "$n" /dev/urandom >"$WORK/upload.bin"
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" --data-binary "@$WORK/upload.bin" \
    http://plain.test/upload-8m 2>&1) || why "8 MiB upload failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/upload-8m" "8 MiB upload answered" || return 1
  expect_match "$(tail -n 5 "$ORIGIN_LOG")" "path=/upload-8m bytes=$n\$" "origin read all 8 MiB" || return 1
}

# 21. First bytes that arrive in pieces: a large ClientHello (2 KiB of
#     padding, like a post-quantum key share) split before the SNI, and an
#     HTTP request whose Host line comes 200 ms after the request line. The
#     daemon peeks until it can decide (within --peek-timeout), so the name
#     is still found. A request line cut off for longer than the timeout is
#     routed by IP, and the bytes already peeked are not lost. An SNI with
#     CR LF in it must not become a header of the CONNECT: it is ignored
#     (routed by IP).
t_split_first_bytes() {
  local m out new
  use_daemon "$POLICY_CONFIG" || why "daemon with $POLICY_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count)
  out=$(probe pod-a tls-hello "$INET_IP4" 443 --sni split.test --pad 2000 --split-at 60 --pause 200 2>&1) \
    || why "$out" || return 1
  info "  $out"
  out=$(probe pod-a send-split "$INET_IP4" 80 --pause 200 'GET /split-http HTTP/1.1\r\n' \
    'Host: split.test\r\nConnection: close\r\n\r\n' 2>&1) || why "split HTTP request: $out" || return 1
  expect_contains "$out" "reply first-line=HTTP/1.1 200" "split HTTP request answered" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT split\.test:443 " 1 "flow log: CONNECT by the SNI of the split hello" || return 1
  expect_count "$new" "^REQUEST GET http://split\.test/split-http .*form=absolute" 1 \
    "flow log: the split HTTP request, by its Host" || return 1
  expect_count "$new" "^CONNECT $INET_IP4:" 0 "flow log: CONNECT by IP (the name was missed)" || return 1
  # stalled past --peek-timeout (0.5 s) in the middle of the request line
  out=$(probe pod-a send-split "$INET_IP4" 80 --pause 800 'GET /stalled HTT' \
    'P/1.1\r\nHost: stalled.test\r\nConnection: close\r\n\r\n' 2>&1) || why "stalled request: $out" || return 1
  expect_contains "$out" "reply first-line=HTTP/1.1 200" "stalled request answered (no bytes lost)" || return 1
  # an SNI that would inject a header line
  m=$(flow_count)
  out=$(probe pod-a tls-hello "$INET_IP4" 443 --sni 'evil.test\r\nX-Injected: 1' --pause 0 2>&1) \
    || why "$out" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:443 " 1 "flow log: the CR LF SNI ignored, CONNECT by IP" || return 1
  expect_not_contains "$new" "evil" "flow log" || return 1
}

# 22. A client that sends nothing first (server speaks first, like SMTP):
#     after --peek-timeout the connection is tunnelled by IP and the banner
#     arrives.
t_silent_client() {
  local m out ms new
  use_daemon "$POLICY_CONFIG" --peek-timeout 1 \
    || why "daemon with --peek-timeout 1 did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count)
  out=$(probe pod-a banner "$INET_IP4" "$BANNER_PORT" 2>&1) || why "$out" || return 1
  info "  $out"
  expect_contains "$out" "line=220 origin banner client=$INET_IP4" "banner (client = the proxy)" || return 1
  ms=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' <<<"$out")
  ((ms >= 800)) || why "banner after $ms ms: the daemon did not wait --peek-timeout 1 for client bytes" || return 1
  within_ms "$ms" 3000 "banner (peek timeout 1 s + 2 s)" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:$BANNER_PORT " 1 "flow log: CONNECT by IP" || return 1
  expect_match "$new" "^TCP $INET_IP4:$BANNER_PORT " "flow log: raw TCP stream" || return 1
}

# no_secrets WHAT: neither password (nor a Basic token of either) in any
# daemon log of this run.
no_secrets() {
  local logs s
  logs=$(all_daemon_logs)
  for s in "$AUTH_PASS" "$BAD_PASS" "$(printf '%s' "$AUTH_USER:$AUTH_PASS" | base64)" \
    "$(printf '%s' "$AUTH_USER:$BAD_PASS" | base64)"; do
    [[ $logs != *"$s"* ]] || why "$1: '$s' appears in a daemon log:" "$(grep -F -- "$s" <<<"$logs" | head -n 3)" || return 1
  done
}

# 23. Basic auth to the proxy (user:pass@ in the URL): HTTPS and plain HTTP
#     (every request of a keep-alive connection) get through; with a wrong
#     password the tunnel is reset at once, plain HTTP gets the proxy's 407,
#     the daemon logs an auth failure, and no password is ever logged.
t_proxy_auth() {
  local good=$WORK/auth-config.json wrong=$WORK/auth-wrong-config.json m out new code t0 ms
  local url="http://$AUTH_USER:$AUTH_PASS@$INET_IP4:$AUTH_PROXY_PORT/"
  write_config "$good" "$url" "$url" "$POLICY_NOPROXY"
  use_daemon "$good" || why "daemon with $good did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(wc -l <"$AUTH_FLOW_LOG")
  out=$(pod_curl pod-a --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
    https://origin.test/auth-tls 2>&1) || why "HTTPS through the auth proxy failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/auth-tls" "HTTPS body (client = the proxy)" || return 1
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" http://plain.test/auth1 http://plain.test/auth2 2>&1) \
    || why "plain HTTP through the auth proxy failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/auth2" "second plain body (client = the proxy)" || return 1
  new=$(tail -n "+$((m + 1))" "$AUTH_FLOW_LOG")
  expect_count "$new" "^CONNECT origin\.test:443 .* user=$AUTH_USER\$" 1 "auth flow log: authenticated CONNECT" || return 1
  expect_count "$new" "^REQUEST GET http://plain\.test/auth[12] .* user=$AUTH_USER\$" 2 \
    "auth flow log: both plain requests authenticated" || return 1
  no_secrets "good credentials" || return 1

  write_config "$wrong" "${url/$AUTH_PASS/$BAD_PASS}" "${url/$AUTH_PASS/$BAD_PASS}" "$POLICY_NOPROXY"
  use_daemon "$wrong" || why "daemon with $wrong did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  expect_prompt_failure "CONNECT with a wrong password" --cacert "$CA_CERT" \
    --resolve "origin.test:443:$INET_IP4" https://origin.test/auth-wrong || return 1
  t0=$(now_ms)
  code=$(pod_curl pod-a -s -o /dev/null -w '%{http_code}' --resolve "plain.test:80:$INET_IP4" \
    http://plain.test/auth-wrong 2>&1)
  ms=$(( $(now_ms) - t0 ))
  [[ $code == 407 ]] || why "plain HTTP with a wrong password: status '$code', expected 407" || return 1
  within_ms "$ms" 1000 "plain HTTP 407" || return 1
  wait_for 2 "daemon log reports the 407 as an auth failure" grep -Eiq '407.*auth|auth.*407' "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  no_secrets "wrong credentials" || return 1
}

# 24. TLS to the proxy (https:// proxy URL, verified against trustedCA): both
#     classes work through mitmproxy over TLS; a proxy certificate from a CA
#     we do not trust fails; a plain-HTTP server given as https:// fails
#     promptly and the daemon says it speaks plain HTTP.
t_proxy_tls() {
  local tls=$WORK/tls-config.json untrusted=$WORK/tls-untrusted-config.json
  local plain=$WORK/tls-plain-config.json m o out new
  local url="https://$INET_IP4:$PROXY_PORT/"
  write_config "$tls" "$url" "$url" "$POLICY_NOPROXY"
  use_daemon "$tls" || why "daemon with $tls did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count)
  out=$(pod_curl pod-a --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
    https://origin.test/tls-proxy 2>&1) || why "HTTPS through the TLS proxy failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/tls-proxy" "HTTPS body (client = the proxy)" || return 1
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" http://plain.test/tls-proxy-plain 2>&1) \
    || why "plain HTTP through the TLS proxy failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/tls-proxy-plain" "plain body (client = the proxy)" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT origin\.test:443 .* proxy_tls=yes " 1 "flow log: CONNECT over TLS" || return 1
  expect_count "$new" "^REQUEST GET http://plain\.test/tls-proxy-plain .* proxy_tls=yes " 1 \
    "flow log: absolute-form request over TLS" || return 1

  # the same proxy, but trustedCA is another CA: verification must fail
  write_config "$untrusted" "$url" "$url" "$POLICY_NOPROXY" "$OTHER_CA_B64"
  use_daemon "$untrusted" || why "daemon with $untrusted did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count)
  expect_prompt_failure "TLS proxy with an untrusted certificate" -k --resolve "origin.test:443:$INET_IP4" \
    https://origin.test/tls-untrusted || return 1
  expect_count "$(flow_since "$m")" "^(CONNECT|REQUEST) " 0 "flow log: nothing reached the proxy's HTTP layer" || return 1
  wait_for 2 "daemon log reports the TLS failure" grep -Eiq "tls.*(certificate|issuer)|(certificate|issuer).*tls" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1

  # https:// for a server that speaks plain HTTP (origin.py's port 80
  # answers a ClientHello with "HTTP/1.1 400")
  write_config "$plain" "https://$INET_IP4:80/" "https://$INET_IP4:80/" "$POLICY_NOPROXY"
  use_daemon "$plain" || why "daemon with $plain did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  o=$(origin_count)
  expect_prompt_failure "https:// proxy that speaks plain HTTP" -k --resolve "origin.test:443:$INET_IP4" \
    https://origin.test/tls-wrong-scheme || return 1
  expect_match "$(origin_since "$o")" "^HTTP-GOT-TLS " "origin :80 got the daemon's ClientHello" || return 1
  wait_for 2 "daemon log says 'speaks plain HTTP'" grep -q "speaks plain HTTP" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  grep "speaks plain HTTP" "$DAEMON_LOG" | grep -q "http://" \
    || why "the 'speaks plain HTTP' error does not say to write http://:" \
      "$(grep "speaks plain HTTP" "$DAEMON_LOG" | head -n 2)" || return 1
}

# 25. detach removes the hooks and the pins; pods connect directly again.
t_detach() {
  local out
  out=$(timeout 20 "$REDIRECTOR_BIN" detach --bpffs "$PIN_DIR" 2>&1) || why "detach failed:" "$out" || return 1
  ! pins_present || why "still pinned after detach:" "$(find "$PIN_DIR" -mindepth 1)" || return 1
  out=$(pod_curl pod-a "http://$INET_IP4/detached" 2>&1) || why "curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$POD_A_IP4 path=/detached" "body (client = pod-a itself)" || return 1
}

# 26. Hot reload: the config file is replaced (write + rename, as a ConfigMap
#     update does) under a running daemon. Within 2 s a new noProxy name goes
#     direct and a new noProxy CIDR is bypassed in the kernel, while a
#     download started before the change completes intact; a broken file is
#     refused with its error logged and the previous rules stay; SIGHUP
#     forces a reload. The daemon runs on its own file, so later tests are
#     unaffected.
t_reload() {
  local cfg=$WORK/reload-config.json n=33554432 dl_pid rc t0 ms out c direct=0 m before after
  local proxy="http://$INET_IP4:$PROXY_PORT/" base='"10.249.3.0/24","localhost"'
  local name_curl=(pod_curl pod-a -k --max-time 3 --resolve "reload.test:443:$INET_IP4")
  write_config "$cfg" "$proxy" "$proxy" "[$base]"
  use_daemon "$cfg" || why "daemon with $cfg did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  out=$("${name_curl[@]}" https://reload.test/reload-before 2>&1) || why "curl reload.test failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 " "reload.test via the proxy before the reload" || return 1

  # A long download through the proxy (4 s at 8 MiB/s), under way before the change.
  local CMD_ARRAY
  rm -f "$WORK/reload-bulk.bin"
  cg_ns_cmd "$CG_ROOT/pods/pod-a" "$NS_POD_A" curl -q -sS --max-time 60 --limit-rate 8M \
    -o "$WORK/reload-bulk.bin" "http://$INET_IP4/bytes/$n"
  "${CMD_ARRAY[@]}" >"$WORK/reload-bulk.out" 2>&1 9>&- &
  dl_pid=$!
  BG_PIDS+=("$dl_pid")
  wait_for 10 "the download under way" \
    eval "(( \$(stat -c %s '$WORK/reload-bulk.bin' 2>/dev/null || echo 0) > 1048576 ))" || return 1

  before=$(status_counter skipped_bypass) || why "status has no skipped_bypass:" "$(redirector_status 2>&1)" || return 1
  write_config "$cfg.tmp" "$proxy" "$proxy" "[$base,\"reload.test\",\"10.249.4.0/24\"]"
  mv -f "$cfg.tmp" "$cfg"
  t0=$(now_ms)
  while (( $(now_ms) - t0 < 2000 )); do
    out=$("${name_curl[@]}" https://reload.test/reload-after 2>&1) || true
    c=$(body_client "$out")
    if [[ $c == "$NODE_IP4" || $c == "$POD_A_IP4" ]]; then direct=1; break; fi
    sleep 0.1
  done
  ms=$(( $(now_ms) - t0 ))
  ((direct)) || why "reload.test not direct 2 s after the change; last answer:" "$out" \
    "$(tail -n 5 "$DAEMON_LOG")" || return 1
  info "  new noProxy name in force after ${ms} ms"
  expect_count "$(cat "$DAEMON_LOG")" "config reloaded" 1 "daemon log after the change" || return 1
  kill -0 "$dl_pid" 2>/dev/null || why "the download ended before the reload took effect (too fast to test)" || return 1
  # The new CIDR: the connect is skipped in the kernel, nothing reaches the proxy.
  m=$(flow_count)
  in_pod pod-a curl -q -s --max-time 2 "http://10.249.4.2/reload-cidr" >/dev/null 2>&1 || true
  after=$(status_counter skipped_bypass)
  ((after > before)) || why "skipped_bypass did not grow for 10.249.4.2 ($before -> $after)" || return 1
  expect_empty "$(flow_since "$m" | grep 10.249.4 || true)" "flow log for 10.249.4.2" || return 1

  # The download started under the old config completes intact.
  rc=0; wait "$dl_pid" || rc=$?
  ((rc == 0)) || why "the download failed (exit $rc):" "$(cat "$WORK/reload-bulk.out")" || return 1
  out=$("$PYTHON" -c '
import sys
n = int(sys.argv[2])
data = open(sys.argv[1], "rb").read()
want = (bytes(range(256)) * (n // 256 + 1))[:n]
print("ok" if data == want else "got %d bytes, expected %d%s" % (
    len(data), n, "" if len(data) != n else " (content differs)"))
' "$WORK/reload-bulk.bin" "$n" 2>&1)
  [[ $out == ok ]] || why "download across the reload: $out" || return 1

  # A broken file: the error is logged, the previous rules stay in force.
  printf '{"noProxy": ["*.*.com"]}\n' >"$cfg.tmp"
  mv -f "$cfg.tmp" "$cfg"
  wait_for 3 "the reload error in the daemon log" grep -q "config reload failed" "$DAEMON_LOG" || return 1
  expect_match "$(grep "config reload failed" "$DAEMON_LOG")" 'noProxy.*\*\.\*\.com' \
    "the error names the bad entry" || return 1
  out=$("${name_curl[@]}" https://reload.test/reload-broken 2>&1) || why "curl reload.test failed:" "$out" || return 1
  expect_direct_body "$out" "reload.test after a broken file (previous rules)" || return 1
  kill -0 "$DAEMON_PID" 2>/dev/null || why "the daemon died on a broken file" || return 1

  # Back to a good file, then SIGHUP: one more reload of unchanged content.
  write_config "$cfg.tmp" "$proxy" "$proxy" "[$base,\"reload.test\"]"
  mv -f "$cfg.tmp" "$cfg"
  wait_for 3 "the second reload" eval "(( \$(grep -c 'config reloaded' '$DAEMON_LOG') == 2 ))" || return 1
  kill -HUP "$DAEMON_PID"
  wait_for 2 "a reload forced by SIGHUP" eval "(( \$(grep -c 'config reloaded' '$DAEMON_LOG') == 3 ))" || return 1
  kill -0 "$DAEMON_PID" 2>/dev/null || why "the daemon died on SIGHUP" || return 1
  expect_count "$(cat "$DAEMON_LOG")" "config reload failed" 1 "exactly one refused reload" || return 1
}

# 27. Metrics on --metrics (in the node's netns): after exactly 3 HTTPS
#     connections (CONNECT) and 1 plain HTTP connection through the
#     authenticating proxy, and 1 noProxy-CIDR connect, all from pod-a, the
#     counters moved by exactly that and bytes grew; /healthz and /readyz
#     answer 200; /metrics shows no credential and no hostname.
scrape() { # scrape PATH: the body (fails on a non-2xx status)
  in_netns "$NS_NODE" curl -q -sS --fail --max-time 5 "http://$METRICS_ADDR$1"
}
metric() { # metric TEXT 'NAME{LABELS}': its value, 0 when absent
  awk -v k="$2" '$1 == k { v = $2 } END { print v + 0 }' <<<"$1"
}
t_metrics() {
  local cfg=$WORK/auth-config.json url before after out path i k d s
  url="http://$AUTH_USER:$AUTH_PASS@$INET_IP4:$AUTH_PROXY_PORT/"
  write_config "$cfg" "$url" "$url" "$POLICY_NOPROXY"
  use_daemon "$cfg" || why "daemon with $cfg did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  for path in /healthz /readyz; do
    out=$(scrape "$path" 2>&1) || why "GET $path failed:" "$out" || return 1
  done
  before=$(scrape /metrics 2>&1) || why "GET /metrics failed:" "$before" || return 1
  expect_match "$before" '^# EOF$' "OpenMetrics text ends with # EOF" || return 1
  for i in 1 2 3; do
    out=$(pod_curl pod-a --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
      "https://origin.test/metrics-$i" 2>&1) || why "HTTPS $i failed:" "$out" || return 1
  done
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" http://plain.test/metrics-plain 2>&1) \
    || why "plain HTTP failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/metrics-plain" "plain body (client = the proxy)" || return 1
  out=$(pod_curl pod-a "http://$NOPROXY_IP4/metrics-noproxy" 2>&1) || why "noProxy curl failed:" "$out" || return 1
  expect_contains "$out" "client=$POD_A_IP4 " "noProxy body (client = pod-a itself)" || return 1
  # An outcome is counted when the relay ends, a moment after curl exits.
  local ok='redirector_connection_outcomes_total{outcome="ok"}'
  wait_for 5 "4 more ok outcomes" \
    eval "(( \$(metric \"\$(scrape /metrics)\" '$ok') >= $(metric "$before" "$ok") + 4 ))" || return 1
  after=$(scrape /metrics 2>&1) || why "GET /metrics failed:" "$after" || return 1
  for k in \
    'redirector_connections_total{decision="proxy"} 4' \
    'redirector_connections_total{decision="kernel-bypass"} 1' \
    'redirector_connections_total{decision="direct"} 0' \
    "$ok 4" \
    'redirector_connection_outcomes_total{outcome="auth_failed"} 0' \
    'redirector_connection_outcomes_total{outcome="no_original_destination"} 0' \
    'redirector_kernel_connects_total{reason="redirected"} 4' \
    'redirector_kernel_connects_total{reason="skipped_bypass"} 1' \
    'redirector_connect_duration_seconds_count 3' \
    'redirector_connection_outcomes_total{outcome="peek_timeout"} 0' \
    'redirector_active_connections 0'; do
    d=$(( $(metric "$after" "${k% *}") - $(metric "$before" "${k% *}") ))
    [[ $d == "${k##* }" ]] || why "${k% *} moved by $d, expected ${k##* }" \
      "before: $(grep -F -- "${k% *}" <<<"$before")" "after:  $(grep -F -- "${k% *}" <<<"$after")" || return 1
  done
  for d in upstream downstream; do
    k="redirector_bytes_total{direction=\"$d\"}"
    (( $(metric "$after" "$k") > $(metric "$before" "$k") )) || why "$k did not grow:" "$(grep -F -- "$k" <<<"$after")" || return 1
  done
  for s in "$AUTH_PASS" "$(printf '%s' "$AUTH_USER:$AUTH_PASS" | base64)" origin.test plain.test "$INET_IP4"; do
    expect_not_contains "$after" "$s" "/metrics" || return 1
  done
}

# 28. Restart under load: a stream of new connections from pod-a (one every
#     ~20 ms, each with its own path) while the daemon is SIGKILLed and, a
#     second later, restarted. Nothing of that stream reaches the origin
#     directly (every request seen there comes from the proxy), the
#     connections of the gap fail fast (refused, never black-holed), and
#     after the restart requests succeed again within 2 s.
t_restart_under_load() {
  local o stop=$WORK/restart-under-load.stop log=$WORK/restart-under-load.txt
  local loop_pid t_kill t_start t_ready seen bad n ok_before gap gap_bad first_ok late_bad out
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  o=$(origin_count)
  rm -f "$stop"
  # One line per request: N START_MS EXIT_CODE DURATION_MS. Bounded at 20 s
  # whatever happens to the rest of the test.
  (
    local i=0 t0 rc end=$(( $(now_ms) + 20000 ))
    while [[ ! -e $stop ]] && (( $(now_ms) < end )); do
      t0=$(now_ms)
      pod_curl pod-a --max-time 1 -o /dev/null "http://$INET_IP4/restart-$i" 2>/dev/null
      rc=$?
      echo "$i $t0 $rc $(( $(now_ms) - t0 ))"
      i=$((i + 1))
      sleep 0.02
    done
  ) >"$log" 9>&- &
  loop_pid=$!
  BG_PIDS+=("$loop_pid")
  sleep 1
  t_kill=$(now_ms)
  kill -KILL "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null
  DAEMON_PID=""
  sleep 1
  t_start=$(now_ms)
  start_daemon || { touch "$stop"; wait "$loop_pid"; why "restart failed:" "$(tail -n 5 "$DAEMON_LOG")"; return 1; }
  t_ready=$(now_ms)
  sleep 3
  touch "$stop"
  wait "$loop_pid" 2>/dev/null
  info "  $(wc -l <"$log") requests; killed at +0, restarted at +$((t_start - t_kill)) ms, ready at +$((t_ready - t_kill)) ms"

  # Nothing direct: every request of the stream the origin saw came from the proxy.
  seen=$(origin_since "$o" | grep -E 'path=/restart-[0-9]+$')
  [[ -n $seen ]] || why "the origin saw no request of the stream" || return 1
  bad=$(grep -v "client=$INET_IP4 " <<<"$seen")
  expect_empty "$bad" "origin requests not from the proxy ($INET_IP4)" || return 1

  ok_before=$(awk -v k="$t_kill" '$2 < k && $3 == 0' "$log" | wc -l)
  ((ok_before > 0)) || why "no request succeeded before the kill:" "$(head -n 5 "$log")" || return 1
  # The gap: started after the kill, before the new instance began to start.
  # Each is refused (curl 7) in well under a second.
  gap=$(awk -v k="$t_kill" -v s="$t_start" '$2 > k + 50 && $2 + $4 < s' "$log")
  [[ -n $gap ]] || why "no request fell in the gap" || return 1
  gap_bad=$(awk '$3 != 7 || $4 >= 1000' <<<"$gap")
  expect_empty "$gap_bad" "gap requests that were not refused fast (N start rc ms)" || return 1

  # Flowing again within 2 s of the restart's start, and from then on.
  first_ok=$(awk -v s="$t_start" '$2 >= s && $3 == 0 { printf "%.0f\n", $2 + $4; exit }' "$log")
  [[ -n $first_ok ]] || why "no request succeeded after the restart:" "$(tail -n 5 "$log")" || return 1
  info "  first success $((first_ok - t_start)) ms after the restart began ($((first_ok - t_ready)) ms after ready)"
  ((first_ok - t_ready <= 2000)) || why "first success $((first_ok - t_ready)) ms after ready, expected <= 2000" || return 1
  late_bad=$(awk -v r="$t_ready" '$2 >= r + 2000 && $3 != 0' "$log")
  expect_empty "$late_bad" "failures more than 2 s after the restart (N start rc ms)" || return 1
  n=$(awk '$3 == 0' "$log" | wc -l)
  (( $(wc -l <<<"$seen") >= n )) || why "$n requests succeeded but the origin saw $(wc -l <<<"$seen")" || return 1
  # status after the takeover: the new links on the same cgroup, by path.
  out=$(redirector_status 2>&1) || why "status failed:" "$out" || return 1
  expect_match "$out" "^cgroup: $CG_ROOT \\(id [0-9]+\\)$" "status" || return 1
  expect_match "$out" "^exempt_cgroup [0-9]+: $CG_ROOT/pods/pod-b$" "status" || return 1
  expect_match "$out" "^map EXEMPT_CGROUPS: hash, [1-9][0-9]* of [0-9]+ entries$" "status" || return 1
}

# ---------------------------------------------------------------- main

DAEMON_TESTS=(https:t_https http:t_http tcp_echo:t_tcp_echo ipv6:t_ipv6
  v4_mapped:t_v4_mapped exempt_cgroup:t_exempt noproxy_cidr:t_noproxy
  open_proxy_refused:t_open_proxy no_loop:t_no_loop udp_untouched:t_udp
  fail_closed:t_fail_closed restart_takeover:t_restart
  upstream_refused:t_upstream_refused upstream_unreachable:t_upstream_unreachable
  explain:t_explain connect_hostname:t_connect_hostname noproxy_names:t_noproxy_names
  http_absolute_form:t_http_absolute bulk_transfer:t_bulk split_first_bytes:t_split_first_bytes
  silent_client:t_silent_client
  proxy_auth:t_proxy_auth proxy_tls:t_proxy_tls
  "${KUBE_TESTS[@]}" "${NODETRAFFIC_TESTS[@]}" "${SECURITY_TESTS[@]}" "${HOSTILE_TESTS[@]}" "${BOUNDS_TESTS[@]}"
  "${SWITCHES_TESTS[@]}" "${NAMES_TESTS[@]}" "${ESCAPE_TESTS[@]}" "${PROTOCOLS_TESTS[@]}"
  "${LAYOUT_TESTS[@]}" "${IDENTITY_TESTS[@]}" "${PROFILES_TESTS[@]}" "${FAILOVER_TESTS[@]}"
  "${CAINJECT_TESTS[@]}"
  reload:t_reload
  metrics:t_metrics
  restart_under_load:t_restart_under_load
  "${UPGRADE_TESTS[@]}"
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
      if [[ -n ${RDE_ONLY:-} && " $RDE_ONLY " != *" ${t%%:*} "* ]]; then
        info "--- ${t%%:*}: not selected by RDE_ONLY"
        continue
      fi
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
