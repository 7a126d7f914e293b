//! The webhook's AdmissionReview decoder and what follows it
//! (`serve::respond`: decode, read the pod, compute the patch, encode):
//! never a panic, and for any body that decodes, an answer that allows the
//! request, echoes its uid, and carries a JSON Patch whose every path
//! exists in the pod where it must (RFC 6902: the parent of an "add", the
//! target of a "replace").
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use redirector::webhook::{review, serve};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(out) = serve::respond(data) else {
        return;
    };
    let request = review::decode(data).expect("respond decoded it");
    let out: Value = serde_json::from_slice(&out).expect("the answer is JSON");
    assert_eq!(out["response"]["uid"], request.uid);
    assert_eq!(out["response"]["allowed"], true);
    let Some(patch) = out["response"]["patch"].as_str() else {
        return;
    };
    let ops: Vec<Value> = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .expect("the patch is base64"),
    )
    .expect("the patch is JSON");
    // The pod as the API server holds it: the decoded object, re-encoded
    // (fields the typed pod dropped are not addressed by the patch).
    let pod = serde_json::to_value(request.pod().expect("patched, so a pod")).unwrap();
    let mut doc = pod;
    for op in &ops {
        let path = op["path"].as_str().expect("a path");
        let (parent, last) = path.rsplit_once('/').expect("a pointer");
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{path}: no parent in the pod"));
        match (op["op"].as_str(), target) {
            (Some("add"), Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            (Some("add"), Value::Object(o)) => {
                o.insert(
                    last.replace("~1", "/").replace("~0", "~"),
                    op["value"].clone(),
                );
            }
            (Some("replace"), Value::Array(a)) => {
                let i: usize = last.parse().expect("an index");
                assert!(i < a.len(), "{path}: replace past the end");
                a[i] = op["value"].clone();
            }
            (Some("replace"), Value::Object(o)) => {
                assert!(o.contains_key(last), "{path}: replace of nothing");
                o.insert(last.to_owned(), op["value"].clone());
            }
            (op, target) => panic!("{path}: {op:?} on {target}"),
        }
    }
});
