//! Every route the daemon serves is in the OpenAPI document and in docs/api.md, and neither
//! lists a path the daemon does not serve. The routes are read from the server's code (the
//! slice patterns of `Route::parse` and the path literals the API and fleet modules match), so a
//! route added there without its documentation fails here, naming it.

use std::{collections::BTreeSet, path::Path};

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `/v1/services/{name}/switch` and `/v1/services/{svc}/switch` compare equal: `{…}` → `{}`.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// A slice pattern of `Route::parse` (`"services", n, "switch"`) as a path
/// (`/v1/services/{}/switch`): literals stay, bindings become parameters.
fn path_of_segments(pattern: &str) -> String {
    let segments: Vec<String> = pattern
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| if s.starts_with('"') { s.trim_matches('"').to_owned() } else { "{}".to_owned() })
        .collect();
    format!("/v1/{}", segments.join("/"))
}

/// The quoted path literals a line matches on: `"/v1/host" =>`, `path == "/metrics"` and
/// `path != "/v1/fleet"`.
fn matched_literals(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let literal = &after[..end];
        let before = rest[..start].trim_end();
        let following = after[end + 1..].trim_start();
        let is_path = literal.starts_with("/v1/") || literal == "/metrics";
        // `path != "/v1/fleet"` guards a handler that answers only that path.
        let compared = before.ends_with("==") || before.ends_with("!=");
        if is_path && (following.starts_with("=>") || following.starts_with('|') || compared) {
            out.push(literal.to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The routes in the daemon's code, normalized.
fn routes_in_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    for dir in ["lb-daemon/src/api", "lb-daemon/src/fleet"] {
        rust_files(&workspace().join(dir), &mut files);
    }
    let mut routes = BTreeSet::new();
    for file in files {
        // Unit tests name paths too; only the code before `#[cfg(test)]` routes.
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        if file.ends_with("tests.rs") {
            continue;
        }
        for line in code.lines() {
            let t = line.trim();
            // `["services", n, "switch"] => Route::Switch(…)`
            if let Some(pattern) = t.strip_prefix('[')
                && let Some((inside, after)) = pattern.split_once(']')
                && after.trim_start().starts_with("=> Route::")
            {
                routes.insert(normalize(&path_of_segments(inside)));
            }
            routes.extend(matched_literals(t).iter().map(|p| normalize(p)));
        }
    }
    routes
}

/// The paths of openapi.json, normalized.
fn routes_in_openapi() -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace().join("lb-daemon/src/api/openapi.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["paths"].as_object().unwrap().keys().map(|p| normalize(p)).collect()
}

/// The paths in docs/api.md's endpoint table (`` `GET /v1/…` ``), normalized.
fn routes_in_docs() -> BTreeSet<String> {
    let text = std::fs::read_to_string(workspace().join("docs/api.md")).unwrap();
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.trim_start_matches("| `");
        let Some((method_path, _)) = cell.split_once('`') else { continue };
        if let Some((_, path)) = method_path.split_once(' ') {
            out.insert(normalize(path.split('?').next().unwrap_or(path)));
        }
    }
    out
}

#[test]
fn api_routes_are_documented() {
    let code = routes_in_code();
    // The reader must still understand the server: a route list this short means it does not.
    assert!(
        code.len() >= 20 && code.contains("/v1/health") && code.contains("/v1/services/{}/switch"),
        "{code:?}"
    );
    for (name, documented) in [
        ("lb-daemon/src/api/openapi.json", routes_in_openapi()),
        ("docs/api.md (endpoint table)", routes_in_docs()),
    ] {
        let missing: Vec<&String> = code.difference(&documented).collect();
        let stale: Vec<&String> = documented.difference(&code).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "{name}: routes served but not documented: {missing:?}; documented but not served: {stale:?}"
        );
    }
}

#[test]
fn the_route_reader_reads_patterns_and_literals() {
    assert_eq!(path_of_segments(r#""services", n, "switch""#), "/v1/services/{}/switch");
    assert_eq!(matched_literals(r#""/v1/host/drain" => Some(true),"#), vec!["/v1/host/drain"]);
    assert_eq!(matched_literals(r#"if path == "/metrics" {"#), vec!["/metrics"]);
    assert!(matched_literals(r#"client.get("/v1/status")"#).is_empty());
    assert_eq!(normalize("/v1/services/{name}/drain"), "/v1/services/{}/drain");
}
