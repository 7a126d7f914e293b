//! A PKCS#12 truststore (RFC 7292) the JVM reads as trusted certificates.
//!
//! Java counts a certificate of a PKCS#12 store as a *trusted* entry only
//! when its bag carries Oracle's trusted-key-usage attribute (what `keytool
//! -importcert` writes); without it the certificates are ignored and the
//! store trusts nothing. So each certificate is a `certBag` with that
//! attribute (`anyExtendedKeyUsage`) and a `friendlyName` (the alias), in
//! one unencrypted SafeContents (the certificates are public), with an
//! HMAC-SHA-256 MAC under [`super::P12_PASSWORD`] so that stores loaded
//! with the password verify.
use ring::{digest, hmac};
use yasna::{DERWriter, Tag, models::ObjectIdentifier};

const ID_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
const CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
const X509_CERTIFICATE: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
const FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
/// Oracle's `ORACLE_TrustedKeyUsage` bag attribute.
const ORACLE_TRUSTED_KEY_USAGE: &[u64] = &[2, 16, 840, 1, 113894, 746875, 1, 1];
const ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];
const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
/// PKCS#12 key derivation rounds for the MAC key (OpenSSL's default).
const MAC_ITERATIONS: u64 = 2048;

fn oid(arcs: &[u64]) -> ObjectIdentifier {
    ObjectIdentifier::from_slice(arcs)
}

/// A truststore holding `certs` (DER), aliased by `alias(index)`, with a
/// MAC keyed by `password` and `salt`.
pub fn truststore(certs: &[(String, Vec<u8>)], password: &str, salt: &[u8; 16]) -> Vec<u8> {
    let safe_contents = yasna::construct_der(|w| {
        w.write_sequence_of(|w| {
            for (alias, der) in certs {
                cert_bag(w.next(), alias, der);
            }
        })
    });
    let auth_safe = yasna::construct_der(|w| {
        w.write_sequence_of(|w| data_content_info(w.next(), &safe_contents))
    });
    let key = mac_key(password, salt, MAC_ITERATIONS);
    let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &auth_safe);
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(3);
            data_content_info(w.next(), &auth_safe);
            // MacData ::= SEQUENCE { DigestInfo, macSalt, iterations }
            w.next().write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(SHA256));
                        w.next().write_null();
                    });
                    w.next().write_bytes(mac.as_ref());
                });
                w.next().write_bytes(salt);
                w.next().write_u64(MAC_ITERATIONS);
            });
        })
    })
}

/// ContentInfo { id-data, [0] EXPLICIT OCTET STRING }.
fn data_content_info(w: DERWriter<'_>, content: &[u8]) {
    w.write_sequence(|w| {
        w.next().write_oid(&oid(ID_DATA));
        w.next()
            .write_tagged(Tag::context(0), |w| w.write_bytes(content));
    });
}

/// SafeBag { certBag, [0] CertBag, SET OF attributes }.
fn cert_bag(w: DERWriter<'_>, alias: &str, der: &[u8]) {
    w.write_sequence(|w| {
        w.next().write_oid(&oid(CERT_BAG));
        w.next().write_tagged(Tag::context(0), |w| {
            w.write_sequence(|w| {
                w.next().write_oid(&oid(X509_CERTIFICATE));
                w.next()
                    .write_tagged(Tag::context(0), |w| w.write_bytes(der));
            })
        });
        w.next().write_set(|w| {
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(FRIENDLY_NAME));
                w.next().write_set(|w| w.next().write_bmp_string(alias));
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(ORACLE_TRUSTED_KEY_USAGE));
                w.next()
                    .write_set(|w| w.next().write_oid(&oid(ANY_EXTENDED_KEY_USAGE)));
            });
        });
    });
}

/// The MAC key: RFC 7292 appendix B.2 with SHA-256 (ID 3, one output
/// block, which is all a 32-byte HMAC-SHA-256 key needs).
fn mac_key(password: &str, salt: &[u8], iterations: u64) -> Vec<u8> {
    const V: usize = 64; // SHA-256's block size
    // BMPString with a terminating NUL, as the standard asks.
    let mut pass: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
    pass.extend([0, 0]);
    let fill = |src: &[u8]| -> Vec<u8> {
        if src.is_empty() {
            return Vec::new();
        }
        let len = V * src.len().div_ceil(V);
        src.iter().copied().cycle().take(len).collect()
    };
    let mut input = vec![3u8; V];
    input.extend(fill(salt));
    input.extend(fill(&pass));
    let mut a = digest::digest(&digest::SHA256, &input);
    for _ in 1..iterations {
        a = digest::digest(&digest::SHA256, a.as_ref());
    }
    a.as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_key_matches_a_known_answer() {
        // Computed with Python's hashlib after RFC 7292 B.2 (password
        // "changeit", salt 0..16, 2048 rounds).
        let salt: Vec<u8> = (0u8..16).collect();
        let key = mac_key("changeit", &salt, MAC_ITERATIONS);
        assert_eq!(key.len(), 32);
        assert_eq!(hex(&key), KNOWN_KEY);
    }

    const KNOWN_KEY: &str = "28bc2bdc8fed903ab2805785ab9c166a41ed0222c6ad38b25876476bd45af4e7";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn the_store_is_der_with_one_bag_per_certificate() {
        let der = truststore(
            &[
                ("a".into(), vec![0x30, 0x00]),
                ("b".into(), vec![0x30, 0x00]),
            ],
            "changeit",
            &[7; 16],
        );
        // Outer SEQUENCE, version 3.
        assert_eq!(der[0], 0x30);
        let parsed = yasna::parse_der(&der, |r| {
            r.read_sequence(|r| {
                let version = r.next().read_u8()?;
                let _auth = r.next().read_der()?;
                let _mac = r.next().read_der()?;
                Ok(version)
            })
        });
        assert_eq!(parsed, Ok(3));
        let bags = der
            .windows(ORACLE_OID_DER.len())
            .filter(|w| *w == ORACLE_OID_DER)
            .count();
        assert_eq!(bags, 2);
    }

    /// The DER content of the trusted-key-usage OID.
    const ORACLE_OID_DER: &[u8] = &[
        0x60, 0x86, 0x48, 0x01, 0x86, 0xf9, 0x66, 0xad, 0xca, 0x7b, 0x01, 0x01,
    ];
}
