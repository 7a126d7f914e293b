# shellcheck shell=bash
# Upgrades, restarts and uninstall without a dropped connection (issue 14),
# and the supervision of the daemon's long-lived tasks. Sourced by run.sh
# (tests upgrade_*, supervised_*).
#
# Each upgrade test runs upgrade.py's load in pod-a across one event: a
# steady stream of new connections (HTTPS through mitmproxy, plain HTTP,
# raw TCP), each checked, and three long transfers (a plain-HTTP and an
# HTTPS download, a TCP echo; 16 MiB each at 2 MiB/s, so about 8 s),
# byte-exact and checksummed, started before the event and ending after
# it. The figures of each go to $UPG_FIGURES and the log.
#
#   upgrade_rolling          a second daemon (a copy of the binary, in a
#                            cgroup of its own, as a surge pod is) starts
#                            beside the running one and takes over; then,
#                            as the DaemonSet controller does once the new
#                            pod is ready, the old one gets SIGTERM and
#                            drains
#   upgrade_restart_in_place SIGTERM to the running daemon (it keeps
#                            accepting, not ready), then a new process
#   upgrade_uninstall        `redirector detach` while the daemon runs,
#                            then SIGTERM: pods go direct, nothing refused
#   supervised_task_exit     a daemon whose Kubernetes watcher panics
#                            (REDIRECTOR_DEBUG_FAIL_TASK) exits non-zero,
#                            the reason logged, the hooks left attached

UPG_FIGURES=$WORK/upgrade-figures.txt
UPG_PID=""       # the instance started by upg_start
UPG_LOAD_PID=""
UPG_CONTROL=$WORK/upgrade-control
UPG_LONG_BYTES=$((16 << 20))
# New connections a second, and the threads making them (UPG_RATE and
# UPG_WORKERS from the environment, for heavier runs by hand).
UPG_RATE=${UPG_RATE:-24}
UPG_WORKERS=${UPG_WORKERS:-6}

# upg_start NAME CGROUP [RUN-FLAGS...]: a daemon beside the running one,
# logging to $WORK/NAME.log; waits for its "ready". UPG_BIN (default
# REDIRECTOR_BIN) and UPG_ENV (one VAR=VALUE) change what runs.
upg_start() {
  local name=$1 cg=$2 args CMD_ARRAY; shift 2
  mkdir -p "$cg"
  mapfile -t args < <(daemon_run_args "$PROXY_CONFIG")
  cg_ns_cmd "$cg" "$NS_NODE" env RUST_LOG=info NO_COLOR=1 ${UPG_ENV:+"$UPG_ENV"} \
    "${UPG_BIN:-$REDIRECTOR_BIN}" "${args[@]}" "$@"
  : >"$WORK/$name.log"
  "${CMD_ARRAY[@]}" >"$WORK/$name.log" 2>&1 9>&- &
  UPG_PID=$!
  BG_PIDS+=("$UPG_PID")
  wait_for 30 "$name ready" grep -qw ready "$WORK/$name.log" \
    || why "$name did not start:" "$(tail -n 5 "$WORK/$name.log")" || return 1
}

# upg_running: the daemon to act on, started if none runs.
upg_running() {
  if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then return 0; fi
  use_daemon "$PROXY_CONFIG" || why "daemon did not start:" "$(tail -n 5 "$DAEMON_LOG")"
}

# upg_adopt PID NAME: the instance upg_start started is the daemon now (the
# next use_daemon replaces it with a standard one).
UPG_ADOPTED=""
upg_adopt() {
  DAEMON_PID=$1
  DAEMON_CONFIG="(upgrade test: $2)"
  UPG_ADOPTED=$2
}

# The running daemon's log.
upg_log() {
  if [[ $DAEMON_CONFIG == "(upgrade test: $UPG_ADOPTED)" ]]; then echo "$WORK/$UPG_ADOPTED.log"
  else echo "$DAEMON_LOG"; fi
}

upg_load_start() { # upg_load_start NAME EXPECT
  # An earlier test's load, left running by its failure.
  if [[ -n $UPG_LOAD_PID ]] && kill -0 "$UPG_LOAD_PID" 2>/dev/null; then kill_pids "$UPG_LOAD_PID"; fi
  rm -rf "$UPG_CONTROL"
  mkdir -p "$UPG_CONTROL"
  pod_bg pod-a "$1" "$PYTHON" "$E2E_DIR/upgrade.py" load --inet "$INET_IP4" --pod "$POD_A_IP4" \
    --ca "$CA_CERT" --origin-ca "$WORK/origin-cert.pem" --control "$UPG_CONTROL" --out "$WORK/$1.json" --expect "$2" \
    --long-bytes "$UPG_LONG_BYTES" --rate "$UPG_RATE" --workers "$UPG_WORKERS"
  UPG_LOAD_PID=$POD_BG_PID
  wait_for 10 "the load started" test -e "$UPG_CONTROL/started" \
    || why "upgrade.py did not start:" "$(tail -n 5 "$WORK/$1.out")" || return 1
}

UPG_JSON=""
upg_load_stop() { # upg_load_stop NAME: waits for the long transfers; the result in UPG_JSON
  touch "$UPG_CONTROL/stop"
  wait_for 120 "the load's result" test -s "$WORK/$1.json" \
    || why "no result from upgrade.py:" "$(tail -n 5 "$WORK/$1.out")" || return 1
  wait "$UPG_LOAD_PID" 2>/dev/null
  UPG_JSON=$(cat "$WORK/$1.json")
}

# upg_report WHAT JSON: one line of figures, logged and kept for docs/deploy.md.
upg_report() {
  local line
  line=$(printf '%s: %s connections attempted, %s completed, %s failed (%s refused); long transfers %s of %s intact, %s bytes verified' \
    "$1" "$(jget "$2" attempted)" "$(jget "$2" completed)" "$(jget "$2" failed)" "$(jget "$2" refused)" \
    "$(jget "$2" long_ok)" "$(jget "$2" long | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')" \
    "$(jget "$2" bytes_verified)")
  info "  $line"
  echo "$line" >>"$UPG_FIGURES"
}

# upg_expect_clean WHAT JSON: nothing failed, every long transfer intact.
upg_expect_clean() {
  local json=$2 n
  (( $(jget "$json" attempted) > 100 )) || why "$1: only $(jget "$json" attempted) connections: too few to mean much" || return 1
  [[ $(jget "$json" failed) == 0 ]] || why "$1: $(jget "$json" failed) failed:" "$(jget "$json" failures)" "$(jget "$json" long)" || return 1
  n=$(jget "$json" long | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)))')
  ((n == 3)) && [[ $(jget "$json" long_ok) == 3 ]] \
    || why "$1: long transfers:" "$(jget "$json" long)" || return 1
  [[ $(jget "$json" bytes_verified) == $((3 * UPG_LONG_BYTES)) ]] \
    || why "$1: $(jget "$json" bytes_verified) bytes verified, expected $((3 * UPG_LONG_BYTES))" || return 1
}

# upg_wait_exit PID SECS: UPG_RC, the exit status of a daemon this shell
# started, once it has exited (124 if it did not within SECS).
UPG_RC=""
upg_wait_exit() {
  local pid=$1 secs=$2
  UPG_RC=0
  wait_for "$secs" "pid $pid exits" eval "! kill -0 $pid" || { UPG_RC=124; return 0; }
  wait "$pid" 2>/dev/null || UPG_RC=$?
}

# Nothing in either log was refused for want of an original destination.
upg_expect_no_lost_destination() {
  local f
  for f in "$@"; do
    expect_count "$(cat "$f")" "no original destination" 0 "$(basename "$f")" || return 1
  done
}

# upg_only_holder NEW OLD: the listeners on :15001 are held by NEW, not OLD.
upg_only_holder() {
  local holders
  holders=$(in_netns "$NS_NODE" ss -Hltnp "sport = :$LISTEN_PORT")
  [[ $holders == *"pid=$1,"* && $holders != *"pid=$2,"* ]]
}

# (a) A rolling upgrade: the new instance starts beside the old one, takes
#     its listening sockets and its hooks over; the old one, told by
#     SIGTERM (as the DaemonSet controller does once the new pod is
#     ready), drains and exits.
t_upgrade_rolling() {
  local old old_log json rc t0 t_ready t_term t_exit
  upg_running || return 1
  old=$DAEMON_PID
  old_log=$(upg_log)
  cp "$REDIRECTOR_BIN" "$WORK/redirector-next"  # the "new version"
  upg_load_start upgrade-rolling proxy || return 1
  sleep 2
  t0=$(now_ms)
  UPG_BIN=$WORK/redirector-next upg_start upgrade-new "$CG_ROOT/system/redirector-next" \
    || { upg_load_stop upgrade-rolling; return 1; }
  t_ready=$(now_ms)
  expect_contains "$(cat "$WORK/upgrade-new.log")" "took over from the running instance" "new instance's log" || return 1
  expect_contains "$(cat "$WORK/upgrade-new.log")" "adopting the shared map" "new instance's log" || return 1
  wait_for 5 "the old instance hands over" grep -q "handed over" "$old_log" || return 1
  kill -0 "$old" 2>/dev/null || why "the old instance exited before SIGTERM" || return 1
  # Only the new instance holds the listening sockets now (so that, killed,
  # it would leave nobody listening: fail closed), and still serves them.
  wait_for 2 "the old instance closes its copies of the listeners" upg_only_holder "$UPG_PID" "$old" \
    || why "processes holding :$LISTEN_PORT:" "$(in_netns "$NS_NODE" ss -Hltnp "sport = :$LISTEN_PORT")" || return 1
  sleep 1
  t_term=$(now_ms)
  kill -TERM "$old"
  upg_wait_exit "$old" 40; rc=$UPG_RC
  t_exit=$(now_ms)
  upg_adopt "$UPG_PID" upgrade-new
  sleep 2
  upg_load_stop upgrade-rolling || return 1
  json=$UPG_JSON
  upg_report "rolling upgrade" "$json"
  info "  new instance ready $((t_ready - t0)) ms after its start; old one exited $((t_exit - t_term)) ms after SIGTERM (status $rc)"
  ((rc == 0)) || why "the old instance exited with status $rc:" "$(tail -n 5 "$old_log")" || return 1
  expect_contains "$(cat "$old_log")" "drained: no connection in flight" "old instance's log" || return 1
  upg_expect_clean "rolling upgrade" "$json" || return 1
  upg_expect_no_lost_destination "$old_log" "$WORK/upgrade-new.log" || return 1
}

# (b) A restart in place: SIGTERM, and a moment later a new process of the
#     same version. The old one keeps accepting (not ready) until the new
#     one takes over, then drains.
t_upgrade_restart_in_place() {
  local old old_log json rc out t_term t_exit
  upg_running || return 1
  old=$DAEMON_PID
  old_log=$(upg_log)
  upg_load_start upgrade-restart proxy || return 1
  sleep 2
  t_term=$(now_ms)
  kill -TERM "$old"
  sleep 1.5
  out=$(in_netns "$NS_NODE" curl -q -s --max-time 5 -w ' %{http_code}' "http://$METRICS_ADDR/readyz")
  [[ $out == "not ready: draining"*" 503" ]] || why "/readyz after SIGTERM: $out" || return 1
  kill -0 "$old" 2>/dev/null || why "the old instance exited before a new one took over" || return 1
  upg_start restart-new "$CG_ROOT/system/redirector" || { upg_load_stop upgrade-restart; return 1; }
  upg_wait_exit "$old" 40; rc=$UPG_RC
  t_exit=$(now_ms)
  upg_adopt "$UPG_PID" restart-new
  sleep 2
  upg_load_stop upgrade-restart || return 1
  json=$UPG_JSON
  upg_report "restart in place" "$json"
  info "  the old process exited $((t_exit - t_term)) ms after SIGTERM (status $rc)"
  ((rc == 0)) || why "the old process exited with status $rc:" "$(tail -n 5 "$old_log")" || return 1
  expect_contains "$(cat "$old_log")" "still accepting until a new instance takes over" "old process's log" || return 1
  upg_expect_clean "restart in place" "$json" || return 1
  upg_expect_no_lost_destination "$old_log" "$WORK/restart-new.log" || return 1
}

# (c) Uninstall, in the documented order: detach while the daemon runs
#     (pods go direct at once), then stop it (it drains what it carries).
t_upgrade_uninstall() {
  local pid log json rc out t_term t_exit
  upg_running || return 1
  pid=$DAEMON_PID
  log=$(upg_log)
  upg_load_start upgrade-uninstall any || return 1
  sleep 2
  out=$(timeout 20 "$REDIRECTOR_BIN" detach --bpffs "$PIN_DIR" 2>&1) || why "detach failed:" "$out" || return 1
  sleep 1
  t_term=$(now_ms)
  kill -TERM "$pid"
  upg_wait_exit "$pid" 40; rc=$UPG_RC
  t_exit=$(now_ms)
  DAEMON_PID=""
  DAEMON_CONFIG=""
  sleep 2
  upg_load_stop upgrade-uninstall || return 1
  json=$UPG_JSON
  upg_report "uninstall" "$json"
  info "  routes: $(jget "$json" routes); the daemon exited $((t_exit - t_term)) ms after SIGTERM (status $rc)"
  ((rc == 0)) || why "the daemon exited with status $rc:" "$(tail -n 5 "$log")" || return 1
  [[ $(jget "$json" refused) == 0 ]] || why "refused connections:" "$(jget "$json" failures)" || return 1
  upg_expect_clean "uninstall" "$json" || return 1
  (( $(jget "$json" routes.proxy) > 0 && $(jget "$json" routes.direct) > 0 )) \
    || why "expected answers both through the proxy (before) and direct (after): $(jget "$json" routes)" || return 1
  expect_contains "$(cat "$log")" "the hooks are detached" "the daemon's log" || return 1
  ! pins_present || why "pins left:" "$(find "$PIN_DIR" -mindepth 1)" || return 1
}

# (d) A supervised task that dies takes the daemon down, named: the
#     Kubernetes watcher panics (test setting), the daemon exits non-zero
#     within a second and says why; the hooks stay attached, so pods'
#     connects are refused (fail closed) until it is restarted.
t_supervised_task_exit() {
  local rc out t0 ms
  kube_up || return 1
  t0=$(now_ms)
  UPG_ENV="REDIRECTOR_DEBUG_FAIL_TASK=kubernetes watcher=3" \
    upg_start supervised "$CG_ROOT/system/redirector" --kube --node-name "$KUBE_NODE" || return 1
  # As the DaemonSet controller would: the instance it replaced goes.
  kill -TERM "$DAEMON_PID"
  upg_wait_exit "$DAEMON_PID" 20; rc=$UPG_RC
  ((rc == 0)) || why "the replaced instance exited with status $rc" || return 1
  DAEMON_PID=""
  upg_wait_exit "$UPG_PID" 20; rc=$UPG_RC
  ms=$(( $(now_ms) - t0 ))
  info "  exit status $rc, $ms ms after the start: $(grep -m1 'task panicked' "$WORK/supervised.log" | sed 's/.*ERROR //')"
  ((rc != 0 && rc != 124)) || why "exit status $rc, expected a failure:" "$(tail -n 5 "$WORK/supervised.log")" || return 1
  expect_match "$(cat "$WORK/supervised.log")" "the kubernetes watcher task panicked: made to panic.*not ready" \
    "the reason, logged" || return 1
  expect_contains "$(cat "$WORK/supervised.log")" "exiting so that it is restarted" "the exit, logged" || return 1
  out=$(pod_curl pod-a --max-time 5 "http://$INET_IP4/after-task-exit" 2>&1)
  rc=$?
  ((rc == 7)) || why "curl exit $rc after the daemon's exit, expected 7 (refused: fail closed):" "$out" || return 1
  use_daemon "$PROXY_CONFIG" || why "the standard daemon did not start again" || return 1
}

UPGRADE_TESTS=(upgrade_rolling:t_upgrade_rolling upgrade_restart_in_place:t_upgrade_restart_in_place
  supervised_task_exit:t_supervised_task_exit upgrade_uninstall:t_upgrade_uninstall)
