//! `audit`: one JSON line per connection (off by default).
//!
//! ```json
//! "audit": { "output": "/var/log/egress-redirector/audit.log",
//!            "maxFileBytes": 52428800, "maxFiles": 3, "maxLinesPerSecond": 1000 }
//! ```
use std::path::PathBuf;

use serde::Deserialize;

/// The key as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    output: String,
    #[serde(rename = "maxFileBytes")]
    max_file_bytes: Option<u64>,
    #[serde(rename = "maxFiles")]
    max_files: Option<u32>,
    #[serde(rename = "maxLinesPerSecond")]
    max_lines_per_second: Option<u32>,
}

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutput {
    Stdout,
    /// A file, rotated by size: `FILE.1` ... `FILE.<maxFiles>`.
    File(PathBuf),
}

/// The validated `audit` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub output: AuditOutput,
    /// A file is rotated when a line would take it past this.
    pub max_file_bytes: u64,
    /// Rotated files kept besides the current one.
    pub max_files: u32,
    /// Lines beyond this in one second are dropped (and counted).
    pub max_lines_per_second: u32,
}

pub const DEFAULT_MAX_FILE_BYTES: u64 = 50 * 1024 * 1024;
pub const DEFAULT_MAX_FILES: u32 = 3;
pub const DEFAULT_MAX_LINES_PER_SECOND: u32 = 1000;

impl RawAudit {
    pub(super) fn validate(self) -> Result<Audit, String> {
        let output = match self.output.trim() {
            "stdout" | "-" => AuditOutput::Stdout,
            "" => return Err("output: empty (\"stdout\" or an absolute file path)".into()),
            path if path.starts_with('/') => AuditOutput::File(PathBuf::from(path)),
            other => {
                return Err(format!(
                    "output: `{other}` is neither \"stdout\" nor an absolute file path"
                ));
            }
        };
        let max_file_bytes = self.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES);
        if !(64 * 1024..=10 * 1024 * 1024 * 1024).contains(&max_file_bytes) {
            return Err(format!(
                "maxFileBytes: {max_file_bytes} is outside 65536 (64 KiB) to 10737418240 (10 GiB)"
            ));
        }
        let max_files = self.max_files.unwrap_or(DEFAULT_MAX_FILES);
        if !(1..=100).contains(&max_files) {
            return Err(format!("maxFiles: {max_files} is outside 1 to 100"));
        }
        let max_lines_per_second = self
            .max_lines_per_second
            .unwrap_or(DEFAULT_MAX_LINES_PER_SECOND);
        if !(1..=1_000_000).contains(&max_lines_per_second) {
            return Err(format!(
                "maxLinesPerSecond: {max_lines_per_second} is outside 1 to 1000000"
            ));
        }
        Ok(Audit {
            output,
            max_file_bytes,
            max_files,
            max_lines_per_second,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Audit, String> {
        serde_json::from_str::<RawAudit>(text)
            .map_err(|e| e.to_string())?
            .validate()
    }

    #[test]
    fn outputs_and_bounds() {
        let a = parse(r#"{"output": "stdout"}"#).unwrap();
        assert_eq!(a.output, AuditOutput::Stdout);
        assert_eq!(
            (a.max_file_bytes, a.max_files, a.max_lines_per_second),
            (DEFAULT_MAX_FILE_BYTES, 3, 1000)
        );
        let a = parse(r#"{"output": "/var/log/a.log", "maxFiles": 5}"#).unwrap();
        assert_eq!(a.output, AuditOutput::File("/var/log/a.log".into()));
        for (text, needle) in [
            (r#"{"output": "audit.log"}"#, "neither"),
            (r#"{"output": ""}"#, "empty"),
            (
                r#"{"output": "/a", "maxFileBytes": 10}"#,
                "maxFileBytes: 10",
            ),
            (r#"{"output": "/a", "maxFiles": 0}"#, "maxFiles: 0"),
            (
                r#"{"output": "/a", "maxLinesPerSecond": 0}"#,
                "maxLinesPerSecond",
            ),
            (r#"{}"#, "missing field `output`"),
            (r#"{"output": "/a", "maxfiles": 1}"#, "unknown field"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: no {needle:?} in {err}");
        }
    }
}
