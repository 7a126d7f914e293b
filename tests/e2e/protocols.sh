# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh and lib.sh
# Protocols apps use (issue 13), end to end: a pod whose HTTPS_PROXY and
# HTTP_PROXY point at a proxy of its own, a WebSocket exchange over ws://,
# HTTP/2 with prior knowledge, and server-first ports.
#
# Peers in rde-inet (protocols.py), started by the first test that needs
# them and stopped with the node: a second proxy on $SECOND_PROXY_PORT that
# the redirector does not know (its own connections leave from
# $NOPROXY_IP4, so the origin names it as the client), a WebSocket server on
# $PROTO_WS_PORT and an h2c server on $H2C_PORT. mitmproxy carries the
# second proxy's and the h2c port as raw TCP (lib.sh), as a corporate proxy
# carries any tunnel. Sourced by run.sh after lib.sh and switches.sh; uses
# run.sh's why and expect_* helpers and switches.sh's switch_config and
# switch_reload. A test that changes the daemon restores the standard one
# at its end, pass or fail.

PROTO_WS_PORT=7012
PROTO_LOG=$WORK/protocols.log
PROTO_PEERS_UP=0

proto_log_count() { wc -l <"$PROTO_LOG"; }
proto_log_since() { tail -n "+$(( $1 + 1 ))" "$PROTO_LOG"; }

# A Python with the h2 package (mitmproxy's has it) for the h2c server.
proto_h2_python() {
  local py
  for py in "$(dirname "$MITMDUMP")/python3" "$PYTHON"; do
    if [[ -x $(command -v "$py") ]] && "$py" -c 'import h2' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  why "no Python with the h2 package (mitmproxy's, next to $MITMDUMP, has it)"
}

proto_peers_up() {
  ((PROTO_PEERS_UP)) && return 0
  local h2_python py=("$E2E_DIR/protocols.py") inet=(nsenter --net="/run/netns/$NS_INET" --)
  h2_python=$(proto_h2_python) || return 1
  : >"$PROTO_LOG"
  bg proto-second "${inet[@]}" "$PYTHON" "${py[@]}" second-proxy \
    --listen "$INET_IP4:$SECOND_PROXY_PORT" --source "$NOPROXY_IP4" --test-ip "$INET_IP4" --log "$PROTO_LOG"
  bg proto-ws "${inet[@]}" "$PYTHON" "${py[@]}" ws-server --listen "$INET_IP4:$PROTO_WS_PORT" --log "$PROTO_LOG"
  bg proto-h2c "${inet[@]}" "$h2_python" "${py[@]}" h2c-server --listen "$INET_IP4:$H2C_PORT" --log "$PROTO_LOG"
  local port
  for port in "$SECOND_PROXY_PORT" "$PROTO_WS_PORT" "$H2C_PORT"; do
    wait_for 10 "protocols.py listening on $INET_IP4:$port" port_listening "$NS_INET" "$port" \
      || why "protocol peers:" "$(tail -n 5 "$WORK"/proto-*.out)" || return 1
  done
  PROTO_PEERS_UP=1
}

# The daemon's per-connection line names what the first bytes were
# (`protocol=...`): how many lines of this run name LABEL.
proto_daemon_lines() { grep -c "connection done.*protocol=\"\?$1\"\?" "$DAEMON_LOG" || true; }

# --- A pod that speaks to a proxy of its own (HTTPS_PROXY, HTTP_PROXY as
#     AKS injects them, both cases): its CONNECT and its absolute-form GET
#     reach that proxy byte for byte, tunnelled to its address through the
#     upstream proxy (CONNECT 10.249.0.2:3130), never taken for plain HTTP
#     (a 400 before issue 13) or forwarded in absolute form by us.
t_proto_second_proxy() {
  local m o p d out new seen second="http://$INET_IP4:$SECOND_PROXY_PORT"
  proto_peers_up || return 1
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count); o=$(origin_count); p=$(proto_log_count); d=$(proto_daemon_lines proxy-request)
  out=$(in_pod pod-a env HTTPS_PROXY="$second" https_proxy="$second" \
    curl -q -sS --max-time 10 --cacert "$WORK/origin-cert.pem" https://origin.test/second-https 2>&1) \
    || why "curl https through HTTPS_PROXY failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$NOPROXY_IP4 path=/second-https" \
    "HTTPS body (client = the second proxy's address)" || return 1
  # curl reads only the lower-case http_proxy; AKS sets both.
  out=$(in_pod pod-a env HTTP_PROXY="$second" http_proxy="$second" \
    curl -q -sS --max-time 10 http://origin.test/second-http 2>&1) \
    || why "curl http through HTTP_PROXY failed:" "$out" || return 1
  expect_contains "$out" "origin ok client=$NOPROXY_IP4 path=/second-http" \
    "HTTP body (client = the second proxy's address)" || return 1

  # The second proxy got the client's own requests, from the upstream proxy.
  seen=$(proto_log_since "$p")
  expect_count "$seen" "^SECOND CONNECT origin\.test:443 HTTP/1\.1 client=$INET_IP4$" 1 \
    "second proxy: the pod's CONNECT, through mitmproxy" || return 1
  expect_count "$seen" "^SECOND GET http://origin\.test/second-http HTTP/1\.1 client=$INET_IP4$" 1 \
    "second proxy: the pod's absolute-form GET, through mitmproxy" || return 1
  # The upstream proxy saw tunnels to the second proxy's address, nothing else.
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:$SECOND_PROXY_PORT " 2 "flow log: CONNECT to the second proxy" || return 1
  expect_count "$new" "^TCP $INET_IP4:$SECOND_PROXY_PORT " 2 "flow log: raw streams" || return 1
  expect_not_contains "$new" "origin.test" "flow log (the upstream never saw the origin's name)" || return 1
  expect_count "$(origin_since "$o")" "^HTTP client=$NOPROXY_IP4 .*path=/second-http$" 1 "origin log" || return 1
  wait_for 3 "two proxy-request lines in the daemon log" \
    eval "(( \$(proto_daemon_lines proxy-request) >= $d + 2 ))" \
    || why "daemon log:" "$(grep 'connection done' "$DAEMON_LOG" | tail -n 3)" || return 1
}

# --- WebSocket over ws:// (plain HTTP): the upgrade goes through httpProxy
#     in absolute form, as an env-var client's would; after the 101 the
#     frames flow both ways untouched (an unasked server message, text and a
#     70,000-byte binary message echoed, a close answered).
t_proto_websocket() {
  local m p out new seen
  proto_peers_up || return 1
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count); p=$(proto_log_count)
  out=$(in_pod pod-a timeout 20 "$PYTHON" "$E2E_DIR/protocols.py" ws-client "$INET_IP4" "$PROTO_WS_PORT" \
    --host-header "ws.test:$PROTO_WS_PORT" --path /chat 2>&1) || why "WebSocket client:" "$out" || return 1
  info "  $out"
  [[ $(jget "$out" ok) == True ]] || why "WebSocket exchange:" "$out" || return 1
  seen=$(proto_log_since "$p")
  expect_count "$seen" "^WS client=$INET_IP4 open path=/chat$" 1 "ws server: opened by mitmproxy" || return 1
  expect_count "$seen" "^WS client=$INET_IP4 got=(13|70000|15) bytes$" 3 "ws server: the three messages" || return 1
  expect_count "$seen" "^WS client=$INET_IP4 closed$" 1 "ws server: closed" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^REQUEST GET http://ws\.test:$PROTO_WS_PORT/chat .*form=absolute" 1 \
    "flow log: the upgrade in absolute form" || return 1
  expect_count "$new" "^CONNECT " 0 "flow log: no CONNECT" || return 1
}

# --- HTTP/2 with prior knowledge (h2c): carried by address as opaque bytes
#     through a CONNECT tunnel; the origin gets the exact preface.
t_proto_h2c() {
  local m p d out new
  proto_peers_up || return 1
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count); p=$(proto_log_count); d=$(proto_daemon_lines h2-prior-knowledge)
  out=$(pod_curl pod-a --http2-prior-knowledge "http://$INET_IP4:$H2C_PORT/h2c-prior" 2>&1) \
    || why "curl --http2-prior-knowledge failed:" "$out" || return 1
  expect_contains "$out" "h2c ok client=$INET_IP4 path=/h2c-prior" "body (client = the proxy)" || return 1
  expect_count "$(proto_log_since "$p")" "^H2C client=$INET_IP4 preface=ok path=/h2c-prior$" 1 \
    "h2c server: the exact preface" || return 1
  new=$(flow_since "$m")
  expect_count "$new" "^CONNECT $INET_IP4:$H2C_PORT " 1 "flow log: CONNECT by address" || return 1
  expect_count "$new" "^REQUEST " 0 "flow log: no plain HTTP request" || return 1
  wait_for 3 "an h2-prior-knowledge line in the daemon log" \
    eval "(( \$(proto_daemon_lines h2-prior-knowledge) > $d ))" \
    || why "daemon log:" "$(grep 'connection done' "$DAEMON_LOG" | tail -n 3)" || return 1
}

# banner_ms: from pod-a, connect to the banner port, send nothing; prints
# the milliseconds from connect() to the banner line (netprobe.py banner),
# after checking the banner came through the proxy.
banner_ms() {
  local out ms
  out=$(probe pod-a banner "$INET_IP4" "$BANNER_PORT" 2>&1) || { why "banner: $out"; return 1; }
  [[ $out == *"line=220 origin banner client=$INET_IP4"* ]] || { why "banner not via the proxy: $out"; return 1; }
  ms=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' <<<"$out")
  [[ -n $ms ]] || { why "no elapsed_ms in: $out"; return 1; }
  echo "$ms"
}

# median_ms N: the median of N banner_ms runs (sorted list on stderr).
median_ms() {
  local i ms all=()
  for ((i = 0; i < $1; i++)); do
    ms=$(banner_ms) || return 1
    all+=("$ms")
  done
  mapfile -t all < <(printf '%s\n' "${all[@]}" | sort -n)
  info "    ${all[*]}"
  echo "${all[$(( $1 / 2 ))]}"
}

# --- serverFirstPorts: a listed port is routed by address at once, so a
#     banner comes long before the peek timeout (3 s here); taking the port
#     off the list by hot reload brings the wait back, putting it back
#     removes it again; `explain` says so. Then, informational, the connect
#     time with the default 0.5 s peek timeout, listed and not.
t_proto_server_first() {
  local rc=0
  proto_server_first_body || rc=1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}
proto_server_first_body() {
  local m ms out listed="{\"serverFirstPorts\": [$BANNER_PORT]}" fast slow
  switch_config "$listed" || return 1
  use_daemon "$SWITCH_CONFIG" --peek-timeout 3 || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  m=$(flow_count)
  ms=$(banner_ms) || return 1
  info "  listed, peek timeout 3 s: banner after $ms ms"
  within_ms "$ms" 1500 "banner on a server-first port" || return 1
  expect_count "$(flow_since "$m")" "^CONNECT $INET_IP4:$BANNER_PORT " 1 "flow log: CONNECT by address" || return 1
  out=$(explain --proxy-config "$SWITCH_CONFIG" "$INET_IP4:$BANNER_PORT") \
    || why "explain failed:" "$out" || return 1
  expect_contains "$out" "server-first: port $BANNER_PORT is in serverFirstPorts" "explain" || return 1

  switch_reload '{"serverFirstPorts": []}' || return 1
  ms=$(banner_ms) || return 1
  info "  not listed (hot reload): banner after $ms ms"
  ((ms >= 2500)) || why "banner after $ms ms: off the list, the daemon should wait the 3 s peek timeout" || return 1
  switch_reload "$listed" || return 1
  ms=$(banner_ms) || return 1
  info "  listed again (hot reload): banner after $ms ms"
  within_ms "$ms" 1500 "banner once the port is listed again" || return 1

  # The figures of docs/benchmarks.md: the default peek timeout, one run.
  use_daemon "$SWITCH_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  info "  connect to banner, default peek timeout (0.5 s), 10 connections each (ms):"
  fast=$(median_ms 10) || return 1
  switch_reload '{"serverFirstPorts": []}' || return 1
  slow=$(median_ms 10) || return 1
  info "  median: listed $fast ms, not listed $slow ms"
  printf 'server-first connect to banner (median of 10, ms): listed %s, not listed %s\n' \
    "$fast" "$slow" >"$WORK/server-first-timing.txt"
}

PROTOCOLS_TESTS=(proto_second_proxy:t_proto_second_proxy proto_websocket:t_proto_websocket
  proto_h2c:t_proto_h2c proto_server_first:t_proto_server_first)
