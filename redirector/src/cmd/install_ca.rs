//! `redirector install-ca`: the config's `trustedCA` certificates into a
//! host's trust store, so that node processes (containerd pulling images,
//! kubelet) trust a TLS-intercepting proxy as pods are told to.
//!
//! The host is seen under `--host-root` (`/host` in the DaemonSet's init
//! container). Two layouts are known:
//! - Debian/Ubuntu: `usr/local/share/ca-certificates/egress-redirector.crt`,
//!   then `update-ca-certificates`;
//! - RHEL family (also Azure Linux, Fedora, Amazon Linux):
//!   `etc/pki/ca-trust/source/anchors/egress-redirector.pem`, then
//!   `update-ca-trust extract`.
//!
//! One file per certificate (`egress-redirector.crt`,
//! `egress-redirector-2.crt`, ...), because OpenSSL's rehash links only the
//! first certificate of a file. The update tool runs chrooted into the host
//! root (the process chroots itself, so the image needs no `chroot`
//! binary), and only when a file changed: a rerun with the same
//! certificates touches nothing. The tool is looked up inside the host root;
//! when it is missing (or `--no-update`), the files are written and a
//! warning says the bundle was not rebuilt. When the tool fails, the files
//! just written are removed again, so that the next run retries it.
use std::{
    fs,
    io::Write,
    os::unix::{fs::OpenOptionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::ca::to_pem;

/// Base name of the files we own in the trust store's source directory.
const FILE_STEM: &str = "egress-redirector";
/// Where the update tool may live inside the host root.
const TOOL_DIRS: [&str; 4] = ["usr/sbin", "usr/bin", "sbin", "bin"];
/// PATH for the update tool, which is a shell script calling others.
const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host's trust-store layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Debian,
    Rhel,
}

impl Layout {
    /// Which layout the host under `root` has: the distribution's release
    /// file first, else whichever source directory exists.
    pub fn detect(root: &Path) -> Result<Self> {
        if root.join("etc/debian_version").exists() {
            return Ok(Self::Debian);
        }
        if root.join("etc/redhat-release").exists() || root.join("etc/system-release").exists() {
            return Ok(Self::Rhel);
        }
        for layout in [Self::Debian, Self::Rhel] {
            if root.join(layout.source_dir()).is_dir() {
                return Ok(layout);
            }
        }
        bail!(
            "{}: no known trust store (neither etc/debian_version nor etc/redhat-release, \
             nor usr/local/share/ca-certificates or etc/pki/ca-trust/source/anchors)",
            root.display()
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Debian => "debian",
            Self::Rhel => "rhel",
        }
    }

    /// The directory of locally added CAs, relative to the host root.
    fn source_dir(self) -> &'static str {
        match self {
            Self::Debian => "usr/local/share/ca-certificates",
            Self::Rhel => "etc/pki/ca-trust/source/anchors",
        }
    }

    /// `update-ca-certificates` only picks up `*.crt`.
    fn extension(self) -> &'static str {
        match self {
            Self::Debian => "crt",
            Self::Rhel => "pem",
        }
    }

    /// The tool that rebuilds the bundles, and its arguments.
    fn update_command(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Debian => ("update-ca-certificates", &[]),
            Self::Rhel => ("update-ca-trust", &["extract"]),
        }
    }

    /// Our file for the `index`-th certificate (0-based).
    fn file_name(self, index: usize) -> String {
        match index {
            0 => format!("{FILE_STEM}.{}", self.extension()),
            n => format!("{FILE_STEM}-{}.{}", n + 1, self.extension()),
        }
    }

    /// Whether `name` is one of our files.
    fn owns(self, name: &str) -> bool {
        let Some(stem) = name
            .strip_suffix(self.extension())
            .and_then(|s| s.strip_suffix('.'))
        else {
            return false;
        };
        stem == FILE_STEM
            || stem
                .strip_prefix(FILE_STEM)
                .and_then(|s| s.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// Whether to run the host's update tool after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Run it, chrooted into the host root, when it is there.
    Run,
    /// Only write the files (`--no-update`).
    Skip,
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub layout: Layout,
    /// The source directory, under the host root.
    pub dir: PathBuf,
    /// Files written (new or changed content).
    pub written: Vec<PathBuf>,
    /// Files of ours removed (certificates no longer in the config).
    pub removed: Vec<PathBuf>,
    /// Files already holding the right certificate.
    pub unchanged: Vec<PathBuf>,
    /// The update command as run, e.g. `update-ca-certificates`, or `None`.
    pub updated: Option<String>,
    /// Why the update tool did not run although something changed.
    pub update_skipped: Option<String>,
}

impl Report {
    pub fn changed(&self) -> bool {
        !self.written.is_empty() || !self.removed.is_empty()
    }

    /// `key: value` lines, as the CLI prints them.
    pub fn lines(&self) -> Vec<String> {
        let paths = |v: &[PathBuf]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let mut out = vec![
            format!("layout: {}", self.layout.name()),
            format!("written: {}", paths(&self.written)),
            format!("unchanged: {}", paths(&self.unchanged)),
            format!("removed: {}", paths(&self.removed)),
        ];
        out.push(match (&self.updated, &self.update_skipped) {
            (Some(cmd), _) => format!("update: ran {cmd}"),
            (None, Some(why)) => format!("update: skipped ({why})"),
            (None, None) => "update: not needed (nothing changed)".to_owned(),
        });
        out
    }
}

/// Runs the update tool: `tool` is its path inside `root`.
pub type Runner<'a> = &'a mut dyn FnMut(&Path, &Path, &[&str]) -> Result<()>;

/// Makes the trust store under `root` hold exactly `certs` (DER) as our
/// files, then runs the update tool if anything changed.
pub fn install(
    root: &Path,
    certs: &[rustls_pki_types::CertificateDer<'_>],
    update: Update,
    run: Runner<'_>,
) -> Result<Report> {
    let layout = Layout::detect(root)?;
    let dir = root.join(layout.source_dir());
    let mut report = Report {
        layout,
        dir: dir.clone(),
        written: Vec::new(),
        removed: Vec::new(),
        unchanged: Vec::new(),
        updated: None,
        update_skipped: None,
    };
    if !certs.is_empty() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut wanted = Vec::new();
    for (i, cert) in certs.iter().enumerate() {
        let path = dir.join(layout.file_name(i));
        let pem = to_pem(cert);
        if fs::read(&path).is_ok_and(|old| old == pem.as_bytes()) {
            report.unchanged.push(path.clone());
        } else {
            write_atomically(&path, pem.as_bytes())?;
            report.written.push(path.clone());
        }
        wanted.push(path);
    }
    match fs::read_dir(&dir) {
        Ok(entries) => {
            let mut stale = Vec::new();
            for entry in entries {
                let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
                let path = entry.path();
                let ours = entry.file_name().to_str().is_some_and(|n| layout.owns(n));
                if ours && !wanted.contains(&path) {
                    stale.push(path);
                }
            }
            stale.sort();
            for path in stale {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                report.removed.push(path);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    if !report.changed() {
        return Ok(report);
    }
    let (tool, args) = layout.update_command();
    if update == Update::Skip {
        report.update_skipped = Some("--no-update".to_owned());
        return Ok(report);
    }
    let Some(tool_path) = find_tool(root, tool) else {
        report.update_skipped = Some(format!(
            "{tool} not found under {}; install the distribution's ca-certificates package \
             or run it on the host",
            root.display()
        ));
        return Ok(report);
    };
    if let Err(e) = run(root, &tool_path, args) {
        // Take back what we wrote, so that the next run sees a change and
        // runs the tool again instead of finding the files "unchanged".
        for path in &report.written {
            let _ = fs::remove_file(path);
        }
        return Err(e).with_context(|| format!("running {tool} in {}", root.display()));
    }
    report.updated = Some(
        std::iter::once(tool)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" "),
    );
    Ok(report)
}

/// The tool's path as seen inside `root` (e.g. `/usr/sbin/update-ca-trust`).
fn find_tool(root: &Path, tool: &str) -> Option<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new("/").join(dir).join(tool))
        .find(|inside| {
            root.join(inside.strip_prefix("/").unwrap_or(inside))
                .is_file()
        })
}

/// Runs `tool` chrooted into `root`, as `chroot ROOT TOOL ARGS` would
/// (needs `CAP_SYS_CHROOT`).
pub fn run_chrooted(root: &Path, tool: &Path, args: &[&str]) -> Result<()> {
    let root = root.to_path_buf();
    let mut cmd = Command::new(tool);
    cmd.args(args).env_clear().env("PATH", TOOL_PATH);
    // SAFETY: chroot(2) and chdir(2) are async-signal-safe system calls and
    // touch no memory shared with the parent; nothing here allocates.
    unsafe {
        cmd.pre_exec(move || {
            std::os::unix::fs::chroot(&root)?;
            std::env::set_current_dir("/")
        });
    }
    let output = cmd
        .output()
        .with_context(|| format!("starting {}", tool.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            tool.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so the update tool never
/// reads half a certificate.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The CLI command.
pub fn run(args: &crate::cli::InstallCaArgs) -> Result<()> {
    let config = crate::config::ProxyConfig::load(&args.proxy_config)?;
    let update = if args.no_update {
        Update::Skip
    } else {
        Update::Run
    };
    let report = install(
        &args.host_root,
        &config.trusted_ca,
        update,
        &mut run_chrooted,
    )?;
    if let Some(why) = &report.update_skipped {
        tracing::warn!(
            "certificates written but the trust bundle was not rebuilt: {why}; \
             node processes do not trust them until the update tool runs"
        );
    }
    for line in report.lines() {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::GeneratedCa;
    use rustls_pki_types::{CertificateDer, pem::PemObject};

    fn cert() -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(GeneratedCa::generate().unwrap().cert_pem.as_bytes())
            .unwrap()
    }

    /// A fake host root of `layout`, with its update tool present.
    fn host(layout: Layout, tool: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let release = match layout {
            Layout::Debian => "etc/debian_version",
            Layout::Rhel => "etc/redhat-release",
        };
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join(release), "x\n").unwrap();
        fs::create_dir_all(root.path().join(layout.source_dir())).unwrap();
        if tool {
            fs::create_dir_all(root.path().join("usr/sbin")).unwrap();
            fs::write(
                root.path().join("usr/sbin").join(layout.update_command().0),
                "#!/bin/sh\n",
            )
            .unwrap();
        }
        root
    }

    /// Runs `install`, recording the update commands instead of running them.
    fn install_recording(
        root: &Path,
        certs: &[CertificateDer<'_>],
        update: Update,
    ) -> (Report, Vec<String>) {
        let mut calls = Vec::new();
        let mut record = |r: &Path, tool: &Path, args: &[&str]| {
            assert_eq!(r, root);
            calls.push(format!("{} {}", tool.display(), args.join(" ")));
            Ok(())
        };
        let report = install(root, certs, update, &mut record).unwrap();
        (report, calls)
    }

    #[test]
    fn debian_layout_installs_once_and_runs_the_tool_once() {
        let root = host(Layout::Debian, true);
        let c = cert();
        let (report, calls) = install_recording(root.path(), std::slice::from_ref(&c), Update::Run);
        let path = root
            .path()
            .join("usr/local/share/ca-certificates/egress-redirector.crt");
        assert_eq!(report.layout, Layout::Debian);
        assert_eq!(report.written, vec![path.clone()]);
        assert_eq!(calls, vec!["/usr/sbin/update-ca-certificates "]);
        let pem = fs::read(&path).unwrap();
        assert_eq!(CertificateDer::from_pem_slice(&pem).unwrap(), c);
        // Idempotent: same content, no rewrite, no tool run.
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let (again, calls) = install_recording(root.path(), &[c], Update::Run);
        assert!(!again.changed());
        assert_eq!(again.unchanged, vec![path.clone()]);
        assert!(calls.is_empty());
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert!(
            again
                .lines()
                .contains(&"update: not needed (nothing changed)".into())
        );
    }

    #[test]
    fn rhel_layout_with_two_certificates_and_removal() {
        let root = host(Layout::Rhel, true);
        let anchors = root.path().join("etc/pki/ca-trust/source/anchors");
        let (report, calls) = install_recording(root.path(), &[cert(), cert()], Update::Run);
        assert_eq!(report.layout, Layout::Rhel);
        assert_eq!(
            report.written,
            vec![
                anchors.join("egress-redirector.pem"),
                anchors.join("egress-redirector-2.pem")
            ]
        );
        assert_eq!(calls, vec!["/usr/sbin/update-ca-trust extract"]);
        assert_eq!(report.updated.as_deref(), Some("update-ca-trust extract"));
        // Someone else's anchor is never touched.
        fs::write(anchors.join("corp.pem"), "x").unwrap();
        // One certificate left: the second file goes.
        let c = cert();
        let (report, calls) = install_recording(root.path(), &[c], Update::Run);
        assert_eq!(report.written, vec![anchors.join("egress-redirector.pem")]);
        assert_eq!(
            report.removed,
            vec![anchors.join("egress-redirector-2.pem")]
        );
        assert_eq!(calls.len(), 1);
        // None left: ours removed, the tool runs, corp.pem stays.
        let (report, calls) = install_recording(root.path(), &[], Update::Run);
        assert_eq!(report.removed, vec![anchors.join("egress-redirector.pem")]);
        assert_eq!(calls.len(), 1);
        assert!(anchors.join("corp.pem").exists());
        // Nothing installed and nothing wanted: nothing to do.
        let (report, calls) = install_recording(root.path(), &[], Update::Run);
        assert!(!report.changed() && calls.is_empty());
    }

    #[test]
    fn a_missing_tool_or_no_update_writes_the_files_and_says_so() {
        let root = host(Layout::Debian, false);
        let (report, calls) = install_recording(root.path(), &[cert()], Update::Run);
        assert_eq!(report.written.len(), 1);
        assert!(calls.is_empty());
        let why = report.update_skipped.as_deref().unwrap();
        assert!(why.contains("update-ca-certificates not found"), "{why}");

        let root = host(Layout::Rhel, true);
        let (report, calls) = install_recording(root.path(), &[cert()], Update::Skip);
        assert_eq!(report.written.len(), 1);
        assert!(calls.is_empty());
        assert_eq!(report.update_skipped.as_deref(), Some("--no-update"));
    }

    #[test]
    fn a_failing_tool_leaves_nothing_that_looks_installed() {
        let root = host(Layout::Debian, true);
        let mut fail = |_: &Path, _: &Path, _: &[&str]| -> Result<()> { bail!("exit 1") };
        assert!(install(root.path(), &[cert()], Update::Run, &mut fail).is_err());
        let (report, calls) = install_recording(root.path(), &[cert()], Update::Run);
        assert_eq!(report.written.len(), 1);
        assert_eq!(calls.len(), 1);
    }

    #[test]
    fn unknown_layouts_are_refused_and_directories_alone_suffice() {
        let root = tempfile::tempdir().unwrap();
        let err = Layout::detect(root.path()).unwrap_err().to_string();
        assert!(err.contains("no known trust store"), "{err}");
        fs::create_dir_all(root.path().join("etc/pki/ca-trust/source/anchors")).unwrap();
        assert_eq!(Layout::detect(root.path()).unwrap(), Layout::Rhel);
    }

    #[test]
    fn only_our_file_names_are_owned() {
        let l = Layout::Debian;
        assert!(l.owns("egress-redirector.crt"));
        assert!(l.owns("egress-redirector-12.crt"));
        for other in [
            "egress-redirector.pem",
            "egress-redirector-.crt",
            "egress-redirector-x.crt",
            "corp.crt",
            "egress-redirector.crt.tmp",
        ] {
            assert!(!l.owns(other), "{other}");
        }
    }

    #[test]
    fn the_chrooted_runner_reports_a_failing_tool() {
        // Not root in every test environment: chroot may fail with EPERM,
        // which must surface as an error as a failing tool does.
        let root = tempfile::tempdir().unwrap();
        let err = run_chrooted(root.path(), Path::new("/usr/sbin/nope"), &[]);
        assert!(err.is_err());
    }
}
