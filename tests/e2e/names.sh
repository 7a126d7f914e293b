# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh and lib.sh
# Issue 12, items 1, 2 and 6: what a pod writes (TLS SNI, HTTP Host, the
# first bytes of a connection) no longer chooses a direct path.
#
#  - A noProxy name rule sends a connection direct only to an address the
#    name resolves to on the node (the test name server, dns.py); any other
#    address, a name without usable addresses (loopback, link-local) and a
#    lookup that times out go through the proxy, by name, counted in
#    redirector_name_checks_total{result}. Lookups are deduplicated and
#    cached within their TTL (the name server's query log proves it).
#  - The daemon never dials the node's own loopback, unspecified or
#    link-local addresses: with the kernel no longer redirecting a pod's
#    loopback, a pod cannot get such a destination to the daemon, so this
#    is shown through `explain` here and through unit tests (dial::guard,
#    connection) for the failMode-open path.
#  - missingProxy: with only httpsProxy, or only httpProxy, the class
#    without a proxy goes direct (AKS), through the other proxy, or is
#    refused; switched by hot reload.
#
# Names (under names.test, a noProxy name rule of NAMES_CONFIG), as dns.py
# answers them:
#   real.names.test    the origin's addresses (10.249.0.2, fd42:e9e5::2)
#   loop.names.test    127.0.0.1, ::1
#   ll.names.test      169.254.1.1
#   silent.names.test  never answered
#   dedup.names.test   10.249.0.2, TTL 5 s, answered 0.2 s late (before
#                      the resolver re-sends a query, after 333 ms)
# 10.249.3.2 ($NOPROXY_IP4) is another address of the origin that no
# names.test name has, and NAMES_CONFIG does not bypass it.
#
# Sourced by run.sh after lib.sh; uses run.sh's why and expect_* helpers.
# Each test restores the standard daemon at its end, pass or fail.

NAMES_DEDUP_TTL=5

# The config and the name server's entries, then a daemon with them.
names_setup() {
  local config=$WORK/names-config.json
  NAMES_CONFIG=$config
  write_config "$config" "http://$INET_IP4:$PROXY_PORT/" "http://$INET_IP4:$PROXY_PORT/" \
    '["localhost","names.test"]'
  if ! grep -q '^loop\.names\.test ' "$DNS_TABLE"; then
    cat "$DNS_TABLE" - >"$DNS_TABLE.tmp" <<EOF
loop.names.test 60 127.0.0.1 ::1
ll.names.test 60 169.254.1.1
silent.names.test silent
dedup.names.test $NAMES_DEDUP_TTL $INET_IP4 delay=200
EOF
    mv -f "$DNS_TABLE.tmp" "$DNS_TABLE"
  fi
  use_daemon "$config" || why "daemon with $config did not start:" "$(tail -n 5 "$DAEMON_LOG")"
}

# names_test BODY: runs BODY, then restores the standard daemon.
names_test() {
  local rc=0
  names_setup && "$1" || rc=1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}

# name_checks RESULT: redirector_name_checks_total{result=RESULT} now.
name_checks() {
  metric_value "$(daemon_metrics)" "redirector_name_checks_total{result=\"$1\"}"
}

# expect_checks RESULT BEFORE N: the counter grew by N (the handler counts
# just before it dials, so it is waited for briefly).
expect_checks() {
  local now
  wait_for 3 "name_checks{$1} = $2 + $3" eval "(( \$(name_checks $1) == $2 + $3 ))" || true
  now=$(name_checks "$1")
  ((now == $2 + $3)) || why "redirector_name_checks_total{result=\"$1\"}: $2 -> $now, expected +$3"
}

# dns_queries SINCE NAME TYPE: queries for NAME/TYPE in the name server's
# log after its first SINCE lines.
dns_queries() {
  tail -n "+$(( $1 + 1 ))" "$DNS_LOG" | grep -c "^QUERY $2 $3 " || true
}

# expect_proxied BODY WHAT: the origin saw the proxy (mitmproxy, $INET_IP4).
expect_proxied() {
  [[ $(body_client "$1") == "$INET_IP4" ]] || why "$2: origin saw '$(body_client "$1")', expected the proxy $INET_IP4:" "$1"
}

# --- (a) HTTP Host naming a noProxy name, to an address the name does not
#     have: absolute form through httpProxy, not direct; the issue's
#     `Host: localhost` (a noProxy entry without usable address) too.
names_host_mismatch() {
  local m o before nx out
  before=$(name_checks mismatch); nx=$(name_checks no_address)
  m=$(flow_count); o=$(origin_count)
  out=$(pod_curl pod-a -H 'Host: real.names.test' "http://$NOPROXY_IP4/nm-host" 2>&1) \
    || why "curl failed:" "$out" || return 1
  expect_proxied "$out" "Host: real.names.test at $NOPROXY_IP4" || return 1
  expect_match "$(flow_since "$m")" "^REQUEST GET http://real\\.names\\.test(:80)?/nm-host " \
    "flow log: the request, by name, through the proxy" || return 1
  expect_checks mismatch "$before" 1 || return 1
  # The issue's example: `localhost` is a noProxy entry; its addresses are
  # the node's own, so it is never direct (mitmproxy refuses the name).
  pod_curl pod-a -H 'Host: localhost' "http://$NOPROXY_IP4/nm-localhost" >/dev/null 2>&1 || true
  expect_empty "$(origin_since "$o" | grep -v "client=$INET_IP4 " || true)" \
    "origin log: a connection not from the proxy" || return 1
  expect_match "$(flow_since "$m")" "localhost" "flow log: Host localhost went to the proxy" || return 1
  expect_checks no_address "$nx" 1 || return 1
  wait_for 2 "the daemon's warning" grep -q "noProxy name rule not verified" "$DAEMON_LOG" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  info "  $(grep -m1 "noProxy name rule not verified" "$DAEMON_LOG" | cut -c1-300)"
}
t_names_host_mismatch() { names_test names_host_mismatch; }

# --- (b) TLS SNI naming a noProxy name, to an address the name does not
#     have: CONNECT by the name, MITMed by the proxy.
names_sni_mismatch() {
  local m o before out
  before=$(name_checks mismatch)
  m=$(flow_count); o=$(origin_count)
  out=$(pod_curl pod-a -k --resolve "real.names.test:443:$NOPROXY_IP4" https://real.names.test/nm-sni 2>&1) \
    || why "curl failed:" "$out" || return 1
  expect_proxied "$out" "SNI real.names.test at $NOPROXY_IP4" || return 1
  expect_count "$(flow_since "$m")" "^CONNECT real\\.names\\.test:443 " 1 "flow log: CONNECT by the name" || return 1
  expect_empty "$(origin_since "$o" | grep -v "client=$INET_IP4 " || true)" "origin log: direct connections" || return 1
  # openssl's SNI alone (no HTTP): the certificate is the MITM's, not the origin's.
  out=$(in_pod pod-a timeout 10 openssl s_client -connect "$NOPROXY_IP4:443" -servername real.names.test \
    </dev/null 2>&1)
  expect_match "$(openssl x509 -noout -issuer 2>/dev/null <<<"$out")" "issuer=.*egress-redirector" \
    "openssl -servername real.names.test: issued by the proxy's CA" || return 1
  expect_checks mismatch "$before" 2 || return 1
}
t_names_sni_mismatch() { names_test names_sni_mismatch; }

# --- (c) the name's own addresses, IPv4 and IPv6: direct, as before, the
#     pod's choice of address kept.
names_verified_direct() {
  local m before out
  before=$(name_checks verified)
  m=$(flow_count)
  out=$(pod_curl pod-a -k --resolve "real.names.test:443:$INET_IP4" https://real.names.test/nv4 2>&1) \
    || why "curl failed:" "$out" || return 1
  [[ $(body_client "$out") == "$NODE_IP4" ]] || why "IPv4: origin saw '$(body_client "$out")', expected the node $NODE_IP4:" "$out" || return 1
  out=$(pod_curl pod-a -k --resolve "real.names.test:443:[$INET_IP6]" https://real.names.test/nv6 2>&1) \
    || why "curl (IPv6) failed:" "$out" || return 1
  [[ $(body_client "$out") == "$NODE_IP6" ]] || why "IPv6: origin saw '$(body_client "$out")', expected the node $NODE_IP6:" "$out" || return 1
  out=$(pod_curl pod-a -H 'Host: real.names.test' "http://$INET_IP4/nv-host" 2>&1) \
    || why "curl (Host) failed:" "$out" || return 1
  [[ $(body_client "$out") == "$NODE_IP4" ]] || why "Host: origin saw '$(body_client "$out")', expected the node:" "$out" || return 1
  expect_empty "$(flow_since "$m")" "flow log (nothing proxied)" || return 1
  expect_checks verified "$before" 3 || return 1
}
t_names_verified_direct() { names_test names_verified_direct; }

# --- (d) names that resolve to loopback or link-local never yield a direct
#     dial: even to an address the origin really has, they go through the
#     proxy; `explain` shows why, and that the daemon never dials such a
#     destination (item 2, with the kernel's loopback skip switched off).
names_node_local() {
  local m before name out
  before=$(name_checks no_address)
  m=$(flow_count)
  for name in loop.names.test ll.names.test; do
    out=$(pod_curl pod-a -H "Host: $name" "http://$INET_IP4/nl-$name" 2>&1) \
      || why "curl Host: $name failed:" "$out" || return 1
    expect_proxied "$out" "Host: $name" || return 1
  done
  expect_count "$(flow_since "$m")" "^REQUEST GET http://(loop|ll)\\.names\\.test" 2 "flow log" || return 1
  expect_checks no_address "$before" 2 || return 1
  local c=(--proxy-config "$NAMES_CONFIG")
  out=$(explain "${c[@]}" --destination "$INET_IP4" http://loop.names.test/)
  expect_contains "$out" "decision: proxy" "explain loop.names.test" || return 1
  expect_contains "$out" "name check: no_address: loop.names.test matches noProxy rule names.test, but resolves only to 127.0.0.1, ::1" \
    "explain loop.names.test" || return 1
  out=$(explain "${c[@]}" --no-bypass-loopback --destination 127.0.0.1 http://loop.names.test/)
  expect_contains "$out" "decision: proxy" "explain --destination 127.0.0.1 loop.names.test" || return 1
  info "  $(grep '^name check' <<<"$out")"
  # A rule that names a loopback or unspecified address itself, or a class
  # without a proxy: decided direct, refused by the daemon all the same.
  local own=$WORK/names-node-local.json
  write_config "$own" "" "http://$INET_IP4:$PROXY_PORT/" '["127.0.0.1:10248","0.0.0.0:10249","169.254.169.254:80"]'
  for target in 127.0.0.1:10248 0.0.0.0:10249 '[::]:10249'; do
    out=$(explain --proxy-config "$own" --no-bypass-loopback --protocol http "$target")
    expect_contains "$out" "decision: refuse" "explain $target" || return 1
    expect_match "$out" "rule: .*never dialed direct" "explain $target" || return 1
    info "  explain $target: $(grep '^rule' <<<"$out")"
  done
  # Link-local: direct only when an IP/CIDR rule names it.
  out=$(explain --proxy-config "$own" --no-bypass-link-local --protocol http 169.254.169.254:80)
  expect_contains "$out" "decision: direct" "explain 169.254.169.254:80 (named by a rule)" || return 1
  out=$(explain --proxy-config "$own" --no-bypass-link-local --protocol http 169.254.1.1:80)
  expect_contains "$out" "decision: refuse" "explain 169.254.1.1:80 (no rule names it)" || return 1
}
t_names_node_local() { names_test names_node_local; }

# --- (e) a name server that does not answer: the proxy, within
#     --resolve-timeout (1 s) plus the proxy's hop; the failure is
#     remembered briefly (5 s), so the next connection neither waits nor
#     asks again.
names_resolver_timeout() {
  local d before t0 ms out
  before=$(name_checks lookup_failed)
  d=$(wc -l <"$DNS_LOG")
  t0=$(now_ms)
  out=$(pod_curl pod-a -H 'Host: silent.names.test' "http://$INET_IP4/nt-1" 2>&1) \
    || why "curl failed:" "$out" || return 1
  ms=$(( $(now_ms) - t0 ))
  expect_proxied "$out" "Host: silent.names.test" || return 1
  info "  first connection: ${ms} ms (timeout 1000 ms)"
  ((ms >= 900)) || why "answered in $ms ms: the lookup was not waited for" || return 1
  within_ms "$ms" 2500 "through the proxy after the resolver timeout" || return 1
  # One lookup: its query, re-sent every 333 ms within the second it may take.
  local q
  q=$(dns_queries "$d" silent.names.test A)
  ((q >= 1 && q <= 3)) || why "A queries for silent.names.test: $q, expected 1 to 3 (one lookup)" || return 1
  t0=$(now_ms)
  out=$(pod_curl pod-a -H 'Host: silent.names.test' "http://$INET_IP4/nt-2" 2>&1) \
    || why "curl failed:" "$out" || return 1
  ms=$(( $(now_ms) - t0 ))
  expect_proxied "$out" "Host: silent.names.test, again" || return 1
  info "  second connection: ${ms} ms (failure remembered)"
  within_ms "$ms" 800 "the second connection (no second wait)" || return 1
  [[ $(dns_queries "$d" silent.names.test A) == "$q" ]] \
    || why "the second connection asked again: $(dns_queries "$d" silent.names.test A) A queries, $q before" || return 1
  expect_checks lookup_failed "$before" 2 || return 1
  out=$(explain --proxy-config "$NAMES_CONFIG" --destination "$INET_IP4" http://silent.names.test/)
  expect_contains "$out" "name check: lookup_failed: silent.names.test matches noProxy rule names.test, but could not be resolved" \
    "explain silent.names.test" || return 1
}
t_names_resolver_timeout() { names_test names_resolver_timeout; }

# names_parallel N TAG: N connections at once from pod-a (one process,
# threads), Host dedup.names.test to the origin; prints each answer's last line.
names_parallel() {
  in_pod pod-a "$PYTHON" -c '
import socket, sys, threading
ip, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = [None] * n
go = threading.Event()
def one(i):
    try:
        s = socket.create_connection((ip, 80), timeout=10)
        go.wait()
        s.sendall(("GET /%s/%d HTTP/1.1\r\nHost: dedup.names.test\r\nConnection: close\r\n\r\n" % (tag, i)).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out[i] = data.decode(errors="replace").strip().splitlines()[-1]
    except OSError as e:
        out[i] = "error %s" % e
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
go.set()
for t in threads:
    t.join()
print("\n".join(out))
' "$INET_IP4" "$1" "$2"
}

# --- (f) 20 connections needing one name at once share one lookup; a
#     second round within the TTL asks nothing; after the TTL, one lookup.
names_dedup_cache() {
  local d out first_ms wait_ms
  d=$(wc -l <"$DNS_LOG")
  out=$(names_parallel 20 nd1)
  expect_count "$out" "^origin ok client=$NODE_IP4 " 20 "round 1: 20 direct answers" || return 1
  [[ $(dns_queries "$d" dedup.names.test A) == 1 && $(dns_queries "$d" dedup.names.test AAAA) == 1 ]] \
    || why "round 1 (20 at once): $(dns_queries "$d" dedup.names.test A) A and $(dns_queries "$d" dedup.names.test AAAA) AAAA queries, expected 1 each:" \
      "$(tail -n "+$((d + 1))" "$DNS_LOG")" || return 1
  first_ms=$(tail -n "+$((d + 1))" "$DNS_LOG" | awk '$2 == "dedup.names.test" { print $4; exit }')
  d=$(wc -l <"$DNS_LOG")
  out=$(names_parallel 20 nd2)
  expect_count "$out" "^origin ok client=$NODE_IP4 " 20 "round 2: 20 direct answers" || return 1
  [[ $(dns_queries "$d" dedup.names.test A) == 0 ]] \
    || why "round 2 (within the TTL): $(dns_queries "$d" dedup.names.test A) A queries, expected 0" || return 1
  # Past the TTL (counted from the answer, 0.2 s after the query).
  wait_ms=$(( first_ms + 200 + NAMES_DEDUP_TTL * 1000 + 300 - $(now_ms) ))
  ((wait_ms > 0)) && sleep "$(awk -v m="$wait_ms" 'BEGIN { print m / 1000 }')"
  d=$(wc -l <"$DNS_LOG")
  out=$(names_parallel 1 nd3)
  expect_count "$out" "^origin ok client=$NODE_IP4 " 1 "round 3: a direct answer" || return 1
  [[ $(dns_queries "$d" dedup.names.test A) == 1 ]] \
    || why "round 3 (after the TTL): $(dns_queries "$d" dedup.names.test A) A queries, expected 1" || return 1
}
t_names_dedup_cache() { names_test names_dedup_cache; }

# ---------------------------------------------------------------- missingProxy

# missing_config CLASS VALUE: $MISSING_CONFIG with only CLASS (httpProxy or
# httpsProxy) set to mitmproxy and missingProxy VALUE (none: key absent),
# replaced atomically.
missing_config() {
  local key=""
  [[ $2 != none ]] && key="\"missingProxy\":\"$2\","
  printf '{"%s":"http://%s:%s/",%s"noProxy":["10.249.3.0/24"],"trustedCA":"%s"}\n' \
    "$1" "$INET_IP4" "$PROXY_PORT" "$key" "$CA_B64" >"$MISSING_CONFIG.tmp"
  mv -f "$MISSING_CONFIG.tmp" "$MISSING_CONFIG"
}

# missing_switch CLASS VALUE: the running daemon's config becomes that, by a
# hot reload.
missing_switch() {
  local n
  n=$(grep -c "config reloaded" "$DAEMON_LOG" || true)
  missing_config "$1" "$2"
  wait_for 3 "the reload to missingProxy $2" \
    eval "(( \$(grep -c 'config reloaded' '$DAEMON_LOG') > $n ))" \
    || why "daemon log:" "$(tail -n 5 "$DAEMON_LOG")"
}

# missing_case CLASS VALUE EXPECT KIND: one connection of the class that
# has no proxy (KIND: http = plain HTTP, tls = HTTPS, tcp = raw TCP echo);
# EXPECT is direct, proxy or refused.
missing_case() {
  local class=$1 value=$2 expect=$3 kind=$4 m o out rc before after saw what
  what="$class only, missingProxy $value, $kind"
  m=$(flow_count); o=$(origin_count)
  before=$(metric_value "$(daemon_metrics)" 'redirector_connection_outcomes_total{outcome="policy_refused"}')
  case $kind in
    http) out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" "http://plain.test/mp-$class-$value" 2>&1) ;;
    tls) out=$(pod_curl pod-a -k --resolve "origin.test:443:$INET_IP4" "https://origin.test/mp-$class-$value" 2>&1) ;;
    tcp) out=$(probe pod-a tcp-echo "$INET_IP4" 7007 2>&1) ;;
  esac
  rc=$?
  # Who the origin saw: the node (direct) or the proxy.
  if [[ $kind == tcp ]]; then
    saw=$(origin_since "$o" | sed -n 's/^ECHO client=\([^ ]*\) open.*/\1/p' | head -n 1)
  else
    saw=$(body_client "$out")
  fi
  case $expect in
    direct)
      ((rc == 0)) || why "$what: failed:" "$out" || return 1
      [[ $saw == "$NODE_IP4" ]] || why "$what: origin saw '$saw', expected the node (direct):" "$out" || return 1
      expect_empty "$(flow_since "$m")" "$what: flow log" || return 1 ;;
    proxy)
      ((rc == 0)) || why "$what: failed:" "$out" || return 1
      [[ $saw == "$INET_IP4" ]] || why "$what: origin saw '$saw', expected the proxy:" "$out" || return 1
      local authority
      case $kind in
        http) authority='plain\.test:80' ;;
        tls) authority='origin\.test:443' ;;
        tcp) authority="${INET_IP4//./\\.}:7007" ;;
      esac
      expect_count "$(flow_since "$m")" "^CONNECT $authority " 1 "$what: a CONNECT tunnel" || return 1 ;;
    refused)
      ((rc != 0)) || why "$what: succeeded, expected a reset:" "$out" || return 1
      expect_empty "$(origin_since "$o")" "$what: origin log" || return 1
      expect_empty "$(flow_since "$m")" "$what: flow log" || return 1
      wait_for 3 "policy_refused counted" eval "(( \$(metric_value \"\$(daemon_metrics)\" 'redirector_connection_outcomes_total{outcome=\"policy_refused\"}') > $before ))" || true
      after=$(metric_value "$(daemon_metrics)" 'redirector_connection_outcomes_total{outcome="policy_refused"}')
      ((after == before + 1)) || why "$what: policy_refused $before -> $after, expected +1" || return 1 ;;
  esac
  info "  $what: $expect"
}

# missing_proxy CLASS KIND...: the three values for a config with only
# CLASS, each with a connection of every KIND (of the class without proxy).
missing_proxy() {
  local class=$1 kind; shift
  MISSING_CONFIG=$WORK/missing-config.json
  missing_config "$class" none
  DAEMON_CONFIG="(replaced)"  # a fresh daemon on this file
  use_daemon "$MISSING_CONFIG" || why "daemon with $MISSING_CONFIG did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  for kind in "$@"; do missing_case "$class" default direct "$kind" || return 1; done
  missing_switch "$class" useOther || return 1
  for kind in "$@"; do missing_case "$class" useOther proxy "$kind" || return 1; done
  missing_switch "$class" refuse || return 1
  for kind in "$@"; do missing_case "$class" refuse refused "$kind" || return 1; done
  missing_switch "$class" direct || return 1
  for kind in "$@"; do missing_case "$class" direct direct "$kind" || return 1; done
}

# --- only httpsProxy: plain HTTP direct (AKS), CONNECT host:80 through
#     httpsProxy (useOther), or reset (refuse).
t_missing_proxy_https_only() {
  local rc=0
  missing_proxy httpsProxy http || rc=1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}

# --- only httpProxy: TLS and raw TCP direct (AKS), CONNECT through
#     httpProxy (useOther), or reset (refuse).
t_missing_proxy_http_only() {
  local rc=0
  missing_proxy httpProxy tls tcp || rc=1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}

NAMES_TESTS=(names_host_mismatch:t_names_host_mismatch names_sni_mismatch:t_names_sni_mismatch
  names_verified_direct:t_names_verified_direct names_node_local:t_names_node_local
  names_resolver_timeout:t_names_resolver_timeout names_dedup_cache:t_names_dedup_cache
  missing_proxy_https_only:t_missing_proxy_https_only missing_proxy_http_only:t_missing_proxy_http_only)
