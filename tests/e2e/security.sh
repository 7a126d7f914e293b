# shellcheck shell=bash
# Security end-to-end tests (issue 7): the listener is no open proxy from
# anywhere, the daemon runs with only CAP_BPF + CAP_NET_ADMIN, an
# unsupported setting fails at start with the missing piece named,
# credentials appear in no output, full maps fail closed, and
# allowPodOptOut: false takes pods' self-exemption away live.
#
# Sourced by run.sh after lib.sh and kube.sh (tests t_sec_*; the
# allowPodOptOut test reuses kube.sh's fake API server and pods).

# sec_fresh_daemon CONFIG [RUN-FLAGS...]: a new daemon instance whatever
# runs now (the environment may carry test-only settings), marked so that
# the next use_daemon replaces it rather than reusing it.
sec_fresh_daemon() {
  local rc=0
  DAEMON_CONFIG="(replaced)"
  use_daemon "$@" || rc=$?
  DAEMON_CONFIG="(test-only) $DAEMON_CONFIG"
  return "$rc"
}

# exempt_ids: the ids in the pinned exempt-cgroup map, one per line.
exempt_ids() {
  redirector_status 2>/dev/null | sed -n 's/^exempt_cgroups: //p' | tr ',' '\n' | tr -d ' ' | grep -v '^$'
}

# --- connections to the listeners that no hook redirected are refused,
#     whoever makes them: another host (rde-inet, no cgroup of ours), and a
#     pod that dials the listener itself (under the attach root, where the
#     hook leaves connects to the proxy address alone). Each is closed
#     without a byte, counted as no_original_destination, and nothing
#     reaches the proxy or the origin.
t_sec_open_proxy_foreign() {
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  local m o before after dst out rc n=0 k='redirector_connection_outcomes_total{outcome="no_original_destination"}'
  m=$(flow_count); o=$(origin_count)
  before=$(scrape /metrics) || why "GET /metrics failed" || return 1
  for dst in "$NODE_IP4" "$NODE_IP6"; do
    for data in "CONNECT $INET_IP4:80 HTTP/1.1\r\nHost: $INET_IP4:80\r\n\r\n" \
      "GET http://$INET_IP4/foreign-abs HTTP/1.1\r\nHost: $INET_IP4\r\n\r\n" \
      "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"; do
      out=$(in_netns "$NS_INET" "$PYTHON" "$E2E_DIR/netprobe.py" raw-send "$dst" "$LISTEN_PORT" "$data" 2>&1) \
        || why "from rde-inet to $dst port $LISTEN_PORT (${data:0:12}...): $out" || return 1
      n=$((n + 1))
    done
  done
  info "  $n connections from another host: each closed without a byte"
  # A pod, from its own cgroup (hooked), using the listener as a proxy.
  out=$(pod_curl pod-a --max-time 5 -x "http://$NODE_IP4:$LISTEN_PORT" "http://$INET_IP4/pod-open-proxy" 2>&1)
  rc=$?
  [[ $rc == 52 || $rc == 56 || $rc == 7 ]] || why "pod-a curl -x the listener: exit $rc, expected 52, 56 or 7:" "$out" || return 1
  out=$(probe pod-a raw-send "$NODE_IP4" "$LISTEN_PORT" "CONNECT $INET_IP4:80 HTTP/1.1\r\nHost: $INET_IP4:80\r\n\r\n" 2>&1) \
    || why "pod-a raw CONNECT to the listener: $out" || return 1
  n=$((n + 2))
  expect_empty "$(flow_since "$m")" "flow log" || return 1
  expect_empty "$(origin_since "$o")" "origin log" || return 1
  wait_for 3 "$n no_original_destination outcomes" \
    eval "(( \$(metric \"\$(scrape /metrics)\" '$k') - $(metric "$before" "$k") >= $n ))" || true
  after=$(scrape /metrics)
  (( $(metric "$after" "$k") - $(metric "$before" "$k") == n )) \
    || why "$k moved by $(( $(metric "$after" "$k") - $(metric "$before" "$k") )), expected $n" || return 1
}

# A wrapper that runs the daemon as the DaemonSet's container does: root,
# with only CAPS in the bounding set (so root's capabilities are exactly
# those) and no_new_privs (allowPrivilegeEscalation: false).
lowcap_bin() { # lowcap_bin FILE CAPS (setpriv syntax: +bpf,+net_admin)
  cat >"$1" <<EOF
#!/bin/sh
exec setpriv --bounding-set=-all$2 --inh-caps=-all --no-new-privs -- "$REDIRECTOR_BIN" "\$@"
EOF
  chmod +x "$1"
}

# --- the DaemonSet's capabilities are enough (CAP_BPF + CAP_NET_ADMIN,
#     nothing else): the daemon takes over the pins, redirects, skips the
#     exempt cgroup, answers /readyz. With CAP_NET_ADMIN missing, or with
#     no capability at all, it refuses to start and names what is missing.
t_sec_least_caps() {
  local bin=$WORK/redirector-lowcap out rc caps pid
  command -v setpriv >/dev/null || why "setpriv (util-linux) is missing" || return 1
  lowcap_bin "$bin" ",+bpf,+net_admin"
  stop_daemon
  DAEMON_LOG_GEN=$((DAEMON_LOG_GEN + 1))
  [[ -s $DAEMON_LOG ]] && cp "$DAEMON_LOG" "$DAEMON_LOG.$DAEMON_LOG_GEN"
  REDIRECTOR_BIN=$bin start_daemon "$PROXY_CONFIG"; rc=$?
  ((rc == 0)) || why "the daemon with CAP_BPF + CAP_NET_ADMIN did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  DAEMON_CONFIG="(test-only) $DAEMON_CONFIG"  # the next use_daemon replaces it
  pid=$DAEMON_PID
  caps=$(awk '/^CapEff/ { print $2 }' "/proc/$pid/status")
  # CAP_NET_ADMIN = bit 12, CAP_BPF = bit 39
  [[ $caps == 0000008000001000 ]] || why "the daemon's effective capabilities are $caps, expected 0000008000001000" || return 1
  grep -q "^NoNewPrivs:[[:space:]]*1" "/proc/$pid/status" || why "no_new_privs is not set on the daemon" || return 1
  expect_contains "$(cat "$DAEMON_LOG")" "taking over" "the low-capability daemon took over the pins" || return 1
  out=$(pod_curl pod-a "http://$INET_IP4/least-caps" 2>&1) || why "pod-a curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/least-caps" "pod-a via the proxy" || return 1
  out=$(pod_curl pod-b "http://$INET_IP4/least-caps-exempt" 2>&1) || why "pod-b curl failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$POD_B_IP4 path=/least-caps-exempt" "pod-b (exempt) direct" || return 1
  out=$(scrape /readyz 2>&1) || why "/readyz of the low-capability daemon:" "$out" || return 1
  info "  CapEff $caps, NoNewPrivs 1: redirects, exempts, ready"
  stop_daemon

  # Too few: each start fails before anything is loaded or pinned.
  local try
  for try in ",+bpf:CAP_NET_ADMIN" ":CAP_BPF"; do
    lowcap_bin "$bin" "${try%%:*}"
    out=$(in_cgroup_netns "$CG_ROOT/system/redirector" "$NS_NODE" timeout 20 "$bin" run \
      --proxy-config "$PROXY_CONFIG" --cgroup "$CG_ROOT" --listen "$NODE_IP4:$LISTEN_PORT" \
      --bpffs "$WORK/bpffs-unused" 2>&1)
    rc=$?
    ((rc != 0 && rc != 124)) || why "bounding set '${try%%:*}': exit $rc, expected an error:" "$out" || return 1
    expect_contains "$out" "not permitted" "bounding set '-all${try%%:*}'" || return 1
    expect_contains "$out" "${try#*:}" "bounding set '-all${try%%:*}' names ${try#*:}" || return 1
    [[ ! -e $WORK/bpffs-unused ]] || why "something was created under $WORK/bpffs-unused" || return 1
    info "  bounding set -all${try%%:*}: $(grep -m1 error <<<"$out")"
  done
  use_daemon "$PROXY_CONFIG" || why "the normal daemon did not start again" || return 1
}

# --- an unsupported attach point: a --cgroup that is not cgroup v2 (a
#     tmpfs, a missing directory) stops the start with the problem named,
#     and nothing is pinned.
t_sec_not_cgroup2() {
  local dir=$WORK/not-cgroup2 out rc pins=$WORK/bpffs-unused
  mkdir -p "$dir"
  mount -t tmpfs rde-not-cgroup2 "$dir" || why "cannot mount a tmpfs on $dir" || return 1
  out=$(in_cgroup_netns "$CG_ROOT/system/redirector" "$NS_NODE" timeout 20 "$REDIRECTOR_BIN" run \
    --proxy-config "$PROXY_CONFIG" --cgroup "$dir" --listen "$NODE_IP4:$LISTEN_PORT" --bpffs "$pins" 2>&1)
  rc=$?
  umount "$dir"
  ((rc != 0 && rc != 124)) || why "--cgroup on tmpfs: exit $rc, expected an error:" "$out" || return 1
  expect_contains "$out" "--cgroup $dir: not a cgroup v2 directory (it is on tmpfs)" "the error" || return 1
  [[ ! -e $pins ]] || why "something was created under $pins" || return 1
  info "  $(grep -m1 error <<<"$out")"
  out=$(in_cgroup_netns "$CG_ROOT/system/redirector" "$NS_NODE" timeout 20 "$REDIRECTOR_BIN" run \
    --proxy-config "$PROXY_CONFIG" --cgroup "$CG_ROOT/no-such-cgroup" --listen "$NODE_IP4:$LISTEN_PORT" \
    --bpffs "$pins" 2>&1)
  rc=$?
  ((rc != 0 && rc != 124)) || why "--cgroup missing: exit $rc, expected an error:" "$out" || return 1
  expect_contains "$out" "--cgroup $CG_ROOT/no-such-cgroup: No such file or directory" "the error" || return 1
  # the running daemon was not disturbed
  out=$(pod_curl pod-a "http://$INET_IP4/after-not-cgroup2" 2>&1) || why "pod-a curl failed:" "$out" || return 1
  expect_contains "$out" "client=$INET_IP4 " "pod-a still via the proxy" || return 1
}

# --- credentials appear nowhere: with a user:password proxy URL, after
#     proxied traffic (HTTPS and plain HTTP), a refused one (wrong
#     password), a reload and a refused reload of credentialed URLs, neither
#     the password nor its Basic base64 is in the daemon's log, /metrics,
#     `status` (text, JSON, with --proxy-config), `explain` (text, JSON) or a
#     start-up error; the proxy's host:port still shows where it should.
t_sec_redaction() {
  local cfg=$WORK/redact-config.json bad=$WORK/redact-bad.json url out s
  local pass=$AUTH_PASS b64 b64bad
  url="http://$AUTH_USER:$pass@$INET_IP4:$AUTH_PROXY_PORT/"
  b64=$(printf '%s' "$AUTH_USER:$pass" | base64)
  b64bad=$(printf '%s' "$AUTH_USER:$BAD_PASS" | base64)
  write_config "$cfg" "$url" "$url" "$POLICY_NOPROXY"
  use_daemon "$cfg" || why "daemon with $cfg did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  out=$(pod_curl pod-a --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" https://origin.test/redact-tls 2>&1) \
    || why "HTTPS through the auth proxy failed:" "$out" || return 1
  out=$(pod_curl pod-a --resolve "plain.test:80:$INET_IP4" http://plain.test/redact-plain 2>&1) \
    || why "plain HTTP through the auth proxy failed:" "$out" || return 1
  # reload: the same proxy plus a noProxy entry (logged with the proxy URL)
  write_config "$cfg.tmp" "$url" "$url" '["10.249.3.0/24","localhost","redact.test"]'
  mv -f "$cfg.tmp" "$cfg"
  wait_for 3 "the reload" grep -q "config reloaded" "$DAEMON_LOG" || return 1
  # a wrong password: 407 from the proxy, logged as an auth failure
  write_config "$cfg.tmp" "${url/$pass/$BAD_PASS}" "${url/$pass/$BAD_PASS}" "$POLICY_NOPROXY"
  mv -f "$cfg.tmp" "$cfg"
  wait_for 3 "the second reload" eval "(( \$(grep -c 'config reloaded' '$DAEMON_LOG') == 2 ))" || return 1
  pod_curl pod-a --max-time 5 --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
    https://origin.test/redact-wrong >/dev/null 2>&1
  wait_for 3 "an auth failure in the daemon log" grep -Eiq '407|auth' "$DAEMON_LOG" || return 1
  # a refused reload: a credentialed URL with a bad scheme and one with a bad port
  printf '{"httpsProxy": "socks5://%s:%s@%s:1080"}\n' "$AUTH_USER" "$pass" "$INET_IP4" >"$cfg.tmp"
  mv -f "$cfg.tmp" "$cfg"
  wait_for 3 "a refused reload" grep -q "config reload failed" "$DAEMON_LOG" || return 1
  printf '{"httpsProxy": "http://%s:%s@%s:99999"}\n' "$AUTH_USER" "$pass" "$INET_IP4" >"$cfg.tmp"
  mv -f "$cfg.tmp" "$cfg"
  wait_for 3 "a second refused reload" eval "(( \$(grep -c 'config reload failed' '$DAEMON_LOG') == 2 ))" || return 1
  cp "$cfg" "$bad"
  write_config "$cfg.tmp" "$url" "$url" "$POLICY_NOPROXY"
  mv -f "$cfg.tmp" "$cfg"
  wait_for 3 "the third reload" eval "(( \$(grep -c 'config reloaded' '$DAEMON_LOG') == 3 ))" || return 1

  # Every output, each labelled, each checked for being what it claims.
  local -A outputs
  outputs[daemon-log]=$(all_daemon_logs)
  outputs[metrics]=$(scrape /metrics)
  outputs[status]=$(redirector_status 2>&1)
  outputs[status-json]=$(timeout 10 "$REDIRECTOR_BIN" status --json --bpffs "$PIN_DIR" --proxy-config "$cfg" 2>&1)
  outputs[status-config]=$(timeout 10 "$REDIRECTOR_BIN" status --bpffs "$PIN_DIR" --proxy-config "$cfg" 2>&1)
  outputs[status-bad-config]=$(timeout 10 "$REDIRECTOR_BIN" status --bpffs "$PIN_DIR" --proxy-config "$bad" 2>&1)
  outputs[explain]=$(explain --proxy-config "$cfg" https://origin.test/)
  outputs[explain-json]=$(explain --proxy-config "$cfg" --json http://plain.test/)
  outputs[explain-bad]=$(explain --proxy-config "$bad" https://origin.test/)
  outputs[run-bad]=$(in_cgroup_netns "$CG_ROOT/system/redirector" "$NS_NODE" timeout 20 "$REDIRECTOR_BIN" run \
    --proxy-config "$bad" --cgroup "$CG_ROOT" --listen "$NODE_IP4:$LISTEN_PORT" --bpffs "$WORK/bpffs-unused" 2>&1)
  expect_contains "${outputs[daemon-log]}" "config reloaded" "daemon log" || return 1
  expect_contains "${outputs[daemon-log]}" "$INET_IP4:$AUTH_PROXY_PORT" "daemon log names the proxy" || return 1
  expect_match "${outputs[daemon-log]}" "config reload failed.*$INET_IP4:1080" "daemon log: the refused URL, redacted" || return 1
  expect_match "${outputs[metrics]}" '^# EOF$' "/metrics" || return 1
  expect_contains "${outputs[status]}" "redirected:" "status" || return 1
  expect_contains "${outputs[status-json]}" '"counters"' "status --json" || return 1
  expect_contains "${outputs[status-config]}" "config_digest:" "status --proxy-config" || return 1
  expect_contains "${outputs[explain]}" "$INET_IP4:$AUTH_PROXY_PORT" "explain names the proxy" || return 1
  expect_contains "${outputs[explain-json]}" '"decision"' "explain --json" || return 1
  expect_contains "${outputs[explain-bad]}" "$INET_IP4:99999" "explain of the bad file names the URL" || return 1
  expect_contains "${outputs[run-bad]}" "$INET_IP4:99999" "run with the bad file names the URL" || return 1
  local name bad_found=0
  for name in "${!outputs[@]}"; do
    for s in "$pass" "$BAD_PASS" "$b64" "$b64bad"; do
      if [[ ${outputs[$name]} == *"$s"* ]]; then
        why "'$s' appears in $name:" "$(grep -F -- "$s" <<<"${outputs[$name]}" | head -n 3)"
        bad_found=1
      fi
    done
  done
  ((bad_found == 0)) || return 1
  info "  ${#outputs[@]} outputs checked: no password, no Basic token"
}

# --- a full exempt-cgroup map fails closed. The map is shrunk to 2 entries
#     (the test-only REDIRECTOR_DEBUG_MAP_MAX); the static --exempt-cgroup
#     takes one, so of two pods annotated exempt one fits and the other
#     stays redirected, logged once and counted; freeing the slot lets it in.
t_sec_exempt_map_full() {
  kube_up || return 1
  local out direct proxied rc=0
  # Only the static entry may be inherited: the new instance adopts what is
  # in the map, and more than fits would stop its start.
  kube_pod_a '{}' && kube_pod_s '{}' && kube_ns shop '{}' && kube_ns ops '{}' || return 1
  # shellcheck disable=SC2016  # expanded by eval on every try
  wait_for 5 "only the static exempt cgroup in the map" eval '[[ $(exempt_ids | wc -l) == 1 ]]' \
    || why "exempt ids: $(exempt_ids | tr '\n' ' ')" || return 1
  export REDIRECTOR_DEBUG_MAP_MAX=EXEMPT_CGROUPS=2
  sec_fresh_daemon "$PROXY_CONFIG" --kube --node-name "$KUBE_NODE" || rc=$?
  unset REDIRECTOR_DEBUG_MAP_MAX
  ((rc == 0)) || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  grep -q "map shrunk" "$DAEMON_LOG" || why "the daemon did not shrink the map" || return 1
  kube_pod_a '{"egress-redirector/exempt":"true"}' || return 1
  kube_pod_s '{"egress-redirector/exempt":"true"}' || return 1
  wait_for 5 "a pod that could not be exempted" grep -q "cannot exempt a pod" "$DAEMON_LOG" \
    || why "no 'cannot exempt' line:" "$(grep -E 'exempt' "$DAEMON_LOG" | tail -n 5)" || return 1
  sleep 0.5
  direct=""; proxied=""
  for p in a s; do
    case $(route_of "$p" "map-full") in
      direct) direct+=$p ;;
      proxy) proxied+=$p ;;
      *) why "pod $p: neither direct nor via the proxy" || return 1 ;;
    esac
  done
  [[ ${#direct} == 1 && ${#proxied} == 1 ]] \
    || why "expected one pod exempt and one redirected, got direct='$direct' proxy='$proxied'" || return 1
  info "  pod $direct exempt, pod $proxied redirected (map full)"
  expect_contains "$(grep 'cannot exempt a pod' "$DAEMON_LOG")" "is full (2 entries)" "the log names the full map" || return 1
  expect_count "$(grep 'cannot exempt a pod' "$DAEMON_LOG")" "." 1 "logged once, not on every retry" || return 1
  out=$(scrape /metrics)
  [[ $(metric "$out" redirector_exempt_pods_unapplied) == 1 ]] \
    || why "redirector_exempt_pods_unapplied:" "$(grep exempt <<<"$out")" || return 1
  (( $(metric "$out" redirector_exempt_map_write_failures_total) >= 1 )) \
    || why "redirector_exempt_map_write_failures_total:" "$(grep exempt <<<"$out")" || return 1
  # the fitted pod leaves: the other one gets its slot
  if [[ $direct == a ]]; then kube_pod_a '{}'; else kube_pod_s '{}'; fi
  expect_flip "$proxied" direct map-freed || return 1
  expect_flip "$direct" proxy map-freed-other || return 1
  out=$(scrape /metrics)
  [[ $(metric "$out" redirector_exempt_pods_unapplied) == 0 ]] \
    || why "redirector_exempt_pods_unapplied after the slot freed:" "$(grep exempt <<<"$out")" || return 1
  kube_pod_a '{}' && kube_pod_s '{}'
}

# --- a full original-destination map fails closed. The map of original
#     destinations is shrunk to 2 entries and the daemon stopped (SIGSTOP)
#     while 12 connects from pod-a complete in the listen backlog; entries
#     are never evicted, so the later ones find the map full and save
#     nothing. After SIGCONT every connection either
#     went through the proxy or failed; the failures are all counted
#     (no_original_destination, or the kernel's refused_map_error), and
#     none reached the origin directly.
t_sec_dst_map_evicted() {
  local n=12 i o before after pids=() rc ok=0 failed=0 k='redirector_connection_outcomes_total{outcome="no_original_destination"}'
  local kbefore kafter seen
  export REDIRECTOR_DEBUG_MAP_MAX=DST_BY_CLIENT=2
  rc=0; sec_fresh_daemon "$PROXY_CONFIG" || rc=$?
  unset REDIRECTOR_DEBUG_MAP_MAX
  ((rc == 0)) || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  o=$(origin_count)
  before=$(scrape /metrics) || return 1
  kbefore=$(status_counter refused_map_error) || why "status has no refused_map_error" || return 1
  kill -STOP "$DAEMON_PID"
  for i in $(seq 1 "$n"); do
    pod_curl pod-a --max-time 8 "http://$INET_IP4/evict-$i" >"$WORK/evict-$i.out" 2>&1 &
    pids+=($!)
  done
  sleep 1.5
  kill -CONT "$DAEMON_PID"
  for i in $(seq 1 "$n"); do
    if wait "${pids[$((i - 1))]}"; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
  done
  info "  $n connects while stopped: $ok through, $failed failed"
  ((failed > 0)) || why "no connection lost its entry: the map did not overflow (test is void)" || return 1
  seen=$(origin_since "$o" | grep -E 'path=/evict-[0-9]+$')
  expect_empty "$(grep -v "client=$INET_IP4 " <<<"$seen")" "origin requests not from the proxy" || return 1
  (( $(grep -c . <<<"$seen") == ok )) || why "$ok curls succeeded but the origin saw $(grep -c . <<<"$seen") requests:" "$seen" || return 1
  wait_for 3 "the outcomes counted" eval "(( \$(metric \"\$(scrape /metrics)\" '$k') - $(metric "$before" "$k") + \$(status_counter refused_map_error) - $kbefore >= $failed ))" || true
  after=$(scrape /metrics)
  kafter=$(status_counter refused_map_error)
  (( $(metric "$after" "$k") - $(metric "$before" "$k") + kafter - kbefore == failed )) \
    || why "failures counted: no_original_destination +$(( $(metric "$after" "$k") - $(metric "$before" "$k") )), refused_map_error +$((kafter - kbefore)); expected $failed in all" || return 1
  use_daemon "$PROXY_CONFIG" || why "the normal daemon did not start again" || return 1
}

# --- allowPodOptOut: by default a pod's annotation exempts it (AKS); a
#     reload of the config with "allowPodOptOut": false sends it through
#     the proxy again, live, while a namespace label still exempts; true
#     again restores the annotation's effect.
t_sec_pod_opt_out() {
  kube_up || return 1
  local cfg=$WORK/optout-config.json
  cp "$PROXY_CONFIG" "$cfg"
  use_daemon "$cfg" --kube --node-name "$KUBE_NODE" || why "daemon with $cfg did not start" || return 1
  wait_for 10 "the first reconcile" grep -q "exempt pods:" "$DAEMON_LOG" || return 1
  kube_pod_a '{"kubernetes.azure.com/no-http-proxy-vars":"true"}' || return 1
  kube_pod_s '{"egress-redirector/exempt":"true"}' || return 1
  kube_ns ops '{"egress-redirector/exempt":"true"}' || return 1
  expect_flip a direct optout-default-aks || return 1
  expect_flip s direct optout-default-ns || return 1
  # allowPodOptOut: false, by replacing the file as a ConfigMap update does
  sed 's/^{/{"allowPodOptOut": false, /' "$PROXY_CONFIG" >"$cfg.tmp"
  mv -f "$cfg.tmp" "$cfg"
  expect_flip a proxy optout-disabled || return 1
  grep -q "pod annotations ignored" "$DAEMON_LOG" || why "no log of the change" || return 1
  expect_route s direct optout-disabled-ns-label || return 1
  # our own annotation does not exempt either
  kube_pod_a '{"egress-redirector/exempt":"true"}' || return 1
  sleep 1.5
  expect_route a proxy optout-disabled-own-annotation || return 1
  # the namespace label alone still works and is followed live
  kube_ns ops '{}' || return 1
  expect_flip s proxy optout-disabled-ns-unlabelled || return 1
  kube_ns ops '{"egress-redirector/exempt":"true"}' || return 1
  expect_flip s direct optout-disabled-ns-relabelled || return 1
  # back to allowed
  sed 's/^{/{"allowPodOptOut": true, /' "$PROXY_CONFIG" >"$cfg.tmp"
  mv -f "$cfg.tmp" "$cfg"
  expect_flip a direct optout-enabled-again || return 1
  expect_count "$(grep -E 'config reload(ed| failed)' "$DAEMON_LOG")" "config reloaded" 2 "two reloads, none refused" || return 1
  kube_pod_a '{}' && kube_pod_s '{}' && kube_ns ops '{}'
}


# --- the daemon's socket mark is no key to the outside: a pod process that
#     sets SO_MARK to the daemon's value (CAP_NET_RAW suffices since Linux
#     5.17, and container runtimes grant it by default: the process here has
#     only that capability) is redirected all the same, because the hooks
#     honour the mark only in the daemon's own cgroup; the attempt is
#     counted (foreign_mark). The daemon's own marked sockets still pass
#     (no_loop, kube_api_not_proxied).
t_sec_mark_spoof() {
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  local out before after o mark=229  # the daemon's default --socket-mark 0xe5
  before=$(status_counter foreign_mark) || why "status has no foreign_mark:" "$(redirector_status 2>&1)" || return 1
  o=$(origin_count)
  out=$(in_pod pod-a setpriv --bounding-set=-all,+net_raw --inh-caps=-all --no-new-privs -- "$PYTHON" -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[2]))
s.settimeout(5)
s.connect((sys.argv[1], 80))
s.sendall(b"GET /mark-spoof HTTP/1.0\r\nHost: %s\r\n\r\n" % sys.argv[1].encode())
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace").splitlines()[-1])
' "$INET_IP4" "$mark" 2>&1) || why "the marked connect from pod-a failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$INET_IP4 path=/mark-spoof" \
    "a pod's socket with the daemon's mark goes through the proxy" || return 1
  expect_empty "$(origin_since "$o" | grep -v "client=$INET_IP4 ")" "origin requests not from the proxy" || return 1
  after=$(status_counter foreign_mark)
  ((after == before + 1)) || why "foreign_mark went $before -> $after, expected +1" || return 1
}

# shellcheck disable=SC2034  # run.sh runs them
SECURITY_TESTS=(sec_open_proxy_foreign:t_sec_open_proxy_foreign sec_least_caps:t_sec_least_caps
  sec_not_cgroup2:t_sec_not_cgroup2 sec_redaction:t_sec_redaction
  sec_exempt_map_full:t_sec_exempt_map_full sec_dst_map_evicted:t_sec_dst_map_evicted
  sec_pod_opt_out:t_sec_pod_opt_out sec_mark_spoof:t_sec_mark_spoof)
