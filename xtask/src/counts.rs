//! Test counts, summed over the runs of a stage or of `cargo xtask test`.
//! Shared: imports no subcommand.

/// Passed, failed and skipped tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)?;
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        Ok(())
    }
}

/// Parses a whole line `N passed, M failed[, K skipped]`, optionally after
/// one word with a colon (`e2e: 3 passed, 0 failed`).
pub fn parse_plain_result(line: &str) -> Option<Counts> {
    let mut line = line.trim();
    if let Some((word, rest)) = line.split_once(':')
        && !word.is_empty()
        && !word.contains(char::is_whitespace)
    {
        line = rest.trim();
    }
    let parts: Vec<_> = line.split(", ").collect();
    let count = |part: &str, what: &str| -> Option<u64> {
        let (n, w) = part.trim().split_once(' ')?;
        (w == what).then(|| n.parse().ok()).flatten()
    };
    match parts.as_slice() {
        [p, f] => Some(Counts {
            passed: count(p, "passed")?,
            failed: count(f, "failed")?,
            skipped: 0,
        }),
        [p, f, s] => Some(Counts {
            passed: count(p, "passed")?,
            failed: count(f, "failed")?,
            skipped: count(s, "skipped")?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals() {
        let mut t = Counts::default();
        t.add(Counts {
            passed: 2,
            failed: 1,
            skipped: 0,
        });
        assert_eq!(t.to_string(), "2 passed, 1 failed");
    }
}
