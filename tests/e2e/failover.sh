# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh and lib.sh
# Failover between listed proxies (issue 18): `httpsProxy` and `httpProxy`
# list a mitmdump started here (first) and the harness's (second). pod-a
# sends a steady stream of new connections (plain HTTP and HTTPS); the
# first proxy is killed mid-run. No connection may fail after the switch
# (none at all: the dial that finds the proxy gone goes on to the next
# one), later ones reach the second proxy, nothing goes direct, and the
# metrics say which proxy is down, and the audit log names the proxy each
# connection actually used. Sourced by run.sh.

FO_PORT=3143
FO_FLOW_LOG=$WORK/flow-failover.log
FO_CONFIG=$WORK/failover-config.json
FO_AUDIT=$WORK/failover-audit.log
FO_MITM_PID=""

fo_down() {
  [[ -n $FO_MITM_PID ]] && kill_pids "$FO_MITM_PID"
  wait "$FO_MITM_PID" 2>/dev/null
  FO_MITM_PID=""
  return 0
}

fo_audit_has() { [[ -f $FO_AUDIT ]] && (($(wc -l <"$FO_AUDIT") >= $1)); }

t_failover() {
  local rc=0
  fo_body || rc=1
  fo_down
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}
fo_body() {
  local first="http://$INET_IP4:$FO_PORT/" second="http://$INET_IP4:$PROXY_PORT/"
  local log=$WORK/failover-requests.log i kind rc start killed_at bad after metrics seen
  start_mitm mitmdump-failover "$FO_PORT" "$FO_FLOW_LOG"
  FO_MITM_PID=${BG_PIDS[-1]}
  wait_for 30 "mitmdump (failover) on :$FO_PORT" port_listening "$NS_INET" "$FO_PORT" \
    || why "the first proxy did not start:" "$(tail -n 5 "$WORK/mitmdump-failover.out")" || return 1
  printf '{"httpProxy":["%s","%s"],"httpsProxy":["%s","%s"],"noProxy":["localhost"],"trustedCA":"%s","audit":{"output":"%s"}}\n' \
    "$first" "$second" "$first" "$second" "$CA_B64" "$FO_AUDIT" >"$FO_CONFIG"
  rm -f "$FO_AUDIT"
  use_daemon "$FO_CONFIG" || why "the daemon did not start with $FO_CONFIG" || return 1
  : >"$log"
  start=$(now_ms)
  # 60 new connections, about 10 a second; the first proxy dies after 2 s.
  for i in $(seq 1 60); do
    if ((i % 2)); then kind=http; else kind=https; fi
    if [[ $kind == http ]]; then
      pod_curl pod-a -o /dev/null "http://$INET_IP4/failover-$i" 2>/dev/null; rc=$?
    else
      pod_curl pod-a -k -o /dev/null "https://$INET_IP4/failover-$i" 2>/dev/null; rc=$?
    fi
    echo "$i $(now_ms) $kind $rc" >>"$log"
    if [[ -z ${killed_at:-} ]] && (( $(now_ms) - start >= 2000 )); then
      kill -KILL "$FO_MITM_PID" 2>/dev/null
      killed_at=$(now_ms)
      info "  first proxy killed after request $i"
    fi
    sleep 0.05
  done
  [[ -n ${killed_at:-} ]] || why "the first proxy was never killed" || return 1
  bad=$(awk '$4 != 0' "$log")
  expect_empty "$bad" "failed requests (N ms kind rc)" || return 1
  # Before the kill through the first, after it through the second.
  seen=$(grep -c 'failover-' "$FO_FLOW_LOG" || true)
  ((seen > 0)) || why "the first proxy saw nothing before it was killed" || return 1
  after=$(awk -v k="$killed_at" '$2 > k { print $1 }' "$log")
  for i in $after; do
    grep -q "/failover-$i " "$FLOW_LOG" \
      || why "request $i after the kill did not reach the second proxy" || return 1
  done
  info "  $(wc -w <<<"$after") requests after the kill, all through the second proxy; the first saw $seen"
  # The audit log names the proxy used, not the first listed: the last
  # connections went through the second. Lines are written as connections
  # end, by the daemon's writer task.
  wait_for 5 "60 audit lines" fo_audit_has 60 || why "audit lines: $(wc -l <"$FO_AUDIT" 2>/dev/null)" || return 1
  "$PYTHON" - "$FO_AUDIT" "${first%/}" "${second%/}" <<'PY' || why "audit log:" "$(tail -n 3 "$FO_AUDIT")" || return 1
import json, sys
path, first, second = sys.argv[1:]
used = [json.loads(l).get("proxy") for l in open(path) if l.strip()]
assert first in used, f"no audit line names the first proxy {first}: {set(used)}"
assert used[-10:] == [second] * 10, f"the last lines name {used[-10:]}, not {second}"
PY
  metrics=$(scrape /metrics) || why "scraping /metrics failed" || return 1
  expect_contains "$metrics" "redirector_upstream_proxy_up{proxy=\"http://$INET_IP4:$FO_PORT\"} 0" "metrics: the first proxy down" || return 1
  expect_contains "$metrics" "redirector_upstream_proxy_up{proxy=\"http://$INET_IP4:$PROXY_PORT\"} 1" "metrics: the second proxy up" || return 1
  expect_match "$metrics" "^redirector_upstream_proxy_failures_total\\{proxy=\"http://$INET_IP4:$FO_PORT\"\\} [1-9]" "metrics: failures of the first" || return 1
}

FAILOVER_TESTS=(failover:t_failover)
