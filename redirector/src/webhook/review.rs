//! AdmissionReview v1: the request the API server sends for a pod, and the
//! response we send back. Decoding is bounded ([`MAX_BODY`]) and every
//! refusal names the field that was wrong, so that a bad body gets a clear
//! answer instead of a dropped connection.
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

/// The largest body read: the API server limits objects to ~1.5 MiB (etcd's
/// request limit), and an AdmissionReview carries at most the object and
/// its old version.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("the AdmissionReview is {0} bytes, more than the {MAX_BODY} accepted")]
    TooLarge(usize),
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(String),
    #[error("unsupported AdmissionReview {0}; this webhook speaks {API_VERSION}")]
    Version(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

/// The part of an AdmissionRequest this webhook reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// The object as a JSON value: the pod is decoded by [`Request::pod`],
    /// so that a review of something else is still answered.
    #[serde(default)]
    pub object: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl Request {
    /// The object as a Pod, or why it is not one.
    pub fn pod(&self) -> Result<Pod, String> {
        if !(self.kind.group.is_empty() && self.kind.version == "v1" && self.kind.kind == "Pod") {
            return Err(format!(
                "the object is a {}/{} {}, not a v1 Pod",
                self.kind.group, self.kind.version, self.kind.kind
            ));
        }
        let object = self
            .object
            .as_ref()
            .ok_or("the request carries no object")?;
        serde_path_to_error::deserialize(object)
            .map_err(|e| format!("the pod does not decode at {}: {}", e.path(), e.inner()))
    }
}

/// Decodes an AdmissionReview v1 body.
pub fn decode(body: &[u8]) -> Result<Request, ReviewError> {
    if body.len() > MAX_BODY {
        return Err(ReviewError::TooLarge(body.len()));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let review: Review = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ReviewError::Malformed(if path == "." {
            e.inner().to_string()
        } else {
            format!("at {path}: {}", e.inner())
        })
    })?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::Version(format!(
            "{} {}",
            review.api_version, review.kind
        )));
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// Our answer: always allowed (this webhook only mutates), with a JSON
/// Patch when there is something to add, and warnings the client shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub patch: Option<Vec<serde_json::Value>>,
    pub warnings: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// The AdmissionReview answering request `uid`.
pub fn encode(uid: &str, answer: &Answer) -> Vec<u8> {
    let patch = answer.patch.as_ref().map(|ops| {
        base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(ops).expect("JSON values serialize"))
    });
    let review = ResponseReview {
        api_version: API_VERSION,
        kind: KIND,
        response: Response {
            uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: &answer.warnings,
        },
    };
    serde_json::to_vec(&review).expect("the response serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
      "request":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind":{"group":"","version":"v1","kind":"Pod"},
        "resource":{"group":"","version":"v1","resource":"pods"},
        "requestKind":{"group":"","version":"v1","kind":"Pod"},
        "namespace":"shop","operation":"CREATE",
        "userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},
        "object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-","namespace":"shop"},
          "spec":{"containers":[{"name":"web","image":"nginx"}]}},
        "oldObject":null,"dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}"#;

    #[test]
    fn a_real_review_decodes_and_its_answer_echoes_the_uid() {
        let req = decode(REVIEW.as_bytes()).unwrap();
        assert_eq!(req.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(req.namespace.as_deref(), Some("shop"));
        let pod = req.pod().unwrap();
        assert_eq!(pod.spec.unwrap().containers[0].name, "web");
        let out: serde_json::Value = serde_json::from_slice(&encode(
            &req.uid,
            &Answer {
                patch: Some(vec![serde_json::json!({"op":"add","path":"/x","value":1})]),
                warnings: vec!["w".into()],
            },
        ))
        .unwrap();
        assert_eq!(out["apiVersion"], API_VERSION);
        assert_eq!(out["response"]["uid"], req.uid);
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(patch, br#"[{"op":"add","path":"/x","value":1}]"#);
        assert_eq!(out["response"]["warnings"][0], "w");
        // Without a patch: no patch fields at all.
        let out: serde_json::Value =
            serde_json::from_slice(&encode("u", &Answer::default())).unwrap();
        assert!(out["response"].get("patchType").is_none());
        assert!(out["response"].get("warnings").is_none());
    }

    #[test]
    fn bad_bodies_get_clear_errors() {
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(
            decode(&big).unwrap_err(),
            ReviewError::TooLarge(MAX_BODY + 1)
        );
        let e = decode(b"{not json").unwrap_err().to_string();
        assert!(e.starts_with("the body is not an AdmissionReview"), "{e}");
        let e = decode(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("request.uid"), "{e}");
        let e = decode(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
            .unwrap_err();
        assert!(matches!(e, ReviewError::Version(_)), "{e}");
        let e = decode(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#);
        assert_eq!(e.unwrap_err(), ReviewError::NoRequest);
    }

    #[test]
    fn a_non_pod_or_broken_pod_is_reported_not_fatal() {
        let text = REVIEW.replacen(
            r#""kind":{"group":"","version":"v1","kind":"Pod"}"#,
            r#""kind":{"group":"","version":"v1","kind":"Service"}"#,
            1,
        );
        let req = decode(text.as_bytes()).unwrap();
        assert!(req.pod().unwrap_err().contains("not a v1 Pod"));
        let text = REVIEW.replace(
            r#""containers":[{"name":"web""#,
            r#""containers":[{"name":5"#,
        );
        let req = decode(text.as_bytes()).unwrap();
        let e = req.pod().unwrap_err();
        assert!(e.contains("spec.containers[0].name"), "{e}");
    }
}
