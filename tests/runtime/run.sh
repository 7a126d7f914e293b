#!/usr/bin/env bash
# The runtime harness (`cargo xtask runtime-e2e` runs it): a private
# containerd with CRI, runc and CNI (node.sh), the internet side of the
# e2e harness (origin.py and mitmproxy from tests/e2e/lib.sh, in
# rde-rt-inet), the fake API server over HTTPS, then scenarios.py.
#
# Needs root and, from xtask: RT_IMAGES (the daemon, pause and client image
# archives), CLIENT_REF, KUBECTL, CRI_PYTHON (a python with grpcio and
# PyYAML), CRI_STUBS (the generated CRI stubs), REDIRECTOR_BIN, MITMDUMP.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../e2e/lib.sh
source "$HERE/../e2e/lib.sh"
# shellcheck source=node.sh
source "$HERE/node.sh"

# lib.sh's internet side, moved to this harness's names and addresses.
WORK=$RT_WORK
NS_INET=$RT_NS_INET
INET_IP4=$RT_INET_IP
INET_IP6=fd42:e9e5:20::2   # only named in the origin's certificate
CA_DIR=$WORK/ca
CA_CERT=$CA_DIR/mitmproxy-ca-cert.pem
FLOW_LOG=$WORK/flow.log
AUTH_FLOW_LOG=$WORK/flow-auth.log
ORIGIN_LOG=$WORK/origin.log
MITM_LOG=$WORK/mitmdump.log
RT_API_PORT=6443
RT_LOCK=/run/rde-rt.lock

cleanup() {
  local rc=$?
  set +e
  if [[ -n ${RT_KEEP:-} ]]; then rt_info "RT_KEEP: left running; clean up with: RT_KEEP= bash $HERE/down.sh"; exit "$rc"; fi
  [[ ${#BG_PIDS[@]} -gt 0 ]] && kill_pids "${BG_PIDS[@]}"
  rt_down
  rt_blackhole_del
  exit "$rc"
}

exec 8>"$RT_LOCK"
flock -n 8 || { rt_info "another runtime-e2e holds $RT_LOCK"; exit 1; }
rt_down   # leftovers of a crashed run (fixed names)
rt_claim_cgroups
trap cleanup EXIT INT TERM
rt_blackhole_add
mkdir -p "$RT_WORK"
rm -rf "${RT_WORK:?}/pods" "$RT_WORK/run-egress-redirector" "$RT_WORK/host-root"
rt_netns_up
# The bridge exists before any pod, with the node IP the daemon listens on,
# and a MAC address of its own: a bridge without one takes the lowest of its
# ports', so a pod added later could change it under the other pods' ARP
# caches (their packets to the node then go nowhere for a while).
ip -n "$RT_NS_NODE" link add rde-rt-br0 address 02:00:0a:f9:14:01 type bridge
ip -n "$RT_NS_NODE" addr add "$RT_NODE_IP/24" dev rde-rt-br0
ip -n "$RT_NS_NODE" link set rde-rt-br0 up

make_origin_cert
make_ca
start_origin
start_mitm mitmdump 8080 "$FLOW_LOG"
wait_for 30 "mitmdump on $INET_IP4:8080" port_listening "$NS_INET" 8080 \
  || { tail -n 20 "$WORK/mitmdump.out" >&2; exit 1; }

# The fake API server over HTTPS on the node (where a kubernetes Service
# would route to), and the service account volume a kubelet would project.
# A CA and a server certificate it signs (rustls refuses a self-signed CA
# certificate as the server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/api-ca-key.pem" -out "$WORK/api-ca.pem" -days 2 -subj /CN=rt-cluster-ca >/dev/null 2>&1
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/api-key.pem" -out "$WORK/api.csr" -subj /CN=kube-apiserver >/dev/null 2>&1
printf 'subjectAltName=IP:%s,DNS:kubernetes.default.svc\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
  "$RT_UP_IP" >"$WORK/api.ext"
openssl x509 -req -in "$WORK/api.csr" -CA "$WORK/api-ca.pem" -CAkey "$WORK/api-ca-key.pem" \
  -CAcreateserial -days 2 -extfile "$WORK/api.ext" -out "$WORK/api-cert.pem" >/dev/null 2>&1
mkdir -p "$WORK/serviceaccount"
cp "$WORK/api-ca.pem" "$WORK/serviceaccount/ca.crt"
echo -n egress-redirector >"$WORK/serviceaccount/namespace"
echo -n rt-fake-token >"$WORK/serviceaccount/token"
rm -f "$WORK/fake-apiserver.json"
bg fake-apiserver nsenter --net="/run/netns/$RT_NS_NODE" -- "$PYTHON" "$E2E_DIR/fake_apiserver.py" \
  --listen "$RT_UP_IP:$RT_API_PORT" --state "$WORK/fake-apiserver.json" --log "$WORK/fake-apiserver.log" \
  --tls-cert "$WORK/api-cert.pem" --tls-key "$WORK/api-key.pem"
wait_for 10 "fake apiserver" grep -q "fake apiserver ready" "$WORK/fake-apiserver.out"

rt_containerd_up
for archive in $RT_IMAGES; do rt_ctr images import "$archive" >/dev/null; done
rt_info "images: $(rt_ctr images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

export RT_WORK RT_NS_NODE RT_NODE_IP RT_INET_IP RT_ORIGIN_IP RT_UP_IP RT_API_PORT RT_SOCK FLOW_LOG CA_DIR REPO_DIR
# Two passes: the kubelet's default cgroup root, then kind's (--cgroup-root
# /kubelet), each from fresh pods; the fake cluster starts anew each time.
# RT_ROOTS=kubelet runs the kind-like pass only, RT_ROOTS=default the other.
case ${RT_ROOTS:-both} in
  default) RT_ROOTS=(""); ;;
  kubelet) RT_ROOTS=(/kubelet); ;;
  *) RT_ROOTS=("" /kubelet); ;;
esac
rc=0
for root in "${RT_ROOTS[@]}"; do
  RT_CGROUP_ROOT=$root rt_node_exec "$CRI_PYTHON" "$HERE/scenarios.py" || rc=1
done
exit "$rc"
