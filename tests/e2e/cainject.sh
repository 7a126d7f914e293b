# shellcheck shell=bash
# End-to-end tests of the CA-injection webhook (`redirector webhook`, issue
# 16): the webhook runs in rde-node against the fake API server, keeps the
# trust bundle's ConfigMap in the labelled namespace and writes its caBundle
# into the MutatingWebhookConfiguration; the tests send it AdmissionReviews
# over its TLS (checked against that caBundle), apply the returned patch as
# the API server does, and play the kubelet for the patched container: a
# process of pod-a (redirected, so its HTTPS goes through mitmproxy, the
# MITM) in a private mount namespace with an overlay over /etc, the
# ConfigMap's files bind-mounted where the patch's volumeMounts say, and
# exactly the patch's environment. Then curl, Python (urllib, requests),
# Node (https) and Java (java.net.http) call https://origin.test/ with no
# flag of their own.
#
# Sourced by run.sh (tests cainject_*). Needs python3-requests, nodejs and
# a JRE (`cargo xtask setup` installs them).

CAINJ_PORT=18443
CAINJ_NS=cainject
CAINJ_SVC=egress-redirector-ca-injector.egress-redirector.svc
CAINJ_CONFIG=$WORK/cainject-proxy.json
CAINJ_PID=""
CAINJ_CA=$WORK/cainject-webhook-ca.pem
CAINJ_API=""   # http://NODE_IP4:KUBE_PORT once up
CAINJ_CLIENTS=(curl urllib requests node java)
# The distribution's Python, where python3-requests is installed (not a
# pyenv or venv one first on PATH).
CAINJ_PYTHON=/usr/bin/python3

cainj_api_get() { # cainj_api_get PATH: GET from the fake API server
  in_netns "$NS_NODE" curl -q -sS --max-time 5 --fail "$CAINJ_API$1"
}

# cainject_up: the fake API server, the namespaces, the webhook
# configuration object and the webhook (each idempotent).
cainject_up() {
  local t missing=()
  for t in node java javac; do command -v "$t" >/dev/null || missing+=("$t"); done
  "$CAINJ_PYTHON" -c 'import requests' 2>/dev/null || missing+=("python3-requests")
  ((${#missing[@]} == 0)) || { die "missing: ${missing[*]} (cargo xtask setup installs them)"; return 1; }
  if [[ -z $KUBE_API_PID ]] || ! kill -0 "$KUBE_API_PID" 2>/dev/null; then
    kube_api_start || return 1
  fi
  kube_config_file
  CAINJ_API=http://$NODE_IP4:$KUBE_PORT
  kube_ns "$CAINJ_NS" '{"egress-redirector/inject-ca":"true"}' || return 1
  kube_ns cainject-off || return 1
  [[ -n $CAINJ_PID ]] && kill -0 "$CAINJ_PID" 2>/dev/null && return 0
  cp "$PROXY_CONFIG" "$CAINJ_CONFIG"
  in_netns "$NS_NODE" curl -q -sS --max-time 5 -X POST -H 'Content-Type: application/json' -d \
    '{"apiVersion":"admissionregistration.k8s.io/v1","kind":"MutatingWebhookConfiguration",
      "metadata":{"name":"egress-redirector-ca-injector"},
      "webhooks":[{"name":"inject-ca.egress-redirector.github.io","admissionReviewVersions":["v1"],
        "sideEffects":"None","clientConfig":{"service":{"name":"egress-redirector-ca-injector",
        "namespace":"egress-redirector","path":"/mutate","port":443}}}]}' \
    "$CAINJ_API/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations" >/dev/null \
    || return 1
  bg cainject-webhook nsenter --net="/run/netns/$NS_NODE" -- env POD_NAME=webhook-1 \
    RUST_LOG=info "$REDIRECTOR_BIN" webhook --proxy-config "$CAINJ_CONFIG" \
    --listen "$NODE_IP4:$CAINJ_PORT" --namespace egress-redirector
  CAINJ_PID=$!
  wait_for 15 "the webhook listening" port_listening "$NS_NODE" "$CAINJ_PORT" \
    || { tail -n 20 "$WORK/cainject-webhook.out" >&2; return 1; }
  wait_for 15 "the bundle's ConfigMap in $CAINJ_NS" \
    cainj_api_get "/api/v1/namespaces/$CAINJ_NS/configmaps/egress-redirector-ca-bundle" \
    || { tail -n 20 "$WORK/cainject-webhook.out" >&2; return 1; }
  local config
  config=$(cainj_api_get /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/egress-redirector-ca-injector) \
    || return 1
  "$PYTHON" -c 'import base64, json, sys
print(base64.b64decode(json.loads(sys.argv[1])["webhooks"][0]["clientConfig"]["caBundle"]).decode())' \
    "$config" >"$CAINJ_CA" 2>/dev/null
  grep -q "BEGIN CERTIFICATE" "$CAINJ_CA" || { die "no caBundle written: $config"; return 1; }
}

# cainj_admit NAME NS POD-JSON: the pod as admitted (patched), in
# $WORK/cainject-NAME.pod.json; the review's response in ...response.json.
cainj_admit() {
  local name=$1 ns=$2 pod=$3 base=$WORK/cainject-$1
  printf '%s\n' "$pod" >"$base.in.json"
  "$PYTHON" "$E2E_DIR/cainject.py" review "$ns" "$base.in.json" >"$base.review.json" || return 1
  # The webhook's certificate must verify for its Service name against the
  # caBundle it wrote: what the API server checks.
  in_netns "$NS_NODE" curl -q -sS --max-time 5 --fail --cacert "$CAINJ_CA" \
    --resolve "$CAINJ_SVC:$CAINJ_PORT:$NODE_IP4" -H 'Content-Type: application/json' \
    --data-binary "@$base.review.json" "https://$CAINJ_SVC:$CAINJ_PORT/mutate" \
    >"$base.response.json" || { why "the review of $name failed"; return 1; }
  "$PYTHON" "$E2E_DIR/cainject.py" apply "$base.in.json" "$base.response.json" >"$base.pod.json" \
    || why "applying the patch for $name:" "$(cat "$base.response.json")"
}

# cainj_run NAME CLIENT: run one HTTPS client as the admitted pod NAME's
# container would run (ConfigMap of namespace NS mounted as patched).
cainj_run() {
  local name=$1 client=$2 root=$WORK/cainject-$1.root url
  url=https://origin.test/cainject-$name-$client
  if [[ ! -f $root/run.sh ]]; then
    mkdir -p "$root"
    cainj_api_get "/api/v1/namespaces/$CAINJ_NS/configmaps/egress-redirector-ca-bundle" \
      >"$WORK/cainject-$name.cm.json" || return 1
    "$PYTHON" "$E2E_DIR/cainject.py" kubelet "$WORK/cainject-$name.pod.json" \
      "$WORK/cainject-$name.cm.json" "$root" "$INET_IP4 origin.test" || return 1
  fi
  local cmd
  case $client in
    curl) cmd=(curl -q -sS --max-time 10 "$url") ;;
    urllib) cmd=("$CAINJ_PYTHON" -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$url") ;;
    requests) cmd=("$CAINJ_PYTHON" -c 'import sys, requests
r = requests.get(sys.argv[1], timeout=10); r.raise_for_status(); print(r.text)' "$url") ;;
    node) cmd=(node -e 'require("https").get(process.argv[1], r => { let b = "";
  r.on("data", d => b += d); r.on("end", () => { console.log(b); process.exit(r.statusCode == 200 ? 0 : 1); }); })
  .on("error", e => { console.error(e.message); process.exit(1); })' "$url") ;;
    java) cmd=(java "$WORK/CainjectGet.java" "$url") ;;
  esac
  in_pod pod-a timeout 30 unshare -m --propagation private sh "$root/run.sh" "${cmd[@]}" 2>&1
}

cainj_java_source() {
  cat >"$WORK/CainjectGet.java" <<'EOF2'
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class CainjectGet {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
        HttpResponse<String> r = client.send(
            HttpRequest.newBuilder(URI.create(args[0])).timeout(Duration.ofSeconds(10)).build(),
            HttpResponse.BodyHandlers.ofString());
        System.out.println(r.body());
        System.exit(r.statusCode() == 200 ? 0 : 1);
    }
}
EOF2
}

CAINJ_PLAIN_POD='{"apiVersion":"v1","kind":"Pod","metadata":{"name":"plain","namespace":"cainject"},
  "spec":{"containers":[{"name":"app","image":"app"}]}}'

# 1. A pod with no CA settings at all: every client succeeds through the MITM.
t_cainject_clients() {
  local out client m
  cainject_up || return 1
  cainj_java_source
  cainj_admit plain "$CAINJ_NS" "$CAINJ_PLAIN_POD" || return 1
  out=$(jget "$(cat "$WORK/cainject-plain.pod.json")" 'metadata.annotations.egress-redirector/inject-ca-status')
  expect_contains "$out" "injected" "the status annotation" || return 1
  for client in "${CAINJ_CLIENTS[@]}"; do
    m=$(flow_count)
    out=$(cainj_run plain "$client") || why "$client failed with the injected bundle:" "$out" || return 1
    expect_contains "$out" "origin ok client=$INET_IP4 path=/cainject-plain-$client" \
      "$client: the body (via the proxy)" || return 1
    expect_match "$(flow_since "$m")" "^REQUEST GET https://origin.test/cainject-plain-$client " \
      "$client: MITMed by mitmproxy (flow log)" || return 1
    info "  $client: ok through the MITM"
  done
}

# 2. A pod that opted out (annotation): no mounts, no variables, and every
#    client fails verification as before.
t_cainject_opt_out() {
  local out client
  cainject_up || return 1
  cainj_java_source
  cainj_admit optout "$CAINJ_NS" '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"optout",
    "annotations":{"egress-redirector/inject-ca":"false"}},"spec":{"containers":[{"name":"app"}]}}' \
    || return 1
  out=$(cat "$WORK/cainject-optout.pod.json")
  expect_not_contains "$out" "egress-redirector-ca-bundle" "the opted-out pod's spec" || return 1
  expect_contains "$out" "opted out" "the status annotation" || return 1
  for client in "${CAINJ_CLIENTS[@]}"; do
    if out=$(cainj_run optout "$client"); then
      why "$client succeeded without the bundle (the test would prove nothing):" "$out"
      return 1
    fi
    expect_match "$out" "(certificate|CERTIFICATE|PKIX|issuer)" "$client: a certificate error" || return 1
  done
}

# 3. A pod with its own SSL_CERT_FILE keeps it (and is told so): curl
#    (OpenSSL) uses the pod's file, which does not hold the proxy's CA, and
#    fails; requests, told by REQUESTS_CA_BUNDLE, still succeeds.
t_cainject_own_ssl_cert_file() {
  local out status own=$WORK/ca-other/mitmproxy-ca-cert.pem
  cainject_up || return 1
  [[ -s $own ]] || make_other_ca || return 1
  cainj_admit own "$CAINJ_NS" "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"own\"},
    \"spec\":{\"containers\":[{\"name\":\"app\",\"env\":[{\"name\":\"SSL_CERT_FILE\",\"value\":\"$own\"}]}]}}" \
    || return 1
  out=$(cat "$WORK/cainject-own.pod.json")
  status=$(jget "$out" 'metadata.annotations.egress-redirector/inject-ca-status')
  expect_contains "$status" "app: SSL_CERT_FILE (set by the pod)" "the status annotation" || return 1
  expect_contains "$("$PYTHON" -c 'import json, sys
print([e for e in json.loads(sys.argv[1])["spec"]["containers"][0]["env"] if e["name"] == "SSL_CERT_FILE"])' "$out")" \
    "'value': '$own'" "the pod's SSL_CERT_FILE, and only it" || return 1
  if out=$(cainj_run own curl); then
    why "curl succeeded: the pod's SSL_CERT_FILE was not in force:" "$out"; return 1
  fi
  out=$(cainj_run own requests) || why "requests failed:" "$out" || return 1
  expect_contains "$out" "origin ok" "requests with REQUESTS_CA_BUNDLE" || return 1
}

# 4. A CA rotation (trustedCA gains a second CA) reaches the ConfigMap, for
#    new pods, within seconds.
t_cainject_rotation() {
  local t0 both other_body cm
  cainject_up || return 1
  [[ -n ${OTHER_CA_B64:-} ]] || make_other_ca || return 1
  other_body=$(sed -n '2p' "$WORK/ca-other/mitmproxy-ca-cert.pem")
  t0=$(now_ms)
  # trustedCA: both PEM certificates, one after the other.
  "$PYTHON" -c 'import base64, json, sys
c = json.load(open(sys.argv[1]))
pems = [base64.b64decode(b).decode().strip() + "\n" for b in sys.argv[2:]]
c["trustedCA"] = base64.b64encode("".join(pems).encode()).decode()
json.dump(c, open(sys.argv[1] + ".tmp", "w"))' "$PROXY_CONFIG" "$CA_B64" "$OTHER_CA_B64" \
    && mv "$PROXY_CONFIG.tmp" "$CAINJ_CONFIG" || return 1
  cainj_has_other() {
    cm=$(cainj_api_get "/api/v1/namespaces/$CAINJ_NS/configmaps/egress-redirector-ca-bundle") \
      && [[ $cm == *"$other_body"* ]]
  }
  wait_for 15 "the second CA in the ConfigMap" cainj_has_other \
    || { cp "$PROXY_CONFIG" "$CAINJ_CONFIG"; tail -n 5 "$WORK/cainject-webhook.out"; return 1; }
  info "  the rotated bundle reached the ConfigMap in $(( $(now_ms) - t0 )) ms"
  # Back to the suite's config, so that other tests see the usual bundle.
  cp "$PROXY_CONFIG" "$CAINJ_CONFIG"
  wait_for 15 "the second CA gone again" eval '! cainj_has_other'
}

CAINJECT_TESTS=(cainject_clients:t_cainject_clients cainject_opt_out:t_cainject_opt_out
  cainject_own_ssl_cert_file:t_cainject_own_ssl_cert_file cainject_rotation:t_cainject_rotation)
