# shellcheck shell=bash
# End-to-end tests of `redirector run --kube`: live exemption of pods and
# namespaces driven through a fake Kubernetes API server (fake_apiserver.py,
# in the node's network namespace on the node IP, so the daemon's own API
# connections would be redirected but for its SO_MARK), with pod cgroups laid out
# as kubelet lays them out under both cgroup drivers:
#
#   $CG_ROOT/kubepods/burstable/pod<UID_A>                        pod shop/a (cgroupfs),
#                                                                  netns rde-pod-a
#   $CG_ROOT/kubepods.slice/kubepods-besteffort.slice/
#       kubepods-besteffort-pod<UID_S with _>.slice               pod ops/s (systemd),
#                                                                  netns rde-pod-b
#
# The attach root stays $CG_ROOT (the daemon resolves pods under
# <root>/kubepods and <root>/kubepods.slice as well as under <root>).
#
# Sourced by run.sh (tests t_kube_*), or run standalone as root:
#   sudo REDIRECTOR_BIN=... MITMDUMP=... bash tests/e2e/kube.sh
# which brings the node up, runs these tests only, and tears it down.

KUBE_PORT=16443
KUBE_NODE=rde-node
KUBE_STATE=$WORK/fake-apiserver.json
KUBE_LOG=$WORK/fake-apiserver.log
KUBECONFIG_FILE=$WORK/kubeconfig
KUBE_API_PID=""
UID_A=0a0a0a0a-1111-4222-8333-444444444444
UID_S=5e5e5e5e-1111-4222-8333-444444444444
UID_LATE=1a7e1a7e-1111-4222-8333-444444444444
KCG_A=""   # set by kube_up: pod directories
KCG_S=""
KCG_LATE=""
TOGGLE_MS=2000  # the issue's bound on a label/annotation flip

# kube_api CMD-JSON: one change to the fake cluster.
kube_api() {
  in_netns "$NS_NODE" curl -q -sS --max-time 5 -X POST -d "$1" \
    "http://$NODE_IP4:$KUBE_PORT/control" >/dev/null
}
kube_ns() { kube_api "{\"op\":\"ns\",\"name\":\"$1\",\"labels\":${2:-{\}}}"; }
# kube_pod NS NAME UID QOS ANNOTATIONS-JSON
kube_pod() {
  kube_api "{\"op\":\"pod\",\"namespace\":\"$1\",\"name\":\"$2\",\"uid\":\"$3\",\"node\":\"$KUBE_NODE\",\"qos\":\"$4\",\"annotations\":${5:-{\}}}"
}
kube_pod_a() { kube_pod shop a "$UID_A" Burstable "${1:-{\}}"; }
kube_pod_s() { kube_pod ops s "$UID_S" BestEffort "${1:-{\}}"; }

kube_api_start() {
  bg fake-apiserver nsenter --net="/run/netns/$NS_NODE" -- "$PYTHON" "$E2E_DIR/fake_apiserver.py" \
    --listen "$NODE_IP4:$KUBE_PORT" --state "$KUBE_STATE" --log "$KUBE_LOG"
  KUBE_API_PID=$!
  wait_for 10 "fake apiserver" grep -q "fake apiserver ready" "$WORK/fake-apiserver.out"
}
kube_api_stop() {
  [[ -n $KUBE_API_PID ]] && kill_pids "$KUBE_API_PID"
  wait "$KUBE_API_PID" 2>/dev/null
  KUBE_API_PID=""
  : >"$WORK/fake-apiserver.out"
}

# kube_config_file: the daemon's KUBECONFIG, naming the fake API server.
kube_config_file() {
  cat >"$KUBECONFIG_FILE" <<EOF2
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://$NODE_IP4:$KUBE_PORT
contexts:
- name: fake
  context: {cluster: fake, user: nobody}
current-context: fake
users:
- name: nobody
  user: {}
EOF2
  export KUBECONFIG=$KUBECONFIG_FILE
}

# kube_up: the fake API server with two namespaces and two pods, their
# cgroups, and the daemon with --kube (each idempotent: every t_kube_* test
# calls it, so any of them can run alone).
kube_up() {
  KCG_A=$CG_ROOT/kubepods/burstable/pod$UID_A
  KCG_S=$CG_ROOT/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_S//-/_}.slice
  KCG_LATE=$CG_ROOT/kubepods/besteffort/pod$UID_LATE
  mkdir -p "$KCG_A" "$KCG_S" || return 1
  if [[ -z $KUBE_API_PID ]] || ! kill -0 "$KUBE_API_PID" 2>/dev/null; then
    kube_api_start || return 1
    kube_ns shop && kube_ns ops && kube_pod_a && kube_pod_s || return 1
  fi
  kube_config_file
  use_daemon "$PROXY_CONFIG" --kube --node-name "$KUBE_NODE" || return 1
  wait_for 10 "the daemon's first reconcile (exempt pods: N)" grep -q "exempt pods:" "$DAEMON_LOG"
}

# kpod_curl a|s ARGS...: curl from pod shop/a or ops/s.
kpod_curl() {
  local pod=$1; shift
  if [[ $pod == a ]]; then
    in_cgroup_netns "$KCG_A" "$NS_POD_A" curl -q -sS --max-time 10 "$@"
  else
    in_cgroup_netns "$KCG_S" "$NS_POD_B" curl -q -sS --max-time 10 "$@"
  fi
}
kpod_ip() { if [[ $1 == a ]]; then echo "$POD_A_IP4"; else echo "$POD_B_IP4"; fi; }

# route_of a|s TAG: prints "direct" or "proxy" for one fresh connection
# (unique path), judged by the origin's view of the client and by the
# proxy's flow log.
KUBE_SEQ=0
route_of() {
  local pod=$1 path m out
  KUBE_SEQ=$((KUBE_SEQ + 1))
  path=/kube-$2-$KUBE_SEQ
  m=$(flow_count)
  out=$(kpod_curl "$pod" "http://$INET_IP4$path" 2>&1) || { echo "error: $out"; return 0; }
  if [[ $out == *"client=$(kpod_ip "$pod") path=$path"* ]] && ! flow_since "$m" | grep -q " http://$INET_IP4$path "; then
    echo direct
  elif [[ $out == *"client=$INET_IP4 path=$path"* ]] && flow_since "$m" | grep -q "^REQUEST GET http://$INET_IP4$path "; then
    echo proxy
  else
    echo "unclear: $out"
  fi
}

# expect_route POD WANT TAG: one connection now goes WANT (direct|proxy).
expect_route() {
  local got
  got=$(route_of "$1" "$3")
  [[ $got == "$2" ]] || why "pod $1 ($3): expected $2, got $got"
}

# expect_flip POD WANT TAG: after a change, the pod's connections go WANT
# within TOGGLE_MS (polling with fresh connections), and keep doing so.
expect_flip() {
  local pod=$1 want=$2 tag=$3 start got elapsed
  start=$(now_ms)
  while :; do
    got=$(route_of "$pod" "$tag")
    elapsed=$(( $(now_ms) - start ))
    [[ $got == "$want" ]] && break
    if ((elapsed > TOGGLE_MS)); then
      why "pod $pod ($tag): still '$got' after ${elapsed} ms, expected $want within $TOGGLE_MS ms" \
        "$(grep -E 'exempt|watch' "$DAEMON_LOG" | tail -n 8)"
      return 1
    fi
    sleep 0.1
  done
  info "  pod $pod: $want after ${elapsed} ms ($tag)"
  expect_route "$pod" "$want" "$tag-again"
}

# --- the namespace label exempts every pod of the namespace, live.
t_kube_namespace_label() {
  kube_up || return 1
  expect_route a proxy ns-before || return 1
  expect_route s proxy ns-before || return 1
  kube_ns shop '{"egress-redirector/exempt":"true"}' || return 1
  expect_flip a direct ns-labelled || return 1
  expect_route s proxy ns-other-namespace || return 1
  kube_ns shop '{}' || return 1
  expect_flip a proxy ns-unlabelled || return 1
}

# --- the pod annotation, on the systemd-layout pod.
t_kube_pod_annotation() {
  kube_up || return 1
  kube_pod_s '{"egress-redirector/exempt":"true"}' || return 1
  expect_flip s direct annotated || return 1
  expect_route a proxy annotated-other-pod || return 1
  kube_pod_s '{}' || return 1
  expect_flip s proxy unannotated || return 1
}

# --- AKS's annotation, on the cgroupfs-layout pod.
t_kube_aks_annotation() {
  kube_up || return 1
  kube_pod_a '{"kubernetes.azure.com/no-http-proxy-vars":"true"}' || return 1
  expect_flip a direct aks-annotated || return 1
  kube_pod_a '{}' || return 1
  expect_flip a proxy aks-unannotated || return 1
}

# --- exempt: "false" re-includes a pod in an exempt namespace.
t_kube_reinclude() {
  kube_up || return 1
  kube_pod_s '{"egress-redirector/exempt":"false"}' || return 1
  kube_ns ops '{"egress-redirector/exempt":"true"}' || return 1
  # give the label time to arrive (the flip below proves it did: removing
  # the annotation alone then exempts the pod)
  sleep 1.5
  expect_route s proxy reincluded || return 1
  kube_pod_s '{}' || return 1
  expect_flip s direct ns-exempt-again || return 1
  kube_ns ops '{}' || return 1
  expect_flip s proxy ns-unlabelled || return 1
}

# --- a pod whose cgroup appears after its API event, and pod deletion.
t_kube_late_cgroup() {
  kube_up || return 1
  kube_pod default late "$UID_LATE" BestEffort '{"egress-redirector/exempt":"true"}' || return 1
  sleep 1
  mkdir -p "$KCG_LATE" || return 1
  local saved=$KCG_A got
  KCG_A=$KCG_LATE   # pod "late" in pod-a's network namespace
  expect_flip a direct late-cgroup; got=$?
  if ((got == 0)); then
    kube_api '{"op":"delete-pod","namespace":"default","name":"late"}' || got=1
    ((got)) || expect_flip a proxy late-deleted || got=1
  fi
  KCG_A=$saved
  return "$got"
}

# --- a 410 Gone, failing relists, and an API server that goes away and
#     comes back do not wipe the exemptions; the watch recovers after.
t_kube_api_outage() {
  kube_up || return 1
  kube_pod_a '{"egress-redirector/exempt":"true"}' || return 1
  expect_flip a direct outage-before || return 1
  local i lines
  lines=$(wc -l <"$KUBE_LOG")
  kube_api '{"op":"fail-lists","seconds":3}' || return 1
  kube_api '{"op":"gone"}' || return 1
  for i in 1 2 3; do
    sleep 1
    expect_route a direct "during-410-relist-$i" || return 1
  done
  tail -n "+$((lines + 1))" "$KUBE_LOG" | grep -q "410" || why "the fake API server sent no 410" || return 1
  wait_for 20 "a successful relist of pods after the 410" \
    eval "tail -n +$((lines + 1)) '$KUBE_LOG' | grep -q 'GET /api/v1/pods?[^ ]*limit=[^ ]* HTTP/1.1\" 200'" \
    || why "no relist" || return 1
  expect_route a direct after-relist || return 1
  kube_api_stop
  for i in 1 2 3; do
    sleep 1
    expect_route a direct "api-down-$i" || return 1
  done
  kube_api_start || return 1   # same state file: the pod is still annotated
  sleep 1
  expect_route a direct api-back || return 1
  # the watch works again: lifting the exemption is seen (backoff after the
  # outage may add a few seconds, so this bound is looser than TOGGLE_MS)
  kube_pod_a '{}' || return 1
  TOGGLE_MS=15000 expect_flip a proxy after-outage-lifted || return 1
  grep -q "watching pods failed" "$DAEMON_LOG" \
    || why "the daemon logged no watch failure during the outage" || return 1
}

# --- a restarted daemon keeps the exemptions of the one before, even
#     while the API server is unreachable, and follows the API once back.
t_kube_restart_keeps() {
  kube_up || return 1
  kube_pod_a '{"egress-redirector/exempt":"true"}' || return 1
  expect_flip a direct restart-before || return 1
  kube_api_stop
  stop_daemon
  DAEMON_LOG_GEN=$((DAEMON_LOG_GEN + 1))
  cp "$DAEMON_LOG" "$DAEMON_LOG.$DAEMON_LOG_GEN"
  DAEMON_EXTRA=(--kube --node-name "$KUBE_NODE")
  start_daemon "$PROXY_CONFIG"; local rc=$?
  DAEMON_EXTRA=()
  ((rc == 0)) || why "the daemon did not restart with the API server down" || return 1
  local i
  for i in 1 2 3; do
    expect_route a direct "restarted-api-down-$i" || return 1
    expect_route s proxy "restarted-api-down-$i" || return 1
    sleep 0.5
  done
  kube_api_start || return 1
  wait_for 20 "the restarted daemon's first complete view (exempt pods: 1)" \
    grep -q "exempt pods: 1" "$DAEMON_LOG" || why "no first reconcile after the API came back" || return 1
  expect_route a direct restarted-api-back || return 1
  kube_pod_a '{}' || return 1
  TOGGLE_MS=15000 expect_flip a proxy restarted-lifted || return 1
}

# --- static --exempt-cgroup entries keep working beside the watcher.
t_kube_static_exempt() {
  kube_up || return 1
  local out
  out=$(pod_curl pod-b "http://$INET_IP4/kube-static" 2>&1) || why "curl failed: $out" || return 1
  expect_contains "$out" "client=$POD_B_IP4 path=/kube-static" "pod-b (static --exempt-cgroup) direct" || return 1
}

# --- the daemon's own API connections carry its mark: not redirected
#     although it runs under the attach root and the API is not bypassed.
t_kube_api_not_proxied() {
  kube_up || return 1
  local peers
  ! grep -q ":$KUBE_PORT" "$FLOW_LOG" \
    || why "API connections went through the proxy:" "$(grep ":$KUBE_PORT" "$FLOW_LOG" | head -n 3)" || return 1
  peers=$(grep -Eo '^[0-9:]+ [0-9a-f.:]+ "GET /api' "$KUBE_LOG" | awk '{print $2}' | sort -u)
  [[ $peers == "$NODE_IP4" ]] || why "API clients seen by the server: '$peers', expected only $NODE_IP4" || return 1
}

# --- the startup taint (--remove-taint, deploy/components/startup-taint):
#     without the flag the daemon never reads its own Node by name nor
#     patches it (it lists and watches all Nodes for their pod CIDRs:
#     nodetraffic.sh); with it, the
#     taint stays while the daemon is not ready (hooks attached, but the
#     API's first complete list failing), then goes, every effect of it and
#     nothing else, after a concurrent change to the node's taints made the
#     first patch fail (422) rather than be overwritten; the programs were
#     all pinned when the patch arrived; a restart with the taint gone
#     patches nothing.
STARTUP_TAINT=egress-redirector/not-ready
# kube_node TAINTS-JSON: node $KUBE_NODE with these taints (pins: where
# the fake server looks for pinned links when a PATCH arrives).
kube_node() {
  kube_api "{\"op\":\"node\",\"name\":\"$KUBE_NODE\",\"taints\":$1,\"pins\":\"$PIN_DIR\"}"
}
# node_taints: the node's taints as "key:effect ...", in order.
node_taints() {
  in_netns "$NS_NODE" curl -q -sS --fail --max-time 5 "http://$NODE_IP4:$KUBE_PORT/api/v1/nodes/$KUBE_NODE" \
    | "$PYTHON" -c 'import json, sys
print(" ".join(t["key"] + ":" + t["effect"] for t in json.load(sys.stdin)["spec"].get("taints") or []))'
}
node_patches() { grep "PATCH node $KUBE_NODE result=" "$KUBE_LOG" || true; }
t_kube_startup_taint() {
  local rc=0
  kube_startup_taint_body || rc=1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}
kube_startup_taint_body() {
  local ours_s="{\"key\":\"$STARTUP_TAINT\",\"effect\":\"NoSchedule\"}"
  local ours_x="{\"key\":\"$STARTUP_TAINT\",\"effect\":\"NoExecute\"}"
  local other='{"key":"example.com/other","effect":"NoSchedule"}' late='{"key":"example.com/late","effect":"NoExecute"}'
  local all="example.com/other:NoSchedule $STARTUP_TAINT:NoSchedule example.com/late:NoExecute $STARTUP_TAINT:NoExecute"
  local got i patches links
  kube_up || return 1
  kube_node "[$other,$ours_s,$late,$ours_x]" || return 1
  sleep 2
  ! grep -Eq '"(GET|PATCH) /api/v1/nodes/' "$KUBE_LOG" \
    || why "a daemon without --remove-taint read or patched its Node:" "$(grep -E '"(GET|PATCH) /api/v1/nodes/' "$KUBE_LOG" | head -n 3)" || return 1
  got=$(node_taints) && [[ $got == "$all" ]] || why "taints without the flag: '$got', expected '$all'" || return 1

  # A fresh attach (no pins), with the API's lists failing for a while and
  # a concurrent writer waiting for the first patch.
  stop_daemon
  timeout 10 "$REDIRECTOR_BIN" detach --bpffs "$PIN_DIR" >/dev/null || why "detach failed" || return 1
  kube_api '{"op":"fail-lists","seconds":4}' || return 1
  kube_api '{"op":"race-taints","taint":{"key":"example.com/raced","effect":"NoSchedule"}}' || return 1
  use_daemon "$PROXY_CONFIG" --kube --node-name "$KUBE_NODE" --remove-taint "$STARTUP_TAINT" \
    || why "daemon with --remove-taint did not start:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  got=$(redirector_status 2>&1)
  [[ $got == *$'\n'"attached: connect4"* || $got == "attached: connect4"* ]] || why "hooks not attached:" "$got" || return 1
  for i in 1 2; do
    sleep 1
    got=$(node_taints)
    [[ $got == "$all" ]] || why "taints $i s into a start that is not ready: '$got', expected '$all'" || return 1
  done
  [[ -z $(node_patches) ]] || why "patched before ready:" "$(node_patches)" || return 1
  wait_for 30 "the startup taint removed" eval 'got=$(node_taints) && [[ $got != *"$STARTUP_TAINT"* ]]' \
    || why "still tainted: $(node_taints)" "$(grep -E "taint|ready" "$DAEMON_LOG" | tail -n 5)" || return 1
  got=$(node_taints)
  [[ $got == "example.com/raced:NoSchedule example.com/other:NoSchedule example.com/late:NoExecute" ]] \
    || why "taints after removal: '$got'" || return 1
  patches=$(node_patches)
  [[ $(grep -c "result=422" <<<"$patches") == 1 && $(grep -c "result=200" <<<"$patches") == 1 ]] \
    || why "expected one patch refused by the concurrent change (422), then one applied (200):" "$patches" || return 1
  links=$(find "$PIN_DIR/links" -mindepth 1 -printf '%f\n' | sort | paste -sd,)
  expect_contains "$(grep "result=200" <<<"$patches")" "links=$links " "every program pinned at the patch" || return 1
  expect_contains "$(grep "startup taint removed" "$DAEMON_LOG")" 'effects=["NoSchedule", "NoExecute"]' \
    "the daemon's log of the removal" || return 1
  expect_contains "$(cat "$DAEMON_LOG")" "removing the startup taint failed" "the conflict logged and retried" || return 1
  info "  $(grep -c . <<<"$patches") patches; taints now: $got"

  # Idempotent: a restart with the taint gone reads the node, patches nothing.
  DAEMON_CONFIG="(replaced)"
  use_daemon "$PROXY_CONFIG" --kube --node-name "$KUBE_NODE" --remove-taint "$STARTUP_TAINT" \
    || why "the restarted daemon did not start" || return 1
  wait_for 20 "the restarted daemon's check" grep -q "startup taint not on the node" "$DAEMON_LOG" \
    || why "no check after the restart:" "$(tail -n 5 "$DAEMON_LOG")" || return 1
  [[ $(node_patches) == "$patches" ]] || why "the restart patched the node again:" "$(node_patches)" || return 1
}

KUBE_TESTS=(kube_namespace_label:t_kube_namespace_label kube_pod_annotation:t_kube_pod_annotation
  kube_aks_annotation:t_kube_aks_annotation kube_reinclude:t_kube_reinclude
  kube_late_cgroup:t_kube_late_cgroup kube_api_outage:t_kube_api_outage
  kube_restart_keeps:t_kube_restart_keeps
  kube_static_exempt:t_kube_static_exempt kube_api_not_proxied:t_kube_api_not_proxied
  kube_startup_taint:t_kube_startup_taint)

# Standalone: bring the node up, run only these tests, tear it down.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  # shellcheck source-path=SCRIPTDIR source=lib.sh
  source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
  KUBE_STATE=$WORK/fake-apiserver.json KUBE_LOG=$WORK/fake-apiserver.log KUBECONFIG_FILE=$WORK/kubeconfig
  PASSED=0 FAILED=0
  why() { printf '    %s\n' "$@" >&2; return 1; }
  expect_contains() { [[ $1 == *"$2"* ]] || why "$3: expected to find '$2' in:" "$1"; }
  check() {
    local name=$1; shift
    info "--- $name"
    if "$@"; then echo "PASS $name"; PASSED=$((PASSED + 1))
    else echo "FAIL $name"; FAILED=$((FAILED + 1)); tail -n 15 "$DAEMON_LOG" | sed 's/^/    | /' >&2; fi
  }
  kube_main_exit() {
    trap - EXIT
    node_down_if_ours
    echo "$PASSED passed, $FAILED failed"
    ((FAILED == 0))
  }
  trap kube_main_exit EXIT
  require_root
  require_prereqs
  node_up
  for t in "${KUBE_TESTS[@]}"; do
    if [[ -n ${RDE_ONLY:-} && " $RDE_ONLY " != *" ${t%%:*} "* ]]; then continue; fi
    check "${t%%:*}" "${t#*:}"
  done
fi
