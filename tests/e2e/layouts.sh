# shellcheck shell=bash
# End-to-end tests of the cgroup layouts (tests t_layout_*): the daemon
# started WITHOUT --cgroup, from inside a pod's cgroup, derives the attach
# root and the pods' naming from its own cgroup, as a DaemonSet pod does.
# The pods' cgroups are laid out as kind's kubelet (cgroupRoot /kubelet)
# lays them out inside a kind node, whose container's cgroup is the extra
# level above (here $CG_ROOT/kind-node, $CG_ROOT/kind-fs):
#
# systemd driver ($LK = $CG_ROOT/kind-node/kubelet.slice/kubelet-kubepods.slice):
#   $LK/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod<D_>.slice/
#       cri-containerd-redirector.scope     the daemon, in its own cgroup
#                                           namespace (as in a container)
#   $LK/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod<W_>.slice/
#       cri-containerd-web.scope            kshop/web (netns rde-pod-a)
#   $LK/kubelet-kubepods-pod<O_>.slice/cri-containerd-ops.scope
#                                           kops/ops, guaranteed (rde-pod-b)
#   $LK/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod<HASH>.slice/
#       cri-containerd-etcd.scope           kube-system/etcd-rde-node, a static
#                                           pod: the API's mirror has another
#                                           UID and the hash in
#                                           kubernetes.io/config.mirror
# cgroupfs driver ($LF = $CG_ROOT/kind-fs/kubelet/kubepods):
#   $LF/burstable/pod<D>/redirector         the daemon (host cgroup namespace)
#   $LF/besteffort/pod<W>/web, $LF/pod<O>/ops, $LF/burstable/pod<HASH>/etcd
#
# Each test stops the standard daemon, detaches, runs its own, and brings
# the standard daemon back (takeover) whatever happened. The fake API
# server is kube.sh's.

LAYOUT_LOG=$WORK/redirector-layout.log
LAYOUT_PID=""
LAYOUT_CGNS_MNT=$WORK/cgns-cgroup2  # the daemon's "runtime" cgroup2 mount
UID_LD=d0d0d0d0-2222-4333-8444-555555555555   # the daemon's pod
UID_LW=e0e0e0e0-2222-4333-8444-555555555555   # kshop/web
UID_LO=f0f0f0f0-2222-4333-8444-555555555555   # kops/ops
UID_LM=c0c0c0c0-2222-4333-8444-555555555555   # the mirror pod's API UID
LAYOUT_HASH=3f9b2c7d8e1a4b5c6d7e8f9a0b1c2d3e  # the static pod's config hash
LAYOUT_CONFIG=$WORK/layout-config.json
LCG_D="" LCG_W="" LCG_O="" LCG_M=""           # set by layout_tree
LAYOUT_KUBEPODS=""

# layout_tree systemd|cgroupfs: the pods' (and the daemon's) container
# cgroups in that layout.
layout_tree() {
  local u
  if [[ $1 == systemd ]]; then
    LAYOUT_KUBEPODS=$CG_ROOT/kind-node/kubelet.slice/kubelet-kubepods.slice
    u=${UID_LD//-/_}
    LCG_D=$LAYOUT_KUBEPODS/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod$u.slice/cri-containerd-redirector.scope
    u=${UID_LW//-/_}
    LCG_W=$LAYOUT_KUBEPODS/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod$u.slice/cri-containerd-web.scope
    u=${UID_LO//-/_}
    LCG_O=$LAYOUT_KUBEPODS/kubelet-kubepods-pod$u.slice/cri-containerd-ops.scope
    LCG_M=$LAYOUT_KUBEPODS/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod$LAYOUT_HASH.slice/cri-containerd-etcd.scope
  else
    LAYOUT_KUBEPODS=$CG_ROOT/kind-fs/kubelet/kubepods
    LCG_D=$LAYOUT_KUBEPODS/burstable/pod$UID_LD/redirector
    LCG_W=$LAYOUT_KUBEPODS/besteffort/pod$UID_LW/web
    LCG_O=$LAYOUT_KUBEPODS/pod$UID_LO/ops
    LCG_M=$LAYOUT_KUBEPODS/burstable/pod$LAYOUT_HASH/etcd
  fi
  mkdir -p "$LCG_D" "$LCG_W" "$LCG_O" "$LCG_M"
}

# layout_api: the fake API server (kube.sh's) with this node's pods of the
# layout tests, none exempt yet, and the kubeconfig.
layout_api() {
  if [[ -z $KUBE_API_PID ]] || ! kill -0 "$KUBE_API_PID" 2>/dev/null; then
    kube_api_start || return 1
  fi
  kube_config_file
  kube_ns egress-redirector && kube_ns kshop && kube_ns kops && kube_ns kube-system || return 1
  kube_pod egress-redirector redirector "$UID_LD" Burstable && kube_pod kshop web "$UID_LW" BestEffort \
    && kube_pod kops ops "$UID_LO" Guaranteed || return 1
  kube_pod kube-system etcd-rde-node "$UID_LM" Burstable \
    "{\"kubernetes.io/config.mirror\":\"$LAYOUT_HASH\",\"kubernetes.io/config.source\":\"file\"}"
}

# layout_daemon_start host|private: `redirector run --kube` without
# --cgroup, as the process of $LCG_D, in netns rde-node; `private`: in its
# own cgroup namespace with cgroup2 mounted at its root, as a container
# runtime sets up a container (the host's tree then shows as /../..).
layout_daemon_start() {
  local cmd=() deadline
  # shellcheck disable=SC2016  # $$ and $@ are for the inner shells
  cmd=(sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh "$LCG_D")
  if [[ $1 == private ]]; then
    mkdir -p "$LAYOUT_CGNS_MNT"
    # shellcheck disable=SC2016
    cmd+=(unshare --cgroup --mount --propagation private
      sh -c 'mount -t cgroup2 cgroup2 "$1" && shift && exec "$@"' sh "$LAYOUT_CGNS_MNT")
  fi
  cmd+=(nsenter --net="/run/netns/$NS_NODE" -- env RUST_LOG=info,redirector=debug NO_COLOR=1
    KUBECONFIG="$KUBECONFIG_FILE" "$REDIRECTOR_BIN" run --proxy-config "$LAYOUT_CONFIG"
    --listen "$NODE_IP4:$LISTEN_PORT" --listen "[$NODE_IP6]:$LISTEN_PORT" --bpffs "$PIN_DIR"
    --resolv-conf "$RESOLV_CONF" --kube --node-name "$KUBE_NODE" "${DAEMON_BASE_FLAGS[@]}"
    --handover-dir "$WORK/handover-layout")
  # The standard config, but kube-system not exempt by namespace: the
  # static pod's mirror there is exempted by its annotation below.
  sed 's/^{/{"exemptNamespaces":[],/' "$PROXY_CONFIG" >"$LAYOUT_CONFIG"
  : >"$LAYOUT_LOG"
  "${cmd[@]}" >"$LAYOUT_LOG" 2>&1 9>&- &
  LAYOUT_PID=$!
  BG_PIDS+=("$LAYOUT_PID")
  deadline=$(( $(now_ms) + 30000 ))
  while (( $(now_ms) < deadline )); do
    if grep -qw ready "$LAYOUT_LOG"; then
      grep -qx "$LAYOUT_PID" "$LCG_D/cgroup.procs" \
        || why "pid $LAYOUT_PID is not the process in $LCG_D" || return 1
      wait_for 10 "the first reconcile (exempt pods: N)" grep -q "exempt pods:" "$LAYOUT_LOG"
      return
    fi
    kill -0 "$LAYOUT_PID" 2>/dev/null || break
    sleep 0.1
  done
  why "the daemon without --cgroup did not get ready:" "$(tail -n 8 "$LAYOUT_LOG")"
}

layout_daemon_stop() {
  [[ -n $LAYOUT_PID ]] || return 0
  kill -TERM "$LAYOUT_PID" 2>/dev/null
  wait "$LAYOUT_PID" 2>/dev/null
  LAYOUT_PID=""
}

# layout_route CGROUP NETNS CLIENT-IP TAG: "direct" or "proxy" for one fresh
# connection from a process of CGROUP (judged as kube.sh's route_of does).
layout_route() {
  local cg=$1 ns=$2 ip=$3 path m out
  KUBE_SEQ=$((KUBE_SEQ + 1))
  path=/layout-$4-$KUBE_SEQ
  m=$(flow_count)
  out=$(in_cgroup_netns "$cg" "$ns" curl -q -sS --max-time 10 "http://$INET_IP4$path" 2>&1) \
    || { echo "error: $out"; return 0; }
  if [[ $out == *"client=$ip path=$path"* ]] && ! flow_since "$m" | grep -q " http://$INET_IP4$path "; then
    echo direct
  elif [[ $out == *"client=$INET_IP4 path=$path"* ]] && flow_since "$m" | grep -q "^REQUEST GET http://$INET_IP4$path "; then
    echo proxy
  else
    echo "unclear: $out"
  fi
}

# layout_expect WANT POD TAG [wait]: pod web, ops or etcd connects WANT
# (direct|proxy) now, or with `wait` within TOGGLE_MS of a change.
layout_expect() {
  local want=$1 pod=$2 tag=$3 start got cg ns ip
  case $pod in
    web) cg=$LCG_W ns=$NS_POD_A ip=$POD_A_IP4 ;;
    ops) cg=$LCG_O ns=$NS_POD_B ip=$POD_B_IP4 ;;
    etcd) cg=$LCG_M ns=$NS_POD_B ip=$POD_B_IP4 ;;
  esac
  start=$(now_ms)
  while :; do
    got=$(layout_route "$cg" "$ns" "$ip" "$tag")
    [[ $got == "$want" ]] && break
    if [[ ${4:-} != wait ]] || (( $(now_ms) - start > TOGGLE_MS )); then
      why "pod $pod ($tag): '$got', expected $want" "$(grep -E 'exempt|attach root' "$LAYOUT_LOG" | tail -n 8)"
      return 1
    fi
    sleep 0.1
  done
  [[ ${4:-} == wait ]] && info "  pod $pod: $want after $(( $(now_ms) - start )) ms ($tag)"
  return 0
}

# layout_body systemd|cgroupfs host|private
layout_body() {
  local log
  layout_tree "$1" || return 1
  layout_api || return 1
  stop_daemon
  timeout 10 "$REDIRECTOR_BIN" detach --bpffs "$PIN_DIR" >/dev/null || why "detach failed" || return 1
  layout_daemon_start "$2" || return 1
  log=$(grep "attach root derived" "$LAYOUT_LOG")
  expect_contains "$log" "cgroup=$LAYOUT_KUBEPODS " "the derived attach root" || return 1
  if [[ $1 == systemd ]]; then
    expect_contains "$log" "kubelet-kubepods-<qos>-pod<uid>.slice" "the derived layout" || return 1
  else
    expect_contains "$log" "layout=cgroupfs" "the derived layout" || return 1
  fi
  info "  derived: $(grep -o 'cgroup=.*' <<<"$log")"
  if [[ $2 == private ]]; then
    # /proc/self/cgroup said "/": the cgroup was found in the host's tree.
    expect_contains "$(grep "found by its id" "$LAYOUT_LOG")" "dir=$LCG_D " "own cgroup found by id" || return 1
  fi
  # (1) a pod of the layout goes through the proxy; the other two as well
  # while nothing exempts them.
  layout_expect proxy web redirected || return 1
  layout_expect proxy ops before-label || return 1
  layout_expect proxy etcd before-annotation || return 1
  # (2) the namespace label exempts kops/ops, found in this layout, live.
  kube_ns kops '{"egress-redirector/exempt":"true"}' || return 1
  layout_expect direct ops ns-labelled wait || return 1
  layout_expect proxy web other-namespace || return 1
  kube_ns kops '{}' || return 1
  layout_expect proxy ops ns-unlabelled wait || return 1
  # (3) the static pod's mirror, annotated exempt: its cgroup carries the
  # config hash, not the mirror's UID.
  kube_pod kube-system etcd-rde-node "$UID_LM" Burstable \
    "{\"kubernetes.io/config.mirror\":\"$LAYOUT_HASH\",\"egress-redirector/exempt\":\"true\"}" || return 1
  layout_expect direct etcd mirror-exempt wait || return 1
  layout_expect proxy web mirror-other-pod || return 1
  expect_contains "$(grep "pod exempt" "$LAYOUT_LOG")" "kube-system/etcd-rde-node" "the mirror pod's exemption logged" || return 1
}

# layout_test systemd|cgroupfs host|private: the body, then the standard
# daemon back whatever happened.
layout_test() {
  local rc=0
  layout_body "$@" || rc=1
  ((rc)) && why "daemon log:" "$(tail -n 15 "$LAYOUT_LOG")"
  layout_daemon_stop
  kube_ns kops '{}' >/dev/null 2>&1
  kube_pod kube-system etcd-rde-node "$UID_LM" Burstable \
    "{\"kubernetes.io/config.mirror\":\"$LAYOUT_HASH\"}" >/dev/null 2>&1
  use_daemon "$PROXY_CONFIG" || { why "the standard daemon did not come back"; rc=1; }
  return "$rc"
}

# --- kind: systemd driver, cgroupRoot /kubelet, the daemon in a private
# cgroup namespace as in the DaemonSet's container.
t_layout_kind_systemd() { layout_test systemd private; }
# --- cgroupfs driver, cgroupRoot /kubelet, the host's cgroup namespace.
t_layout_kind_cgroupfs() { layout_test cgroupfs host; }

# --- outside any pod (the standard daemon's cgroup, system/redirector),
# without --cgroup: refused at start, naming the cgroup and the flag; the
# running daemon's hooks are untouched.
t_layout_not_in_pod() {
  local out rc
  out=$(in_cgroup_netns "$CG_ROOT/system/redirector" "$NS_NODE" timeout 20 "$REDIRECTOR_BIN" run \
    --proxy-config "$PROXY_CONFIG" --listen "$NODE_IP4:$LISTEN_PORT" --bpffs "$WORK/bpffs-unused" \
    --handover-dir "$WORK/handover-unused" 2>&1)
  rc=$?
  ((rc != 0 && rc != 124)) || why "exit $rc, expected an error:" "$out" || return 1
  expect_contains "$out" "is not inside a pod's cgroup" "the error" || return 1
  expect_contains "$out" "$CG_ROOT/system/redirector" "the error names the cgroup" || return 1
  expect_contains "$out" "--cgroup DIR" "the error names the flag" || return 1
  out=$(pod_curl pod-a "http://$INET_IP4/after-not-in-pod" 2>&1) || why "pod-a curl failed:" "$out" || return 1
  expect_contains "$out" "client=$INET_IP4 path=/after-not-in-pod" "pod-a still via the proxy" || return 1
}

LAYOUT_TESTS=(layout_kind_systemd:t_layout_kind_systemd layout_kind_cgroupfs:t_layout_kind_cgroupfs
  layout_not_in_pod:t_layout_not_in_pod)
