//! `profiles`: named sets of AKS keys a namespace selects with the label
//! `egress-redirector/profile=<name>`:
//!
//! ```json
//! "profiles": {
//!   "team-a": { "httpsProxy": "http://10.0.0.5:3128", "noProxy": ["a.internal"],
//!               "credentials": { "usernameFile": "/etc/egress/team-a/username",
//!                                "passwordFile": "/etc/egress/team-a/password" } }
//! }
//! ```
//!
//! Each profile has the top level's `httpProxy`, `httpsProxy`, `noProxy`
//! and `trustedCA`, validated the same way, plus `credentials` for both of
//! its proxies (inline, or read from files such as a Secret's mount, at
//! load and at every reload). A key a profile leaves out is not inherited:
//! a profile is the whole proxy setting of its namespaces.
use std::{collections::BTreeMap, fmt, path::Path};

use serde::Deserialize;

use super::{NoProxyField, ProxyField, ProxyUrl, parse_trusted_ca};
use crate::noproxy::NoProxy;

/// One profile as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    #[serde(rename = "httpProxy")]
    http_proxy: Option<ProxyField>,
    #[serde(rename = "httpsProxy")]
    https_proxy: Option<ProxyField>,
    #[serde(rename = "noProxy")]
    no_proxy: Option<NoProxyField>,
    #[serde(rename = "trustedCA", alias = "trustedCa")]
    trusted_ca: Option<String>,
    credentials: Option<RawCredentials>,
}

/// `credentials` as written: each of user name and password inline or
/// from a file, never both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    username: Option<String>,
    password: Option<String>,
    #[serde(rename = "usernameFile")]
    username_file: Option<String>,
    #[serde(rename = "passwordFile")]
    password_file: Option<String>,
}

/// Never shows the password, should a raw config be logged.
impl fmt::Debug for RawCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCredentials")
            .field("username_file", &self.username_file)
            .field("password_file", &self.password_file)
            .finish_non_exhaustive()
    }
}

/// A validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub http_proxy: Option<ProxyUrl>,
    pub https_proxy: Option<ProxyUrl>,
    pub http_proxy_fallbacks: Vec<ProxyUrl>,
    pub https_proxy_fallbacks: Vec<ProxyUrl>,
    pub no_proxy: NoProxy,
    pub trusted_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
}

/// Whether `name` can be a label value (what selects the profile).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Validates every profile; an error names the profile and its key.
pub(super) fn parse(
    raw: BTreeMap<String, RawProfile>,
) -> Result<BTreeMap<String, Profile>, String> {
    raw.into_iter()
        .map(|(name, profile)| {
            if !valid_name(&name) {
                return Err(format!(
                    "`{name}` is not a profile name (a label value: letters, digits, `-`, `_`, \
                     `.`, at most 63, starting and ending with a letter or digit)"
                ));
            }
            let profile = profile.validate().map_err(|m| format!("{name}.{m}"))?;
            Ok((name, profile))
        })
        .collect()
}

impl RawProfile {
    fn validate(self) -> Result<Profile, String> {
        let (mut http_proxy, mut http_proxy_fallbacks) =
            ProxyField::parse(self.http_proxy).map_err(|m| format!("httpProxy: {m}"))?;
        let (mut https_proxy, mut https_proxy_fallbacks) =
            ProxyField::parse(self.https_proxy).map_err(|m| format!("httpsProxy: {m}"))?;
        let entries = self.no_proxy.map(NoProxyField::entries).unwrap_or_default();
        let no_proxy = NoProxy::parse(&entries).map_err(|e| format!("noProxy: {e}"))?;
        let trusted_ca = match self.trusted_ca.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(b64) => parse_trusted_ca(b64).map_err(|m| format!("trustedCA: {m}"))?,
        };
        if let Some(credentials) = self.credentials {
            let pair = credentials
                .resolve()
                .map_err(|m| format!("credentials: {m}"))?;
            if http_proxy.is_none() && https_proxy.is_none() {
                return Err("credentials: no httpProxy or httpsProxy to use them with".into());
            }
            let firsts = [&mut http_proxy, &mut https_proxy].into_iter().flatten();
            let others = http_proxy_fallbacks
                .iter_mut()
                .chain(&mut https_proxy_fallbacks);
            for proxy in firsts.chain(others) {
                proxy.credentials = Some(pair.clone());
            }
        }
        Ok(Profile {
            http_proxy,
            https_proxy,
            http_proxy_fallbacks,
            https_proxy_fallbacks,
            no_proxy,
            trusted_ca,
        })
    }
}

impl RawCredentials {
    /// (user, password), each from its value or its file.
    fn resolve(self) -> Result<(String, String), String> {
        let one = |what: &str, inline: Option<String>, file: Option<String>| match (inline, file) {
            (Some(_), Some(_)) => Err(format!("{what} and {what}File are both set; give one")),
            (Some(value), None) => Ok(value),
            (None, Some(file)) => read_secret(Path::new(&file)),
            (None, None) => Err(format!("{what} (or {what}File) is missing")),
        };
        let user = one("username", self.username, self.username_file)?;
        let password = one("password", self.password, self.password_file)?;
        if user.is_empty() {
            return Err("the username is empty".into());
        }
        Ok((user, password))
    }
}

/// A Secret's key as mounted: the file's text without the line break an
/// editor or `echo` leaves at its end. Errors name the file, never its text.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.contains(['\r', '\n']) {
        return Err(format!("{} holds more than one line", path.display()));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(text: &str) -> Result<BTreeMap<String, Profile>, String> {
        let raw: BTreeMap<String, RawProfile> =
            serde_json::from_str(text).map_err(|e| e.to_string())?;
        parse(raw)
    }

    #[test]
    fn profiles_take_the_aks_keys_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("user"), "team-b\n").unwrap();
        std::fs::write(dir.path().join("pass"), "s3cr3t-b\n").unwrap();
        let text = serde_json::json!({
            "team-a": {"httpsProxy": "http://10.0.0.5:3128", "noProxy": "a.internal, 10.1.0.0/16",
                       "credentials": {"username": "ua", "password": "pa"}},
            "team-b": {"httpProxy": "http://10.0.0.6:3128", "httpsProxy": "http://10.0.0.6:3128",
                       "credentials": {"usernameFile": dir.path().join("user"),
                                       "passwordFile": dir.path().join("pass")}},
            "plain": {}
        })
        .to_string();
        let profiles = parse_json(&text).unwrap();
        let a = &profiles["team-a"];
        assert!(a.http_proxy.is_none());
        let https = a.https_proxy.as_ref().unwrap();
        assert_eq!(https.credentials, Some(("ua".into(), "pa".into())));
        assert_eq!(a.no_proxy.rules().len(), 2);
        let b = &profiles["team-b"];
        for proxy in [&b.http_proxy, &b.https_proxy] {
            assert_eq!(
                proxy.as_ref().unwrap().credentials,
                Some(("team-b".into(), "s3cr3t-b".into()))
            );
        }
        assert!(profiles["plain"].https_proxy.is_none());
        // Debug never shows a password.
        assert!(!format!("{profiles:?}").contains("s3cr3t-b"));
    }

    #[test]
    fn bad_profiles_are_named_and_never_show_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let two_lines = dir.path().join("two");
        std::fs::write(&two_lines, "s3cr3t\nmore\n").unwrap();
        let missing = dir.path().join("missing");
        for (text, needle) in [
            (r#"{"Bad Name": {}}"#.to_owned(), "is not a profile name"),
            (r#"{"-a": {}}"#.to_owned(), "is not a profile name"),
            (
                r#"{"a": {"httpsProxy": "socks5://p:1"}}"#.to_owned(),
                "a.httpsProxy: ",
            ),
            (
                r#"{"a": {"noProxy": ["10.0.0.0/33"]}}"#.to_owned(),
                "a.noProxy: ",
            ),
            (r#"{"a": {"trustedCA": "!!!"}}"#.to_owned(), "a.trustedCA: "),
            (r#"{"a": {"httpsProxyy": "x"}}"#.to_owned(), "unknown field"),
            (
                r#"{"a": {"httpsProxy": "p:1", "credentials": {"username": "u"}}}"#.to_owned(),
                "a.credentials: password (or passwordFile) is missing",
            ),
            (
                r#"{"a": {"httpsProxy": "p:1", "credentials": {"username": "u", "password": "s3cr3t", "passwordFile": "/x"}}}"#.to_owned(),
                "password and passwordFile are both set",
            ),
            (
                r#"{"a": {"credentials": {"username": "u", "password": "s3cr3t"}}}"#.to_owned(),
                "no httpProxy or httpsProxy",
            ),
            (
                serde_json::json!({"a": {"httpsProxy": "p:1", "credentials":
                    {"username": "u", "passwordFile": two_lines}}})
                .to_string(),
                "holds more than one line",
            ),
            (
                serde_json::json!({"a": {"httpsProxy": "p:1", "credentials":
                    {"username": "u", "passwordFile": missing}}})
                .to_string(),
                "cannot read",
            ),
        ] {
            let err = parse_json(&text).unwrap_err();
            assert!(err.contains(needle), "{text}: no {needle:?} in {err}");
            assert!(!err.contains("s3cr3t"), "{text}: {err}");
        }
    }
}
