# shellcheck shell=bash
# shellcheck disable=SC2154,SC2034  # variables shared with run.sh and lib.sh
# The proxy knows who is calling (issue 18): with `identity` on, the
# daemon's CONNECT and absolute-form requests carry the pod's address
# (X-Forwarded-For, Forwarded: for=), and a squid that trusts the node's
# address for X-Forwarded-For applies its own per-pod `src` ACLs and logs
# each pod's address. A pod's own X-Forwarded-For never gets through.
#
# Pods of these tests: pod-i1 (10.249.40.2, allowed by squid's ACL) and
# pod-i2 (10.249.41.2, denied), made and removed here. Sourced by run.sh.

NS_POD_I1=rde-pod-i1
NS_POD_I2=rde-pod-i2
POD_I1_IP4=10.249.40.2
POD_I2_IP4=10.249.41.2
ID_SQUID_PORT=3141
ID_SQUID_DIR=$WORK/squid-identity
ID_SQUID_PID=""
ID_CONFIG=$WORK/identity-config.json

# identity_pod_up NAME N: netns rde-NAME at 10.249.N.2, linked to the node,
# in cgroup pods/NAME (so the hooks redirect it).
identity_pod_up() {
  local name=$1 n=$2 ns=rde-$1 link=rde-i$2-n
  identity_pod_down "$name" "$n"
  ALL_NS+=("$ns")
  make_netns "$ns" || return 1
  veth_pair "$NS_NODE" "$link" "$ns" "rde-i$n-p" || return 1
  addr "$NS_NODE" "$link" "10.249.$n.1/24" || return 1
  addr "$ns" "rde-i$n-p" "10.249.$n.2/24" || return 1
  ip -n "$ns" route add "$TEST_NET4" via "10.249.$n.1" || return 1
  mkdir -p "$CG_ROOT/pods/$name"
}
identity_pod_down() { # idempotent
  local name=$1 n=$2 pids=() i
  ip -n "$NS_NODE" link del "rde-i$n-n" 2>/dev/null
  if [[ -f $CG_ROOT/pods/$name/cgroup.procs ]]; then mapfile -t pids <"$CG_ROOT/pods/$name/cgroup.procs"; fi
  if ((${#pids[@]})); then kill -KILL "${pids[@]}" 2>/dev/null; fi
  ip netns del "rde-$name" 2>/dev/null
  for i in 1 2 3 4 5; do
    [[ -d $CG_ROOT/pods/$name ]] || break
    rmdir "$CG_ROOT/pods/$name" 2>/dev/null || sleep 0.2
  done
  return 0
}

# A squid in rde-inet that believes the node's X-Forwarded-For, and lets
# pod-i1 through by its own address, nobody else.
identity_squid_up() {
  mkdir -p "$ID_SQUID_DIR"
  cat >"$ID_SQUID_DIR/squid.conf" <<CONF
http_port $INET_IP4:$ID_SQUID_PORT
acl node src $NODE_IP4
follow_x_forwarded_for allow node
follow_x_forwarded_for deny all
acl_uses_indirect_client on
log_uses_indirect_client on
acl pod_allowed src $POD_I1_IP4
http_access allow pod_allowed
http_access deny all
cache deny all
cache_mem 8 MB
pinger_enable off
dns_nameservers 127.0.0.1
hosts_file /dev/null
pid_filename $ID_SQUID_DIR/squid.pid
cache_log $ID_SQUID_DIR/cache.log
access_log stdio:$ID_SQUID_DIR/access.log
coredump_dir $ID_SQUID_DIR
visible_hostname rde-identity
shutdown_lifetime 1 seconds
CONF
  : >"$ID_SQUID_DIR/access.log"
  chown -R proxy:proxy "$ID_SQUID_DIR"
  bg squid-identity nsenter --net="/run/netns/$NS_INET" -- "$(command -v squid || echo /usr/sbin/squid)" \
    -N -f "$ID_SQUID_DIR/squid.conf"
  ID_SQUID_PID=${BG_PIDS[-1]}
  wait_for 30 "squid listening on $INET_IP4:$ID_SQUID_PORT" port_listening "$NS_INET" "$ID_SQUID_PORT" \
    || why "squid did not start:" "$(tail -n 20 "$WORK/squid-identity.out" "$ID_SQUID_DIR/cache.log" 2>&1)"
}
identity_squid_down() {
  [[ -n $ID_SQUID_PID ]] && kill_pids "$ID_SQUID_PID"
  wait "$ID_SQUID_PID" 2>/dev/null
  ID_SQUID_PID=""
}

# identity_write_config IDENTITY-JSON: both classes through the squid.
identity_write_config() {
  local url="http://$INET_IP4:$ID_SQUID_PORT/"
  printf '{"httpProxy":"%s","httpsProxy":"%s","noProxy":["localhost"],"identity":%s}\n' \
    "$url" "$url" "$1" >"$ID_CONFIG"
}

# identity_fetch POD KIND: what squid made of one request from POD.
#   http    plain HTTP (absolute form); any pod but pod-i1 forges
#           X-Forwarded-For and Forwarded naming pod-i1
#   https   TLS (CONNECT 10.249.0.2:443)
# Prints the HTTP status curl saw, or the failure.
identity_fetch() {
  local pod=$1 kind=$2
  case $kind in
    http)
      local forge=()
      [[ $pod == pod-i1 ]] || forge=(-H "X-Forwarded-For: $POD_I1_IP4" -H "Forwarded: for=$POD_I1_IP4")
      pod_curl "$pod" -o /dev/null -w '%{http_code}' "${forge[@]}" \
        "http://$INET_IP4/identity-$pod" 2>&1 ;;
    https) pod_curl "$pod" -k -o /dev/null -w '%{http_code}' "https://$INET_IP4/identity-$pod" 2>&1 ;;
  esac
}

# --- squid allows pod-i1 and denies pod-i2 by its own src ACL, on both
#     paths, and its access log names each pod's address; pod-i2's forged
#     X-Forwarded-For naming pod-i1 changes nothing.
t_identity_squid() {
  local rc=0
  identity_pod_up pod-i1 40 && identity_pod_up pod-i2 41 && identity_squid_up \
    && identity_squid_body || rc=1
  identity_squid_down
  identity_pod_down pod-i1 40
  identity_pod_down pod-i2 41
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}
identity_squid_body() {
  local got log
  identity_write_config '{"forwardedFor": true, "forwarded": true}'
  use_daemon "$ID_CONFIG" || why "the daemon did not start with $ID_CONFIG" || return 1
  got=$(identity_fetch pod-i1 http)
  [[ $got == 200 ]] || why "pod-i1 plain HTTP: expected 200 from squid, got '$got'" || return 1
  got=$(identity_fetch pod-i1 https)
  [[ $got == 200 ]] || why "pod-i1 HTTPS: expected 200 through squid, got '$got'" || return 1
  got=$(identity_fetch pod-i2 http)
  [[ $got == 403 ]] || why "pod-i2 plain HTTP (forging pod-i1's address): expected 403 from squid, got '$got'" || return 1
  # A CONNECT squid denies is a dial failure: the client is reset.
  got=$(identity_fetch pod-i2 https)
  [[ $got != 200 ]] || why "pod-i2 HTTPS: squid let it through" || return 1
  log=$(cat "$ID_SQUID_DIR/access.log")
  expect_match "$log" " $POD_I1_IP4 TCP_[A-Z_]*/200 .* GET http://$INET_IP4/identity-pod-i1 " \
    "squid's access log: pod-i1's plain request under its own address" || return 1
  expect_match "$log" " $POD_I1_IP4 TCP_TUNNEL/200 .* CONNECT $INET_IP4:443 " \
    "squid's access log: pod-i1's tunnel under its own address" || return 1
  expect_match "$log" " $POD_I2_IP4 TCP_DENIED/403 .* GET http://$INET_IP4/identity-pod-i2 " \
    "squid's access log: pod-i2's plain request denied under its own address" || return 1
  expect_match "$log" " $POD_I2_IP4 TCP_DENIED/403 .* CONNECT $INET_IP4:443 " \
    "squid's access log: pod-i2's tunnel denied under its own address" || return 1
  expect_not_contains "$log" " $NODE_IP4 " "squid's access log names the node, not a pod" || return 1
  # The daemon's own log never shows the forged header's effect: pod-i2
  # was reset on CONNECT, counted as refused by the upstream.
  expect_contains "$(grep -a 'refused CONNECT' "$DAEMON_LOG")" "403" "the daemon's log of pod-i2's CONNECT" || return 1
}

IDENTITY_TESTS=(identity_squid:t_identity_squid)
