//! JSON output: the daemon's responses as it sent them (every field, in its order: serde_json
//! keeps the order with `preserve_order`), pretty-printed, and the one document of a switch
//! that waited.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::failure::Failure;
use crate::follow::{Followed, Waits};

/// `raw` (a JSON response) pretty-printed with a final newline, fields in the order sent;
/// text that is not JSON comes back as it is.
pub fn pretty(raw: &str) -> String {
    match serde_json::from_str::<Value>(raw) {
        Ok(v) => pretty_value(&v),
        Err(_) => format!("{}\n", raw.trim()),
    }
}

fn value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn pretty_value<T: Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    s.push('\n');
    s
}

/// The one JSON document of a switch with waits: the outcome as the daemon sent it (every field,
/// in its order), a key per wait asked for (null when it never ran) and `error` on failure.
pub fn followed(raw_outcome: &str, waits: Waits, seen: &Followed, failure: Option<&Failure>) -> String {
    let mut doc = Map::new();
    doc.insert("outcome".into(), serde_json::from_str(raw_outcome).unwrap_or(Value::Null));
    if waits.new_flow.is_some() {
        doc.insert("wait".into(), value(&seen.wait));
    }
    if waits.watch.is_some() {
        doc.insert("watch".into(), value(&seen.watch));
    }
    if waits.drained.is_some() {
        doc.insert("drain".into(), value(&seen.drain));
    }
    if let Some(f) = failure {
        doc.insert(
            "error".into(),
            serde_json::json!({ "exit_code": f.exit_code(), "message": f.to_string() }),
        );
    }
    pretty_value(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use crate::follow::DrainReport;
    use lb_daemon::api::model::{Active, PoolWeight, SwitchOutcome, WatchState};
    use std::time::Duration;

    #[test]
    fn pretty_matches_serde_and_keeps_the_daemon_s_order() {
        let o = SwitchOutcome {
            after: Active::Split(vec![PoolWeight { pool: "a,b:{[\"".into(), weight: 90 }]),
            history_id: None,
            warnings: vec!["forced: b".into()],
            ..switched()
        };
        let compact = serde_json::to_string(&o).unwrap();
        assert_eq!(pretty(&compact), serde_json::to_string_pretty(&o).unwrap() + "\n");
        let empty = serde_json::json!({ "a": [], "b": {}, "c": [1, [2]] });
        assert_eq!(pretty(&empty.to_string()), serde_json::to_string_pretty(&empty).unwrap() + "\n");
        // Not sorted: the order sent, including fields this lbctl does not know.
        let raw = r#"{"zeta":1,"alpha":{"y":2,"b":[true,null]},"new_field":"x"}"#;
        assert_eq!(
            pretty(raw),
            "{\n  \"zeta\": 1,\n  \"alpha\": {\n    \"y\": 2,\n    \"b\": [\n      true,\n      null\n    ]\n  },\n  \"new_field\": \"x\"\n}\n"
        );
    }

    #[test]
    fn one_json_document_with_the_waits_asked_for() {
        let raw = serde_json::to_string(&switched()).unwrap();
        let seen = Followed { watch: Some(watch_view(WatchState::RolledBack, 7)), ..Followed::default() };
        let waits = Waits {
            new_flow: Some(Duration::from_secs(30)),
            watch: Some(Duration::from_secs(60)),
            ..Waits::default()
        };
        let failure = Failure::RolledBack("rolled back".into());
        let text = followed(&raw, waits, &seen, Some(&failure));
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
        // In this order, the outcome as the daemon sent it.
        assert_eq!(keys, ["outcome", "wait", "watch", "error"]);
        assert!(
            text.starts_with("{\n  \"outcome\": {\n    \"service\": \"web\",\n    \"changed\": true,"),
            "{text}"
        );
        assert_eq!(doc["outcome"]["history_id"], 7);
        assert_eq!(doc["wait"], serde_json::Value::Null);
        assert_eq!(doc["watch"]["state"], "rolled_back");
        assert_eq!(doc["error"], serde_json::json!({ "exit_code": 9, "message": "rolled back" }));
        let seen = Followed {
            drain: Some(DrainReport { drained: true, remaining: 0, pools: vec![], elapsed_ms: 5 }),
            ..Followed::default()
        };
        let waits = Waits { drained: Some(Duration::from_secs(1)), ..Waits::default() };
        let doc: serde_json::Value = serde_json::from_str(&followed(&raw, waits, &seen, None)).unwrap();
        assert_eq!(doc.as_object().unwrap().len(), 2);
        assert_eq!(
            (doc["drain"]["drained"].as_bool(), doc["drain"]["remaining"].as_u64()),
            (Some(true), Some(0))
        );
    }
}
