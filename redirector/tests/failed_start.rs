//! How the binary reports a failed start: one line, in the log format asked
//! for, so that a log collector reading JSON keeps the reason.
use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_redirector"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running redirector");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MISSING: &str = "/nonexistent/egress-redirector-test/proxy.json";

#[test]
fn text_logs_end_with_an_error_line() {
    let (ok, stderr) = run(&["explain", "--proxy-config", MISSING, "https://a.example/"]);
    assert!(!ok);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(MISSING),
        "{stderr}"
    );
    assert_eq!(last.matches("os error 2").count(), 1, "{last}");
}

#[test]
fn json_logs_end_with_a_json_error_line() {
    let (ok, stderr) = run(&[
        "--log-format",
        "json",
        "explain",
        "--proxy-config",
        MISSING,
        "https://a.example/",
    ]);
    assert!(!ok);
    let last = stderr.lines().last().unwrap_or_default();
    let line: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {stderr}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["fields"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(MISSING) && message.contains("cannot read"),
        "{line}"
    );
}
