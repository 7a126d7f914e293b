# shellcheck shell=bash
# End-to-end tests of "the node's own traffic must not depend on the daemon"
# (tests node_*): the default exemptions (namespace kube-system, hostNetwork
# pods) and their hot-reloaded switches, and the kernel bypass sources the
# daemon keeps current by itself: pod CIDRs of every Node, the kubernetes
# Service and its endpoints (from the fake API server of kube.sh), the
# upstream proxy's own address (a pod with HTTPS_PROXY reaches it
# directly), serviceCidrs from the config file, the node's addresses; what
# `status` and `explain` say about each; and all of it with the daemon down.
#
# These tests run the daemon as deployed: every automatic bypass on, so the
# proxy must not share its address with the "internet" (the harness's
# mitmdump on $INET_IP4 does). They start a third mitmdump on an address of
# its own, $NT_PROXY_IP, with its own flow log. Addresses they add to
# rde-inet (all inside 10.249.0.0/16, behind the blackhole route):
#
#   10.249.0.3     the upstream proxy (mitmdump :8082)
#   10.249.10.2    "a pod on node nt-n2" (pod CIDR 10.249.10.0/24; 10.249.6 is
#                  bounds.sh's pod-v, 10.249.7 escapes.sh's)
#   10.249.8.1     the kubernetes Service's ClusterIP
#   10.249.8.10    the API server's endpoint; 10.249.8.20 a tenant's slice
#   10.249.9.2     in the serviceCidrs range 10.249.9.0/24
#
# The origin answers on every address of rde-inet and names the client it
# saw, so "direct" (the pod's own address) and "through the proxy" (a
# request line in the proxy's flow log) are told apart.
#
# Sourced by run.sh after kube.sh (tests t_node_*).

NT_PROXY_IP=10.249.0.3
NT_PROXY_PORT=8082
NT_PROXY=http://$NT_PROXY_IP:$NT_PROXY_PORT
NT_FLOW_LOG=$WORK/flow-nt.log
NT_CONFIG=$WORK/nt-config.json
NT_POD_CIDR=10.249.10.0/24
NT_POD_IP=10.249.10.2
NT_SVC_IP=10.249.8.1
NT_API_IP=10.249.8.10
NT_TENANT_IP=10.249.8.20
NT_SERVICE_CIDR=10.249.9.0/24
NT_SERVICE_IP=10.249.9.2
UID_KSYS=c0c0c0c0-1111-4222-8333-444444444444   # kube-system/knode
UID_HOST=d0d0d0d0-1111-4222-8333-444444444444   # shop/hostnet (hostNetwork)
NT_CG_KSYS=""
NT_CG_HOST=""
NT_MADE=0
NT_SEQ=0

# nt_config [EXTRA-KEYS-JSON]: the tests' config, written and renamed over
# the old one as a ConfigMap update does (a hot reload when it changed).
nt_config() {
  printf '{"httpProxy":"%s/","httpsProxy":"%s/","noProxy":["localhost"],%s"trustedCA":"%s"}\n' \
    "$NT_PROXY" "$NT_PROXY" "${1:+$1,}" "$CA_B64" >"$NT_CONFIG.tmp"
  mv -f "$NT_CONFIG.tmp" "$NT_CONFIG"
}

# nt_up: the addresses, the proxy and the API objects (once), and the
# daemon with its defaults: every automatic bypass, --kube.
nt_up() {
  # kube.sh's fake API server (its state persists across restarts) and
  # the daemon's kubeconfig naming it.
  if [[ -z $KUBE_API_PID ]] || ! kill -0 "$KUBE_API_PID" 2>/dev/null; then
    kube_api_start || return 1
  fi
  kube_config_file
  if ((!NT_MADE)); then
    local a
    for a in "$NT_PROXY_IP/24" "$NT_POD_IP/24" "$NT_SVC_IP/32" "$NT_API_IP/32" \
      "$NT_TENANT_IP/32" "$NT_SERVICE_IP/24"; do
      addr "$NS_INET" rde-up-i "$a" || return 1
    done
    for a in "$NT_POD_CIDR" 10.249.8.0/24 "$NT_SERVICE_CIDR"; do
      ip -n "$NS_NODE" route replace "$a" via "$INET_IP4" || return 1
    done
    start_mitm mitmdump-nt "$NT_PROXY_PORT" "$NT_FLOW_LOG" --listen-host "$NT_PROXY_IP"
    wait_for 30 "mitmdump listening on $NT_PROXY_IP:$NT_PROXY_PORT" \
      eval "[[ -n \$(ip netns exec $NS_INET ss -Hltn 'sport = :$NT_PROXY_PORT' | grep -F '$NT_PROXY_IP:') ]]" \
      || { tail -n 20 "$WORK/mitmdump-nt.out" >&2; return 1; }
    NT_CG_KSYS=$CG_ROOT/kubepods/burstable/pod$UID_KSYS
    NT_CG_HOST=$CG_ROOT/kubepods/besteffort/pod$UID_HOST
    NT_MADE=1
  fi
  # Each test's cluster, taken away again by nt_cleanup.
  mkdir -p "$NT_CG_KSYS" "$NT_CG_HOST" || return 1
  kube_ns kube-system && kube_ns shop || return 1
  nt_this_node "[\"10.249.1.0/24\",\"10.249.2.0/24\"]" \
    "[{\"type\":\"InternalIP\",\"address\":\"$NODE_IP4\"},{\"type\":\"Hostname\",\"address\":\"$KUBE_NODE\"}]" || return 1
  kube_pod kube-system knode "$UID_KSYS" Burstable '{}' || return 1
  kube_api "{\"op\":\"pod\",\"namespace\":\"shop\",\"name\":\"hostnet\",\"uid\":\"$UID_HOST\",\"node\":\"$KUBE_NODE\",\"qos\":\"BestEffort\",\"annotations\":{},\"hostNetwork\":true}" || return 1
  [[ -e $NT_CONFIG ]] || nt_config
  DAEMON_BASE_FLAGS=()
  use_daemon "$NT_CONFIG" --kube --node-name "$KUBE_NODE"; local rc=$?
  DAEMON_BASE_FLAGS=(--no-bypass-proxy-addresses)
  ((rc == 0)) || why "the daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  wait_for 10 "the daemon's first reconcile (exempt pods: N)" grep -q "exempt pods:" "$DAEMON_LOG"
}

# nt_this_node PODCIDRS-JSON ADDRESSES-JSON: this node's Node object.
nt_this_node() {
  kube_api "{\"op\":\"node\",\"name\":\"$KUBE_NODE\",\"podCIDRs\":$1,\"addresses\":$2}"
}

# nt_cleanup: the fake cluster as kube.sh's and security.sh's tests expect
# it (no exempt pods of ours, no pod CIDRs, no API server addresses).
nt_cleanup() {
  local label='{"kubernetes.io/service-name":"kubernetes"}' o
  for o in '{"op":"delete-pod","namespace":"kube-system","name":"knode"}' \
    '{"op":"delete-pod","namespace":"shop","name":"hostnet"}' \
    '{"op":"delete-node","name":"nt-n2"}' \
    '{"op":"delete-endpointslice","namespace":"shop","name":"kubernetes"}' \
    '{"op":"service","namespace":"default","name":"kubernetes","clusterIPs":[]}' \
    "{\"op\":\"endpointslice\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[]}"; do
    kube_api "$o" 2>/dev/null   # absent objects: 400, fine
  done
  nt_this_node '[]' '[]'
}

# nt_run BODY: one test, then the fake cluster cleaned up and the standard
# daemon again, for the tests after.
nt_run() {
  local rc=0
  "$1" || rc=1
  DAEMON_BASE_FLAGS=(--no-bypass-proxy-addresses)
  if [[ -n $KUBE_API_PID ]] && kill -0 "$KUBE_API_PID" 2>/dev/null; then nt_cleanup; fi
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}

nt_flow_count() { wc -l <"$NT_FLOW_LOG"; }
nt_flow_since() { tail -n "+$(( $1 + 1 ))" "$NT_FLOW_LOG"; }

# nt_route WHO URL-BASE TAG: "direct" or "proxy" for one fresh plain-HTTP
# connection (a unique path) from WHO: pod-a (a redirected pod), knode (the
# kube-system pod, in pod-a's netns) or hostnet (the hostNetwork pod, in
# the node's netns). Direct: the origin saw WHO's own address and the proxy
# saw nothing; proxy: the proxy's flow log has the request, and the origin
# saw another address than WHO's.
nt_route() {
  local who=$1 base=$2 path self m out cg ns
  NT_SEQ=$((NT_SEQ + 1))
  path=/nt-$3-$NT_SEQ
  case $who in
    pod-a) cg=$CG_ROOT/pods/pod-a ns=$NS_POD_A self=$POD_A_IP4 ;;
    knode) cg=$NT_CG_KSYS ns=$NS_POD_A self=$POD_A_IP4 ;;
    hostnet) cg=$NT_CG_HOST ns=$NS_NODE self=$NODE_IP4 ;;
  esac
  m=$(nt_flow_count)
  out=$(in_cgroup_netns "$cg" "$ns" curl -q -sS --max-time 5 "$base$path" 2>&1) \
    || { echo "error: $out"; return 0; }
  if [[ $out == *"client=$self path=$path"* ]] && ! nt_flow_since "$m" | grep -qF "$path"; then
    echo direct
  elif [[ $out == *"path=$path"* && $out != *"client=$self "* ]] \
    && nt_flow_since "$m" | grep -q "^REQUEST GET http://[^ ]*$path client="; then
    echo proxy
  else
    echo "unclear: $out"
  fi
}

# nt_expect WHO URL-BASE WANT TAG [MS]: WHO's connections go WANT within MS
# (default 2000; polling with fresh connections), and once more after.
nt_expect() {
  local who=$1 base=$2 want=$3 tag=$4 bound=${5:-2000} start got elapsed
  start=$(now_ms)
  while :; do
    got=$(nt_route "$who" "$base" "$tag")
    elapsed=$(( $(now_ms) - start ))
    [[ $got == "$want" ]] && break
    if ((elapsed > bound)); then
      why "$who to $base ($tag): still '$got' after ${elapsed} ms, expected $want" \
        "$(grep -E 'exempt|bypass|watch|reload' "$DAEMON_LOG" | tail -n 8)"
      return 1
    fi
    sleep 0.1
  done
  info "  $who to $base: $want after ${elapsed} ms ($tag)"
  got=$(nt_route "$who" "$base" "$tag-again")
  [[ $got == "$want" ]] || why "$who to $base ($tag-again): $got, expected $want"
}

nt_status() { redirector_status; }
# nt_explain TARGET [FLAGS...]: explain on the node (its netns: the node's
# addresses); NT_HANDOVER_DIR=DIR reads the published file from elsewhere.
nt_explain() {
  local target=$1; shift
  in_netns "$NS_NODE" timeout 20 "$REDIRECTOR_BIN" explain --proxy-config "$NT_CONFIG" \
    --resolv-conf "$RESOLV_CONF" --handover-dir "${NT_HANDOVER_DIR:-$HANDOVER_DIR}" "$@" "$target"
}

# --- kube-system pods and hostNetwork pods are direct by default; each
#     switch, hot reloaded, sends them through the proxy (no restart), and
#     back. A pod's "false" annotation still re-includes it.
t_node_exempt_defaults() { nt_run node_exempt_defaults_body; }
node_exempt_defaults_body() {
  local pid l0 inet=http://$INET_IP4
  nt_config
  nt_up || return 1
  pid=$DAEMON_PID
  l0=$(wc -l <"$DAEMON_LOG")
  nt_expect knode "$inet" direct ksys-default || return 1
  nt_expect hostnet "$inet" direct hostnet-default || return 1
  nt_expect pod-a "$inet" proxy ordinary-pod || return 1
  expect_match "$(cat "$DAEMON_LOG")" 'pod exempt.*pod="?kube-system/knode.*reason=exemptNamespaces' \
    "the daemon names why the kube-system pod is exempt" || return 1
  expect_match "$(cat "$DAEMON_LOG")" 'pod exempt.*pod="?shop/hostnet.*reason=hostNetwork' \
    "the daemon names why the hostNetwork pod is exempt" || return 1

  nt_config '"exemptNamespaces":[]'
  nt_expect knode "$inet" proxy ksys-switched-off || return 1
  nt_expect hostnet "$inet" direct hostnet-still-on || return 1
  nt_config '"exemptNamespaces":[],"exemptHostNetworkPods":false'
  nt_expect hostnet "$inet" proxy hostnet-switched-off || return 1
  nt_expect knode "$inet" proxy ksys-still-off || return 1

  # Back to the defaults: direct again; then the pod's own "false" wins.
  nt_config
  nt_expect knode "$inet" direct ksys-back || return 1
  nt_expect hostnet "$inet" direct hostnet-back || return 1
  kube_pod kube-system knode "$UID_KSYS" Burstable '{"egress-redirector/exempt":"false"}' || return 1
  nt_expect knode "$inet" proxy ksys-reincluded || return 1
  kube_pod kube-system knode "$UID_KSYS" Burstable '{}' || return 1
  nt_expect knode "$inet" direct ksys-reincluded-lifted || return 1

  [[ $DAEMON_PID == "$pid" ]] && kill -0 "$pid" 2>/dev/null \
    || why "the daemon was restarted (pid $pid -> $DAEMON_PID): hot reload expected" || return 1
  expect_count "$(tail -n "+$((l0 + 1))" "$DAEMON_LOG")" "config reloaded" 3 "three reloads, no restart" || return 1
}

# --- a Node with pod CIDR 10.249.10.0/24 makes 10.249.10.2 direct (skipped in
#     the kernel); deleting the Node sends it through the proxy again.
t_node_pod_cidrs() { nt_run node_pod_cidrs_body; }
node_pod_cidrs_body() {
  local before after base=http://$NT_POD_IP
  nt_up || return 1
  kube_api '{"op":"delete-node","name":"nt-n2"}' 2>/dev/null
  nt_expect pod-a "$base" proxy no-node || return 1
  before=$(status_counter skipped_bypass)
  kube_api "{\"op\":\"node\",\"name\":\"nt-n2\",\"podCIDRs\":[\"$NT_POD_CIDR\"]}" || return 1
  nt_expect pod-a "$base" direct node-added || return 1
  after=$(status_counter skipped_bypass)
  ((after > before)) || why "skipped_bypass did not grow ($before -> $after): not the kernel's bypass" || return 1
  kube_api '{"op":"delete-node","name":"nt-n2"}' || return 1
  nt_expect pod-a "$base" proxy node-deleted || return 1
}

# --- the kubernetes Service's ClusterIP and the API server's endpoints are
#     direct; an EndpointSlice a tenant makes (named kubernetes, labelled
#     for it, in its own namespace) opens nothing; an endpoint that moves
#     takes its bypass along.
t_node_kubernetes_service() { nt_run node_kubernetes_service_body; }
node_kubernetes_service_body() {
  local label='{"kubernetes.io/service-name":"kubernetes"}'
  nt_up || return 1
  kube_api '{"op":"service","namespace":"default","name":"kubernetes","clusterIPs":[]}' || return 1
  kube_api "{\"op\":\"endpointslice\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[]}" || return 1
  nt_expect pod-a "http://$NT_SVC_IP" proxy svc-none || return 1
  nt_expect pod-a "http://$NT_API_IP" proxy api-none || return 1
  kube_api "{\"op\":\"service\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"clusterIPs\":[\"$NT_SVC_IP\"]}" || return 1
  kube_api "{\"op\":\"endpointslice\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[\"$NT_API_IP\"]}" || return 1
  kube_api "{\"op\":\"endpointslice\",\"namespace\":\"shop\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[\"$NT_TENANT_IP\"]}" || return 1
  nt_expect pod-a "http://$NT_SVC_IP" direct svc-clusterip || return 1
  nt_expect pod-a "http://$NT_API_IP" direct api-endpoint || return 1
  nt_expect pod-a "http://$NT_TENANT_IP" proxy tenant-slice || return 1
  # The API server moves: the new address direct, the old one proxied.
  kube_api "{\"op\":\"endpointslice\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[\"$NT_TENANT_IP\"]}" || return 1
  nt_expect pod-a "http://$NT_TENANT_IP" direct api-moved || return 1
  nt_expect pod-a "http://$NT_API_IP" proxy api-old || return 1
  kube_api "{\"op\":\"endpointslice\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[\"$NT_API_IP\"]}" || return 1
  kube_api '{"op":"delete-endpointslice","namespace":"shop","name":"kubernetes"}' || return 1
}

# nt_env_curl TAG: pod-a with the proxy in its environment (as AKS injects
# it) fetches https and http origins; prints both bodies.
nt_env_curl() {
  in_pod pod-a env HTTPS_PROXY="$NT_PROXY" https_proxy="$NT_PROXY" \
    HTTP_PROXY="$NT_PROXY" http_proxy="$NT_PROXY" \
    curl -q -sS --max-time 10 --cacert "$CA_CERT" "https://origin.test/nt-env-$1-tls" \
    "http://origin.test/nt-env-$1-plain"
}

# --- a pod that speaks to the upstream proxy itself (HTTPS_PROXY and
#     HTTP_PROXY set) reaches it directly: the proxy saw the CONNECT and the
#     absolute-form request from the pod's own address, not the node's.
t_node_proxy_env() { nt_run node_proxy_env_body; }
node_proxy_env_body() {
  local m out flows before after
  nt_up || return 1
  before=$(status_counter skipped_bypass)
  m=$(nt_flow_count)
  out=$(nt_env_curl up 2>&1) || why "curl through HTTPS_PROXY/HTTP_PROXY failed:" "$out" || return 1
  expect_contains "$out" "path=/nt-env-up-tls" "https body" || return 1
  expect_contains "$out" "path=/nt-env-up-plain" "http body" || return 1
  flows=$(nt_flow_since "$m")
  expect_match "$flows" "^CONNECT origin\\.test:443 client=$POD_A_IP4 " "the proxy saw CONNECT from the pod itself" || return 1
  expect_match "$flows" "^REQUEST GET http://origin\\.test/nt-env-up-plain client=$POD_A_IP4 .*form=absolute" \
    "the proxy saw the plain request from the pod itself" || return 1
  expect_not_contains "$flows" "client=$NODE_IP4" "nothing through the daemon" || return 1
  after=$(status_counter skipped_bypass)
  ((after >= before + 2)) || why "skipped_bypass grew by $((after - before)), expected >= 2" || return 1
  # A pod without the variables still goes through the daemon to the proxy.
  nt_expect pod-a "http://$INET_IP4" proxy no-env || return 1
}

# --- serviceCidrs in the config file: bypassed in the kernel after a hot
#     reload, and no longer once removed.
t_node_service_cidrs() { nt_run node_service_cidrs_body; }
node_service_cidrs_body() {
  local pid base=http://$NT_SERVICE_IP
  nt_config
  nt_up || return 1
  pid=$DAEMON_PID
  nt_expect pod-a "$base" proxy before-key || return 1
  nt_config "\"serviceCidrs\":[\"$NT_SERVICE_CIDR\"]"
  nt_expect pod-a "$base" direct key-added || return 1
  nt_config
  nt_expect pod-a "$base" proxy key-removed || return 1
  [[ $DAEMON_PID == "$pid" ]] || why "the daemon was restarted: hot reload expected" || return 1
}

# --- status shows each bypassed prefix with its source; explain names the
#     source that bypasses a target, from its own view (node and proxy
#     addresses) or from the daemon's published file (the API's), and says
#     what it cannot know without that file.
t_node_status_explain() { nt_run node_status_explain_body; }
node_status_explain_body() {
  local out label='{"kubernetes.io/service-name":"kubernetes"}' want
  nt_config "\"serviceCidrs\":[\"$NT_SERVICE_CIDR\"]"
  nt_up || return 1
  kube_api "{\"op\":\"node\",\"name\":\"nt-n2\",\"podCIDRs\":[\"$NT_POD_CIDR\"]}" || return 1
  kube_api "{\"op\":\"service\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"clusterIPs\":[\"$NT_SVC_IP\"]}" || return 1
  kube_api "{\"op\":\"endpointslice\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[\"$NT_API_IP\"]}" || return 1
  wait_for 5 "status shows the pod CIDR" eval 'nt_status | grep -q "^bypass $NT_POD_CIDR: "' || true
  out=$(nt_status 2>&1) || why "status failed:" "$out" || return 1
  for want in \
    "^bypass_sources: $HANDOVER_DIR/bypass.json \\(pid $DAEMON_PID, " \
    "^bypass 127\\.0\\.0\\.0/8: built-in \\(loopback\\)$" \
    "^bypass $NT_SERVICE_CIDR: serviceCidrs$" \
    "^bypass $NODE_IP4/32: node addresses \\(interface rde-up-n\\)$" \
    "^bypass $NODE_IP4/32: node addresses \\(Node.status.addresses\\) \\(InternalIP\\)$" \
    "^bypass 10\\.249\\.1\\.0/24: pod CIDRs \\(Node.spec.podCIDRs\\) \\(node $KUBE_NODE\\)$" \
    "^bypass $NT_POD_CIDR: pod CIDRs \\(Node.spec.podCIDRs\\) \\(node nt-n2\\)$" \
    "^bypass $NT_SVC_IP/32: kubernetes Service \\(default/kubernetes ClusterIP\\)$" \
    "^bypass $NT_API_IP/32: API server endpoints \\(EndpointSlice default/kubernetes\\)$" \
    "^bypass $NT_PROXY_IP/32: upstream proxy $NT_PROXY_IP \\(IP literal\\)$"; do
    expect_match "$out" "$want" "status" || return 1
  done
  expect_not_contains "$out" "in no published source" "status: every kernel prefix has a source" || return 1
  expect_not_contains "$out" "not in the kernel" "status: every published prefix is in the kernel" || return 1

  out=$(nt_explain "$NT_POD_IP:80" 2>&1) || why "explain failed:" "$out" || return 1
  expect_contains "$out" "decision: kernel-bypass" "explain $NT_POD_IP" || return 1
  expect_contains "$out" "rule: pod CIDRs (Node.spec.podCIDRs): $NT_POD_CIDR (node nt-n2)" "explain $NT_POD_IP" || return 1
  expect_match "$out" "bypass source: pod CIDRs \\(Node.spec.podCIDRs\\), published by the daemon \\(pid $DAEMON_PID\\)" "explain $NT_POD_IP" || return 1
  out=$(nt_explain "$NT_PROXY_IP:$NT_PROXY_PORT" 2>&1) || why "explain failed:" "$out" || return 1
  expect_contains "$out" "rule: upstream proxy $NT_PROXY_IP: $NT_PROXY_IP/32 (IP literal)" "explain the proxy" || return 1
  expect_contains "$out" "bypass source: upstream proxy $NT_PROXY_IP, found by explain" "explain the proxy" || return 1
  out=$(nt_explain "$NODE_IP4:10250" 2>&1) || why "explain failed:" "$out" || return 1
  expect_contains "$out" "rule: node addresses: $NODE_IP4/32 (interface rde-up-n)" "explain the node" || return 1
  out=$(nt_explain "http://$NT_SERVICE_IP/" 2>&1) || why "explain failed:" "$out" || return 1
  expect_contains "$out" "rule: serviceCidrs $NT_SERVICE_CIDR" "explain serviceCidrs" || return 1
  out=$(nt_explain "$NT_SVC_IP:443" --json 2>&1) || why "explain --json failed:" "$out" || return 1
  [[ $(jget "$out" bypass_source.source) == "kubernetes Service" && $(jget "$out" decision) == kernel-bypass ]] \
    || why "explain --json for the ClusterIP:" "$out" || return 1
  # Without the daemon's file: what comes from the API is not known, and said so.
  out=$(NT_HANDOVER_DIR=$WORK/nowhere nt_explain "$NT_POD_IP:80" 2>&1) || why "explain failed:" "$out" || return 1
  expect_contains "$out" "decision: proxy" "explain without the file" || return 1
  expect_contains "$out" "note: the bypass sources from the Kubernetes API (pod CIDRs" "explain without the file" || return 1
  kube_api '{"op":"delete-node","name":"nt-n2"}' || return 1
}

# --- with the daemon down (SIGTERM: the hooks stay, redirected connects
#     are refused), the node's own traffic keeps working: the kube-system
#     and hostNetwork pods, another node's pods, the API server, a pod
#     using the proxy itself. A new instance started while the API server
#     is down keeps the earlier instance's bypass until the API is back.
t_node_daemon_down() { nt_run node_daemon_down_body; }
node_daemon_down_body() {
  local out label='{"kubernetes.io/service-name":"kubernetes"}' rc
  nt_config
  nt_up || return 1
  kube_api "{\"op\":\"node\",\"name\":\"nt-n2\",\"podCIDRs\":[\"$NT_POD_CIDR\"]}" || return 1
  kube_api "{\"op\":\"endpointslice\",\"namespace\":\"default\",\"name\":\"kubernetes\",\"labels\":$label,\"addresses\":[\"$NT_API_IP\"]}" || return 1
  nt_expect pod-a "http://$NT_POD_IP" direct up-pod-cidr || return 1
  nt_expect pod-a "http://$NT_API_IP" direct up-api || return 1
  nt_expect knode "http://$INET_IP4" direct up-ksys || return 1

  stop_daemon
  out=$(pod_curl pod-a --max-time 3 "http://$INET_IP4/nt-down-ordinary" 2>&1); rc=$?
  ((rc == 7)) || why "an ordinary pod with the daemon down: curl exit $rc, expected 7 (refused):" "$out" || return 1
  [[ $(nt_route knode "http://$INET_IP4" down-ksys) == direct ]] || why "kube-system pod with the daemon down: not direct" || return 1
  [[ $(nt_route hostnet "http://$INET_IP4" down-hostnet) == direct ]] || why "hostNetwork pod with the daemon down: not direct" || return 1
  [[ $(nt_route pod-a "http://$NT_POD_IP" down-pod-cidr) == direct ]] || why "another node's pod with the daemon down: not direct" || return 1
  [[ $(nt_route pod-a "http://$NT_API_IP" down-api) == direct ]] || why "the API server with the daemon down: not direct" || return 1
  out=$(nt_env_curl down 2>&1) || why "a pod using the proxy itself with the daemon down:" "$out" || return 1
  expect_contains "$out" "path=/nt-env-down-plain" "env-var pod, daemon down" || return 1

  # A new instance while the API server is down: the earlier one's bypass stays.
  kube_api_stop
  DAEMON_LOG_GEN=$((DAEMON_LOG_GEN + 1))
  cp "$DAEMON_LOG" "$DAEMON_LOG.$DAEMON_LOG_GEN"
  DAEMON_BASE_FLAGS=()
  DAEMON_EXTRA=(--kube --node-name "$KUBE_NODE")
  start_daemon "$NT_CONFIG"; rc=$?
  DAEMON_EXTRA=()
  DAEMON_BASE_FLAGS=(--no-bypass-proxy-addresses)
  ((rc == 0)) || { kube_api_start; why "the daemon did not restart with the API server down"; return 1; }
  nt_expect pod-a "http://$NT_POD_IP" direct restarted-api-down || { kube_api_start; return 1; }
  out=$(nt_status 2>&1)
  expect_match "$out" "^bypass 10\\.249\\.[0-9.]+/[0-9]+: earlier instance \\(until the API is synced\\)$" \
    "status while the API is down" || { kube_api_start; return 1; }
  kube_api_start || return 1
  wait_for 20 "the earlier instance's bypass dropped once the API is synced" \
    eval '! nt_status | grep -q "earlier instance"' || why "$(nt_status | grep bypass)" || return 1
  nt_expect pod-a "http://$NT_POD_IP" direct restarted-api-back || return 1
  kube_api '{"op":"delete-node","name":"nt-n2"}' || return 1
  nt_expect pod-a "http://$NT_POD_IP" proxy restarted-node-deleted 5000 || return 1
}

NODETRAFFIC_TESTS=(node_exempt_defaults:t_node_exempt_defaults node_pod_cidrs:t_node_pod_cidrs
  node_kubernetes_service:t_node_kubernetes_service node_proxy_env:t_node_proxy_env
  node_service_cidrs:t_node_service_cidrs node_status_explain:t_node_status_explain
  node_daemon_down:t_node_daemon_down)
