# shellcheck shell=bash
# The runtime harness's node: a private containerd (root, state, socket and
# config under $RT_WORK; the system containerd service is never used) with
# its CRI plugin, runc (cgroupfs driver) and the CNI bridge + host-local
# plugins, inside network namespace rde-rt-node and a mount namespace of
# its own (slave of the host's: host mounts show, ours never leak out).
#
#   rde-rt-node (containerd, the daemon's host network)
#       rde-rt-br0 10.249.20.1/24  <- CNI bridge; pods 10.249.20.x
#       rde-rt-up  10.249.21.1/24 ── rde-rt-inet 10.249.21.2 (mitmproxy), .3 (origin)
#
# Nothing here touches the host's network: the bridge and the pods live in
# rde-rt-node, and 10.249.20.0/22 is blackholed on the host first.
# Sourced by tests/runtime/run.sh; callers set `set -euo pipefail`.

RT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RT_WORK=${RT_WORK:-/tmp/rde-rt}
RT_NS_NODE=rde-rt-node
RT_NS_INET=rde-rt-inet
RT_NET=10.249.20.0/22
RT_POD_SUBNET=10.249.20.0/24
RT_NODE_IP=10.249.20.1     # the bridge's address: the node IP pods reach
RT_UP_IP=10.249.21.1
RT_INET_IP=10.249.21.2     # mitmproxy
RT_ORIGIN_IP=10.249.21.3   # the origin (the daemon never proxies the proxy's own address)
RT_SOCK=$RT_WORK/containerd.sock
RT_BPFFS_NOTE="bpffs at /sys/fs/bpf inside containerd's mount namespace only"
PAUSE_REF=docker.io/library/rde-pause:1
RT_PIDS=()

rt_info() { printf '[runtime-e2e] %s\n' "$*" >&2; }

# ctr against the private containerd, in the CRI plugin's namespace.
rt_ctr() { ctr --address "$RT_SOCK" -n k8s.io "$@"; }

# Runs CMD in containerd's network and mount namespaces.
rt_node_exec() {
  nsenter --net="/run/netns/$RT_NS_NODE" --mount="/proc/$(cat "$RT_WORK/containerd.pid")/ns/mnt" -- "$@"
}

rt_write_config() {
  mkdir -p "$RT_WORK"/{root,state,cni,opt}
  cat >"$RT_WORK/config.toml" <<EOF2
version = 2
root = "$RT_WORK/root"
state = "$RT_WORK/state"
[grpc]
  address = "$RT_SOCK"
[ttrpc]
  address = "$RT_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$RT_WORK/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_REF"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Clamp OOM scores to containerd's own, as kind does: where the harness
  # runs may lack CAP_SYS_RESOURCE, and runc then fails to lower them.
  restrict_oom_score_adj = true
  # Sandbox netns pinned under our state dir, not /var/run/netns: they are
  # mounted in containerd's mount namespace, and would leave empty files
  # behind in the host's /run.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RT_WORK/cni"
    max_conf_num = 1
EOF2
  cat >"$RT_WORK/cni/10-rde-rt.conflist" <<EOF2
{
  "cniVersion": "1.0.0",
  "name": "rde-rt",
  "plugins": [
    {"type": "bridge", "bridge": "rde-rt-br0", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$RT_POD_SUBNET", "gateway": "$RT_NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$RT_WORK/cni-ipam"}},
    {"type": "loopback"}
  ]
}
EOF2
}

rt_blackhole_add() { ip route replace blackhole "$RT_NET" 2>/dev/null || true; }
rt_blackhole_del() { ip route del blackhole "$RT_NET" 2>/dev/null || true; }

rt_netns_up() {
  local ns
  for ns in "$RT_NS_NODE" "$RT_NS_INET"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  ip -n "$RT_NS_NODE" link add rde-rt-up type veth peer name rde-rt-down netns "$RT_NS_INET"
  ip -n "$RT_NS_NODE" addr add "$RT_UP_IP/24" dev rde-rt-up
  ip -n "$RT_NS_NODE" link set rde-rt-up up
  ip -n "$RT_NS_INET" addr add "$RT_INET_IP/24" dev rde-rt-down
  ip -n "$RT_NS_INET" addr add "$RT_ORIGIN_IP/24" dev rde-rt-down
  ip -n "$RT_NS_INET" link set rde-rt-down up
  ip -n "$RT_NS_INET" route add "$RT_POD_SUBNET" via "$RT_UP_IP"
  ip netns exec "$RT_NS_NODE" sysctl -qw net.ipv4.ip_forward=1
}

# containerd in rde-rt-node, in a new mount namespace whose mounts are
# slaves of the host's (CRI refuses HostToContainer propagation from a
# private mount) and with a bpffs of its own at /sys/fs/bpf (shared, as
# systemd mounts it on a real node), so the
# daemon's pins vanish with the namespace.
rt_containerd_up() {
  rt_write_config
  nsenter --net="/run/netns/$RT_NS_NODE" -- unshare --mount --propagation slave -- \
    sh -c 'mount -t bpf bpf /sys/fs/bpf && mount --make-shared /sys/fs/bpf && echo $$ >"$1/containerd.pid" && exec containerd --config "$1/config.toml"' \
    sh "$RT_WORK" >"$RT_WORK/containerd.log" 2>&1 &
  RT_PIDS+=($!)
  local i
  for i in $(seq 100); do
    [[ -S $RT_SOCK ]] && rt_ctr version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  rt_info "containerd did not come up; its log:"; tail -20 "$RT_WORK/containerd.log" >&2
  return 1
}

# The kubelet-layout cgroup trees at the root of every hierarchy (v1
# controllers and the unified one): /kubepods and kind's /kubelet.
rt_cgroup_dirs() {
  local d
  for d in /sys/fs/cgroup/kubepods /sys/fs/cgroup/kubelet /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubelet; do
    [[ -d $d ]] && echo "$d"
  done
}

# Refuses a machine that already has kubelet-layout cgroups the harness did
# not make (a real node: rt_down would otherwise kill its pods), then marks
# the ones it is about to make as its own.
rt_claim_cgroups() {
  if [[ ! -f $RT_WORK/cgroups-ours && -n $(rt_cgroup_dirs) ]]; then
    rt_info "this machine has kubepods cgroups of its own ($(rt_cgroup_dirs | tr '\n' ' ')): a kubelet runs here; the harness would put its pods beside them, refusing"
    return 1
  fi
  mkdir -p "$RT_WORK"
  touch "$RT_WORK/cgroups-ours"
}

# Everything rt_up made, in reverse; idempotent, never fails, and also
# removes what a crashed earlier run left (fixed names).
rt_down() {
  local pid
  if [[ -S $RT_SOCK ]]; then
    # Sandboxes first: their shims, netns and CNI addresses go with them.
    for pid in $(rt_ctr tasks ls -q 2>/dev/null); do rt_ctr tasks kill -s KILL "$pid" >/dev/null 2>&1 || true; done
  fi
  if [[ -f $RT_WORK/containerd.pid ]]; then
    pid=$(cat "$RT_WORK/containerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Shims outlive containerd by design: end ours (their command line names our socket).
  for pid in $(pgrep -f -- "-address $RT_SOCK" || true); do kill -9 "$pid" 2>/dev/null || true; done
  # The pods' processes and cgroups, only when this harness made them (a
  # machine that is a real Kubernetes node has its own kubepods: never ours).
  if [[ -f $RT_WORK/cgroups-ours ]]; then
    local cg
    for cg in $(rt_cgroup_dirs); do
      find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    sleep 0.2
    for cg in $(rt_cgroup_dirs); do
      find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    [[ -z $(rt_cgroup_dirs) ]] && rm -f "$RT_WORK/cgroups-ours"
  fi
  # Mounts of the harness's root left in the host namespace (none normally:
  # containerd's mounts live in its own namespace).
  grep -o " $RT_WORK/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip netns del "$RT_NS_NODE" 2>/dev/null || true   # takes the bridge and veths with it
  ip netns del "$RT_NS_INET" 2>/dev/null || true
  rm -rf "$RT_WORK/state" "$RT_WORK/root" "$RT_WORK/cni-ipam" 2>/dev/null || \
    { grep -o " $RT_WORK/[^ ]*" /proc/mounts | xargs -r -n1 umount -l 2>/dev/null; rm -rf "$RT_WORK/state" "$RT_WORK/root" "$RT_WORK/cni-ipam" 2>/dev/null || true; }
}
