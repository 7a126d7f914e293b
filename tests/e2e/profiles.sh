# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh, lib.sh, kube.sh, identity.sh
# Profiles per namespace (issue 18): two namespaces through two proxies
# with two credentials at once. team-a (pod-i1) selects profile "a", the
# harness's mitmdump with proxyauth (user:s3cret, inline in the URL);
# team-b (pod-i2) selects profile "b", a third mitmdump started here that
# wants another user, whose credentials are read from files as a Secret's
# mount holds them. The label is switched live, an unknown profile is
# refused (never direct), a hot reload adds a profile. Sourced by run.sh
# after kube.sh and identity.sh (the fake API server, pod-i1 and pod-i2).

PROF_PORT=3142
PROF_USER=teamb
PROF_PASS=pr0f-b-s3cret   # must never show up in a log
PROF_FLOW_LOG=$WORK/flow-profile-b.log
PROF_CONFIG=$WORK/profiles-config.json
PROF_SECRET_DIR=$WORK/profile-b-secret
PROF_AUDIT=$WORK/audit.log
PROF_MITM_PID=""
PROF_SEQ=0

# prof_write_config [EXTRA]: the config with profiles a and b; EXTRA is
# more profiles' JSON, starting with a comma.
prof_write_config() {
  local a="http://$AUTH_USER:$AUTH_PASS@$INET_IP4:$AUTH_PROXY_PORT/" b="http://$INET_IP4:$PROF_PORT/"
  mkdir -p "$PROF_SECRET_DIR"
  printf '%s\n' "$PROF_USER" >"$PROF_SECRET_DIR/username"
  printf '%s\n' "$PROF_PASS" >"$PROF_SECRET_DIR/password"
  printf '%s\n' "{\"httpProxy\":\"http://$INET_IP4:$PROXY_PORT/\",\"httpsProxy\":\"http://$INET_IP4:$PROXY_PORT/\",
 \"noProxy\":[\"localhost\"],\"trustedCA\":\"$CA_B64\",
 \"audit\":{\"output\":\"$PROF_AUDIT\"},
 \"profiles\":{
  \"a\":{\"httpProxy\":\"$a\",\"httpsProxy\":\"$a\"},
  \"b\":{\"httpProxy\":\"$b\",\"httpsProxy\":\"$b\",
       \"credentials\":{\"usernameFile\":\"$PROF_SECRET_DIR/username\",\"passwordFile\":\"$PROF_SECRET_DIR/password\"}}${1:-}}}" \
    >"$PROF_CONFIG.tmp"
  mv -f "$PROF_CONFIG.tmp" "$PROF_CONFIG"
}

prof_up() {
  identity_pod_up pod-i1 40 && identity_pod_up pod-i2 41 || return 1
  start_mitm mitmdump-profile "$PROF_PORT" "$PROF_FLOW_LOG" --set proxyauth="$PROF_USER:$PROF_PASS"
  PROF_MITM_PID=${BG_PIDS[-1]}
  wait_for 30 "mitmdump (profile b) on :$PROF_PORT" port_listening "$NS_INET" "$PROF_PORT" \
    || why "mitmdump for profile b did not start:" "$(tail -n 5 "$WORK/mitmdump-profile.out")" || return 1
  if [[ -z $KUBE_API_PID ]] || ! kill -0 "$KUBE_API_PID" 2>/dev/null; then kube_api_start || return 1; fi
  kube_config_file
  kube_ns team-a '{"egress-redirector/profile":"a"}' || return 1
  kube_ns team-b '{"egress-redirector/profile":"b"}' || return 1
  kube_api "{\"op\":\"pod\",\"namespace\":\"team-a\",\"name\":\"p1\",\"uid\":\"0a0a0a0a-4040-4222-8333-444444444444\",\"node\":\"$KUBE_NODE\",\"podIPs\":[\"$POD_I1_IP4\"]}" || return 1
  kube_api "{\"op\":\"pod\",\"namespace\":\"team-b\",\"name\":\"p2\",\"uid\":\"0b0b0b0b-4141-4222-8333-444444444444\",\"node\":\"$KUBE_NODE\",\"podIPs\":[\"$POD_I2_IP4\"]}" || return 1
  prof_write_config
  rm -f "$PROF_AUDIT"
  use_daemon "$PROF_CONFIG" --kube --node-name "$KUBE_NODE" || return 1
  wait_for 10 "the daemon's first reconcile" grep -q "exempt pods:" "$DAEMON_LOG"
}
prof_down() {
  [[ -n $PROF_MITM_PID ]] && kill_pids "$PROF_MITM_PID"
  wait "$PROF_MITM_PID" 2>/dev/null
  PROF_MITM_PID=""
  if [[ -n $KUBE_API_PID ]]; then
    kube_api '{"op":"delete-pod","namespace":"team-a","name":"p1"}'
    kube_api '{"op":"delete-pod","namespace":"team-b","name":"p2"}'
  fi
  identity_pod_down pod-i1 40
  identity_pod_down pod-i2 41
  return 0
}

# prof_get POD TAG: one plain-HTTP request on a path of its own; prints the
# path, returns curl's status.
prof_get() {
  PROF_SEQ=$((PROF_SEQ + 1))
  local path=/prof-$2-$PROF_SEQ-$RANDOM
  echo "$path"
  pod_curl "$1" -o /dev/null "http://$INET_IP4$path" 2>/dev/null
}

# prof_via PATH: which proxy saw PATH: "a" (the proxyauth mitmdump), "b"
# (this file's), "top" (the standard one), "none" or "several".
prof_via() {
  local seen=()
  grep -qF " http://$INET_IP4$1 " "$AUTH_FLOW_LOG" && seen+=(a)
  grep -qF " http://$INET_IP4$1 " "$PROF_FLOW_LOG" && seen+=(b)
  grep -qF " http://$INET_IP4$1 " "$FLOW_LOG" && seen+=(top)
  case ${#seen[@]} in 0) echo none ;; 1) echo "${seen[0]}" ;; *) echo several ;; esac
}

# prof_switch POD WANT WHAT: new connections from POD reach WANT, within
# 2 s of the change (TOGGLE_MS, kube.sh) plus a request's time.
prof_switch() {
  local pod=$1 want=$2 start ms path via
  start=$(now_ms)
  while :; do
    path=$(prof_get "$pod" switch)
    via=$(prof_via "$path")
    [[ $via == "$want" ]] && break
    ms=$(( $(now_ms) - start ))
    ((ms < TOGGLE_MS + 3000)) || why "$3: $pod still via '$via' after $ms ms, expected '$want'" || return 1
    sleep 0.1
  done
  ms=$(( $(now_ms) - start ))
  info "  $3: $pod via $want $ms ms after the change"
  ((ms <= TOGGLE_MS + 500)) || why "$3: took $ms ms (bound $TOGGLE_MS ms)"
}

# prof_audit_check PATH NS POD ADDR PROFILE PROXY-PORT: the audit line of
# the connection that fetched PATH (found by its request's time order: the
# daemon writes the line when the connection ends) says all that.
prof_audit_check() {
  "$PYTHON" - "$PROF_AUDIT" "$@" <<'PY' || why "audit log for $1:" "$(tail -n 3 "$PROF_AUDIT")"
import json, sys
log, path, ns, pod, addr, profile, port = sys.argv[1:]
lines = [json.loads(l) for l in open(log)]
mine = [l for l in lines if l["pod"] == pod and l["profile"] == profile]
assert mine, "no line for pod %s with profile %s in %d lines" % (pod, profile, len(lines))
l = mine[0]
want = {"namespace": ns, "pod_addr": addr, "dst": "10.249.0.2:80", "name": None,  # an IP literal is no name
        "decision": "proxy", "rule": "httpProxy", "proxy": "http://10.249.0.2:%s" % port,
        "outcome": "ok"}
bad = {k: (l.get(k), v) for k, v in want.items() if l.get(k) != v}
assert not bad, "fields (got, want): %s in %s" % (bad, l)
assert l["bytes_up"] > 50 and l["bytes_down"] > 50 and l["duration_ms"] >= 0, l
assert l["time"].endswith("Z") and l["node"] == "rde-node", l
PY
}

t_profiles() {
  local rc=0
  prof_up && prof_body || rc=1
  prof_down
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}
prof_body() {
  local i j1 j2 p1=() p2=() path origin_before via logs out
  # At once: both pods' requests interleaved.
  : >"$WORK/prof-p1.paths"; : >"$WORK/prof-p2.paths"
  for i in 1 2 3 4 5; do
    prof_get pod-i1 a >>"$WORK/prof-p1.paths" &
    j1=$!
    prof_get pod-i2 b >>"$WORK/prof-p2.paths" &
    j2=$!
    wait "$j1" "$j2"   # these two only: the daemon and proxies are children too
  done
  mapfile -t p1 <"$WORK/prof-p1.paths"
  mapfile -t p2 <"$WORK/prof-p2.paths"
  ((${#p1[@]} == 5 && ${#p2[@]} == 5)) || why "expected 5 requests from each pod, got ${#p1[@]} and ${#p2[@]}" || return 1
  for path in "${p1[@]}"; do
    via=$(prof_via "$path")
    [[ $via == a ]] || why "team-a's $path went via '$via', expected profile a's proxy" || return 1
  done
  for path in "${p2[@]}"; do
    via=$(prof_via "$path")
    [[ $via == b ]] || why "team-b's $path went via '$via', expected profile b's proxy" || return 1
  done
  expect_match "$(grep -F "/prof-b-" "$PROF_FLOW_LOG")" "user=$PROF_USER" "profile b's proxy saw its own user" || return 1
  # The audit log: one line per connection, naming pod, profile and proxy.
  prof_audit_check "${p1[0]}" team-a p1 "$POD_I1_IP4" a "$AUTH_PROXY_PORT" || return 1
  prof_audit_check "${p2[0]}" team-b p2 "$POD_I2_IP4" b "$PROF_PORT" || return 1
  # TLS too: CONNECT through profile b's proxy with its credentials.
  pod_curl pod-i2 -k -o /dev/null "https://$INET_IP4/prof-tls" || why "team-b's HTTPS failed" || return 1
  expect_match "$(cat "$PROF_FLOW_LOG")" "^CONNECT $INET_IP4:443 .*user=$PROF_USER" "profile b's CONNECT" || return 1
  # status and explain --namespace name the profile in force, no secret.
  wait_for 5 "status naming team-b's profile" eval 'redirector_status 2>/dev/null | grep -qx "profile team-b: b"' \
    || why "status:" "$(redirector_status 2>&1 | grep profile)" || return 1
  out=$(explain --proxy-config "$PROF_CONFIG" --namespace team-b "http://$INET_IP4/x")
  expect_contains "$out" "profile: b (namespace team-b's label" "explain --namespace team-b" || return 1
  expect_contains "$out" "proxy: http://$INET_IP4:$PROF_PORT" "explain --namespace team-b" || return 1
  out=$(explain --proxy-config "$PROF_CONFIG" --namespace team-a --json "https://$INET_IP4/x")
  expect_contains "$out" "\"profile\":\"a\"" "explain --namespace team-a --json" || return 1
  expect_contains "$out" "$AUTH_PROXY_PORT" "explain --namespace team-a --json" || return 1
  out=$(explain --proxy-config "$PROF_CONFIG" --namespace default "http://$INET_IP4/x")
  expect_contains "$out" "profile: none, the top level" "explain --namespace default" || return 1
  expect_not_contains "$out$(redirector_status 2>&1)" "$PROF_PASS" "explain and status" || return 1
  # The label changes: team-b to profile a and back, then unlabelled.
  kube_ns team-b '{"egress-redirector/profile":"a"}' || return 1
  prof_switch pod-i2 a "team-b relabelled to a" || return 1
  kube_ns team-b '{"egress-redirector/profile":"b"}' || return 1
  prof_switch pod-i2 b "team-b relabelled to b" || return 1
  kube_ns team-b '{}' || return 1
  prof_switch pod-i2 top "team-b unlabelled" || return 1
  # An unknown profile: refused, never direct (the origin sees nothing).
  kube_ns team-b '{"egress-redirector/profile":"nope"}' || return 1
  wait_for 5 "the unknown profile refused" eval '! prof_get pod-i2 unknown-wait >/dev/null' || return 1
  origin_before=$(origin_count)
  if path=$(prof_get pod-i2 unknown); then why "team-b with an unknown profile reached $path"; return 1; fi
  via=$(prof_via "$path")
  [[ $via == none ]] || why "unknown profile: $path went via '$via'" || return 1
  [[ $(origin_count) == "$origin_before" ]] || why "unknown profile: the origin saw a request" || return 1
  expect_contains "$(cat "$DAEMON_LOG")" 'profile `nope`' "the daemon's warning for the unknown profile" || return 1
  # The refusal is audited too, naming the profile asked for.
  "$PYTHON" - "$PROF_AUDIT" <<'PY' || why "no audit line for the refusal:" "$(tail -n 3 "$PROF_AUDIT")" || return 1
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert any(l["namespace"] == "team-b" and l["profile"] == "nope" and l["decision"] == "refuse"
           and l["outcome"] == "policy_refused" and l["proxy"] is None for l in lines), lines[-3:]
PY
  # The daemon publishes labels within a second: wait for this one.
  wait_for 5 "explain refusing team-b (unknown profile)" eval \
    'explain --proxy-config "$PROF_CONFIG" --namespace team-b "http://$INET_IP4/x" | grep -qx "decision: refuse"' \
    || why "explain for an unknown profile:" "$(explain --proxy-config "$PROF_CONFIG" --namespace team-b "http://$INET_IP4/x")" || return 1
  # A hot reload defines "nope" (profile b's proxy): the label now works.
  prof_write_config ",\"nope\":{\"httpProxy\":\"http://$INET_IP4:$PROF_PORT/\",\"credentials\":{\"username\":\"$PROF_USER\",\"passwordFile\":\"$PROF_SECRET_DIR/password\"}}"
  prof_switch pod-i2 b "profile nope defined by a hot reload" || return 1
  # No credential anywhere in the daemon's logs.
  logs=$(all_daemon_logs)
  expect_not_contains "$logs" "$PROF_PASS" "the daemon's log" || return 1
  expect_not_contains "$logs" "$AUTH_PASS" "the daemon's log" || return 1
  expect_not_contains "$(cat "$PROF_AUDIT")" "$PROF_PASS" "the audit log" || return 1
  expect_not_contains "$(cat "$PROF_AUDIT")" "$AUTH_PASS" "the audit log" || return 1
}

PROFILES_TESTS=(profiles:t_profiles)
