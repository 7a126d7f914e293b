//! `cargo xtask image`: the node image as an OCI image archive, built
//! without Docker or a registry.
//!
//! The archive is a tar of an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) plus Docker's `manifest.json`, as `docker save` writes
//! since Docker 25: `ctr images import`, `docker load`, `crane push` (on the
//! extracted directory) and `skopeo copy oci-archive:` all read it. One
//! gzip layer holds the binary and, distroless-style, exactly the shared
//! libraries `ldd` names for it plus the dynamic loader: no shell, no
//! package manager. The layer is reproducible (sorted entries, mtime 0,
//! owner root), so the same binary gives the same digests.
//!
//! The runtime harness (`cargo xtask runtime-e2e`) builds its pause and
//! client images with the same code.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::build;
use crate::toolchain::Paths;

/// The repository name the manifests use (`image: egress-redirector`),
/// fully qualified as the kubelet asks the runtime for it.
pub const DAEMON_REPOSITORY: &str = "docker.io/library/egress-redirector";
/// Where the manifests run the daemon from (`command:`).
pub const DAEMON_PATH: &str = "/usr/local/bin/redirector";
/// Debian's CA bundle, where rustls-native-certs looks first.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The tag of development builds (deploy/overlays/demo uses it).
pub const DEV_TAG: &str = "dev";

/// What goes into an image: files and how to run them.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Fully qualified references (`docker.io/library/name:tag`).
    pub references: Vec<String>,
    /// (source on this machine, absolute path in the image); symlinks in
    /// the source are followed, the image gets regular files.
    pub files: Vec<(PathBuf, String)>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageSpec {
    /// An image of one program at `dest`, with the libraries it needs.
    pub fn program(binary: &Path, dest: &str, references: Vec<String>) -> Result<Self> {
        let mut files = vec![(binary.to_path_buf(), dest.to_owned())];
        for lib in shared_libraries(binary)? {
            let dest = lib.to_string_lossy().into_owned();
            files.push((lib, dest));
        }
        Ok(Self {
            references,
            files,
            entrypoint: vec![dest.to_owned()],
            cmd: Vec::new(),
            labels: BTreeMap::new(),
        })
    }
}

/// What [`write_archive`] wrote: the digests a test or a user checks.
#[derive(Debug, Clone)]
pub struct Written {
    pub archive: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub size: u64,
}

/// The shared libraries `ldd` names for `binary` (the loader included,
/// the vDSO left out). A static binary has none.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_ldd(&text)
}

/// Paths from ldd's output: `name => /path (addr)` and `/loader (addr)`.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("=> not found") {
            bail!("ldd: a library is missing on this machine: {line}");
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The uncompressed layer: parent directories first, then the files,
/// sorted; every entry owned by root with mtime 0.
fn layer_tar(files: &[(PathBuf, String)]) -> Result<Vec<u8>> {
    let mut entries: BTreeMap<String, Option<(Vec<u8>, u32)>> = BTreeMap::new();
    for (src, dest) in files {
        let rel = dest.trim_start_matches('/');
        if rel.is_empty() || !dest.starts_with('/') {
            bail!("image path {dest:?} is not an absolute file path");
        }
        let mut dir = Path::new(rel).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            entries.insert(format!("{}/", d.display()), None);
            dir = d.parent();
        }
        let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(src)?.permissions().mode() & 0o7777
        };
        entries.insert(rel.to_owned(), Some((data, mode)));
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in &entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        match entry {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            Some((data, mode)) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// Writes the OCI image archive of `spec` to `out`.
pub fn write_archive(spec: &ImageSpec, out: &Path) -> Result<Written> {
    let layer = layer_tar(&spec.files)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;
    let layer_digest = format!("sha256:{}", sha256_hex(&layer_gz));

    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": if spec.cmd.is_empty() { Value::Null } else { json!(spec.cmd) },
            "Labels": spec.labels,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask image"}],
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_gz.len(),
        }],
        "annotations": spec.labels,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    // One index entry per reference: containerd names the image from
    // io.containerd.image.name, other tools from the OCI ref.name (the tag).
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": spec.references.iter().map(|reference| json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag_of(reference),
            },
        })).collect::<Vec<_>>(),
    });
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let docker_manifest = json!([{
        "Config": blob(&config_digest),
        "RepoTags": spec.references.iter().map(|r| short_reference(r)).collect::<Vec<_>>(),
        "Layers": [blob(&layer_digest)],
    }]);

    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("tar.partial");
    let mut archive = tar::Builder::new(
        fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        archive.append_data(&mut header, path, data)?;
        Ok(())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &serde_json::to_vec(&index)?)?;
    add("manifest.json", &serde_json::to_vec(&docker_manifest)?)?;
    add(&blob(&manifest_digest), &manifest)?;
    add(&blob(&config_digest), &config)?;
    add(&blob(&layer_digest), &layer_gz)?;
    archive.into_inner()?.sync_all()?;
    fs::rename(&tmp, out).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(Written {
        archive: out.to_path_buf(),
        manifest_digest,
        config_digest,
        layer_digest,
        size: fs::metadata(out)?.len(),
    })
}

/// `docker.io/library/x:t` -> `t`.
fn tag_of(reference: &str) -> &str {
    reference.rsplit_once(':').map_or("latest", |(_, t)| t)
}

/// `docker.io/library/x:t` -> `x:t` (what `docker images` shows).
fn short_reference(reference: &str) -> &str {
    reference
        .strip_prefix("docker.io/library/")
        .unwrap_or(reference)
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The version line of `redirector --version` ("redirector 0.1.0" -> "0.1.0").
fn binary_version(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("{} --version printed {text:?}", binary.display()))
}

/// The commit the binary was built from, when this is a git checkout.
fn git_revision(paths: &Paths) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(&paths.root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The daemon's image spec: the binary at [`DAEMON_PATH`], tagged `tags`,
/// labelled with its version (and the commit when known).
pub fn daemon_spec(paths: &Paths, binary: &Path, tags: &[String]) -> Result<ImageSpec> {
    let version = binary_version(binary)?;
    let references = tags
        .iter()
        .map(|t| format!("{DAEMON_REPOSITORY}:{t}"))
        .collect();
    let mut spec = ImageSpec::program(binary, DAEMON_PATH, references)?;
    spec.cmd = vec!["--help".to_owned()];
    // The system roots, for an https:// proxy with a public certificate
    // (the daemon also trusts the configuration's trustedCA); data only.
    let bundle = Path::new(CA_BUNDLE);
    if bundle.is_file() {
        spec.files
            .push((bundle.to_path_buf(), CA_BUNDLE.to_owned()));
    }
    let labels = &mut spec.labels;
    labels.insert(
        "org.opencontainers.image.title".into(),
        "egress-redirector".into(),
    );
    labels.insert("org.opencontainers.image.version".into(), version);
    labels.insert(
        "org.opencontainers.image.source".into(),
        env!("CARGO_PKG_REPOSITORY").into(),
    );
    labels.insert(
        "org.opencontainers.image.licenses".into(),
        env!("CARGO_PKG_LICENSE").into(),
    );
    if let Some(rev) = git_revision(paths) {
        labels.insert("org.opencontainers.image.revision".into(), rev);
    }
    Ok(spec)
}

/// Where `cargo xtask image` writes the daemon's archive.
pub fn daemon_archive(paths: &Paths) -> PathBuf {
    paths.root.join("target/image/egress-redirector.oci.tar")
}

/// `cargo xtask image`: builds the daemon, then writes its archive (tags
/// `dev` and the version); with `docker`, builds deploy/Dockerfile instead.
pub fn image(paths: &Paths, docker: bool) -> Result<()> {
    if docker {
        return build::image(paths).map(drop);
    }
    let binary = build::build(paths, true)?;
    let tags = vec![DEV_TAG.to_owned(), env!("CARGO_PKG_VERSION").to_owned()];
    let spec = daemon_spec(paths, &binary, &tags)?;
    let written = write_archive(&spec, &daemon_archive(paths))?;
    println!(
        "image: {} ({:.1} MB), {} tagged {}\n  manifest {}\n  import: ctr -n k8s.io images import {}",
        written.archive.display(),
        written.size as f64 / 1e6,
        DAEMON_REPOSITORY,
        tags.join(", "),
        written.manifest_digest,
        written.archive.display(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    /// The archive's files, by name.
    fn read_archive(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(name, data);
        }
        files
    }

    fn blob<'a>(files: &'a BTreeMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
        let data = &files[&format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap())];
        assert_eq!(
            format!("sha256:{}", sha256_hex(data)),
            digest,
            "blob digest"
        );
        data
    }

    #[test]
    fn archive_is_an_oci_layout_whose_digests_match() {
        let dir = std::env::temp_dir().join(format!("xtask-image-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let program = dir.join("prog");
        fs::write(&program, b"#!not really a program\n").unwrap();
        let mut spec = ImageSpec {
            references: vec!["docker.io/library/thing:1.2.3".into()],
            files: vec![(program.clone(), "/usr/local/bin/prog".into())],
            entrypoint: vec!["/usr/local/bin/prog".into()],
            cmd: vec!["--help".into()],
            labels: BTreeMap::new(),
        };
        spec.labels
            .insert("org.opencontainers.image.version".into(), "1.2.3".into());
        let out = dir.join("thing.tar");
        let written = write_archive(&spec, &out).unwrap();
        let files = read_archive(&out);
        fs::remove_dir_all(&dir).unwrap();

        let layout: Value = serde_json::from_slice(&files["oci-layout"]).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], written.manifest_digest.as_str());
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "docker.io/library/thing:1.2.3"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "1.2.3"
        );

        let manifest_bytes = blob(&files, &written.manifest_digest);
        assert_eq!(entry["size"], manifest_bytes.len());
        let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
        assert_eq!(manifest["config"]["digest"], written.config_digest.as_str());
        let config: Value = serde_json::from_slice(blob(&files, &written.config_digest)).unwrap();
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/prog");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "1.2.3"
        );

        // The layer: gzip of a tar whose sha256 is the config's diff_id,
        // holding the program (with its parent directories) and nothing else.
        let layer_gz = blob(&files, &written.layer_digest);
        assert_eq!(manifest["layers"][0]["size"], layer_gz.len());
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(layer_gz)
            .read_to_end(&mut layer)
            .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", sha256_hex(&layer))
        );
        let mut names = Vec::new();
        for entry in tar::Archive::new(layer.as_slice()).entries().unwrap() {
            let mut entry = entry.unwrap();
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
            if entry.header().entry_type().is_file() {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                assert_eq!(data, b"#!not really a program\n");
            }
        }
        assert_eq!(
            names,
            ["usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/prog"]
        );

        let docker: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], "thing:1.2.3");
    }

    #[test]
    fn same_input_same_digests() {
        let dir = std::env::temp_dir().join(format!("xtask-image-repro-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let program = dir.join("prog");
        fs::write(&program, b"x").unwrap();
        let spec = ImageSpec {
            references: vec!["docker.io/library/thing:t".into()],
            files: vec![(program, "/prog".into())],
            entrypoint: vec!["/prog".into()],
            cmd: Vec::new(),
            labels: BTreeMap::new(),
        };
        let a = write_archive(&spec, &dir.join("a.tar")).unwrap();
        let b = write_archive(&spec, &dir.join("b.tar")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
    }
}
