#!/usr/bin/env bash
# Demo: a pod with no proxy settings fetches https://origin.test/ and the
# request goes through mitmproxy, transparently, thanks to the redirector.
#
#   sudo REDIRECTOR_BIN=target/release/redirector MITMDUMP=/path/to/mitmdump \
#       tests/e2e/demo.sh
#
# Builds the same miniature node as run.sh (see lib.sh), shows what
# happened, and tears everything down again.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ -t 1 ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
say() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
indent() { sed 's/^/   /'; }

on_exit() {
  local rc=$?
  trap - EXIT
  info "cleaning up"
  node_down_if_ours
  if ((rc != 0)); then
    echo "demo FAILED (exit $rc); logs in $WORK" >&2
  fi
  exit "$rc"
}

main() {
  trap on_exit EXIT
  require_root
  require_prereqs

  say "Building the node: netns rde-node, rde-inet (origin + mitmproxy), rde-pod-a, rde-pod-b"
  node_up

  say "Starting the redirector daemon (hooks on $CG_ROOT)"
  if ! start_daemon; then
    tail -n 30 "$DAEMON_LOG" | indent
    return 1
  fi

  local m mitm_lines out body rc=0
  m=$(flow_count)
  mitm_lines=$(wc -l <"$WORK/mitmdump.out")
  say "pod-a (no proxy variables) runs: curl https://origin.test/demo"
  out=$(pod_curl pod-a -v --cacert "$CA_CERT" --resolve "origin.test:443:$INET_IP4" \
    -o "$WORK/demo-body.txt" https://origin.test/demo 2>&1) || rc=$?
  body=$(cat "$WORK/demo-body.txt" 2>/dev/null || true)

  say "Response body (client = the address the origin saw)"
  printf '%s\n' "${body:-<none>}" | indent

  say "Certificate the pod was shown"
  grep -E '^\*  (subject|issuer):' <<<"$out" | sed 's/^\*  //' | indent || echo "   <not found>"

  say "mitmproxy's flow log for this request"
  flow_since "$m" | indent

  say "mitmdump's own output for it"
  tail -n "+$((mitm_lines + 1))" "$WORK/mitmdump.out" | indent

  say "Kernel counters (redirector status)"
  redirector_status 2>&1 | indent || true

  if ((rc != 0)); then
    say "curl failed (exit $rc); its output:"
    printf '%s\n' "$out" | tail -n 20 | indent
    return 1
  fi
  # The story, each step checked: the name the pod asked for, the CONNECT
  # the redirector sent for it, the proxy's certificate, the origin's view.
  local flow issuer
  flow=$(flow_since "$m")
  issuer=$(grep -E '^\*  issuer:' <<<"$out" || true)
  if [[ $flow != *"CONNECT origin.test:443 "* ]]; then
    say "UNEXPECTED: mitmproxy got no CONNECT origin.test:443"
    return 1
  fi
  if [[ $issuer != *"egress-redirector MITM CA"* ]]; then
    say "UNEXPECTED: the certificate was not re-signed by the test CA: ${issuer:-none}"
    return 1
  fi
  if [[ $body != *"client=$INET_IP4 "* ]]; then
    say "UNEXPECTED: the origin did not see the proxy as the client"
    return 1
  fi
  say "OK: pod-a ($POD_A_IP4, no proxy settings) asked for origin.test:443; the redirector sent
   CONNECT origin.test:443 to mitmproxy ($INET_IP4:$PROXY_PORT), which re-signed the site with
   the test CA (the issuer above) and fetched it: the origin saw the proxy, not the pod"
}

main "$@"
