//! Routes: parsing a request into a [`Route`], authenticating it and dispatching it to
//! [`Control`], with body limits, the history query and the JSON/error responses.

use super::identity::requester;
use super::*;

/// The API's routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Health,
    Status,
    Services,
    Service(String),
    Switch(Option<String>),
    Rollback(Option<String>),
    Split(Option<String>),
    Drain(Option<String>),
    Watch(Option<String>),
    History,
    Reload,
    Shutdown,
    OpenApi,
    Metrics,
    /// `POST /v1/backend`, `POST /v1/services/{name}/backend`: change one backend.
    Backend(Option<String>),
}

impl Route {
    /// The route of a path, or None when no route has that path.
    pub(super) fn parse(path: &str) -> Option<Route> {
        if path == "/metrics" {
            return Some(Route::Metrics);
        }
        let rest = path.strip_prefix("/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        let name = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some(match segments.as_slice() {
            ["health"] => Route::Health,
            ["status"] => Route::Status,
            ["services"] => Route::Services,
            ["services", n] => Route::Service(name(n)?),
            ["services", n, "switch"] => Route::Switch(Some(name(n)?)),
            ["services", n, "rollback"] => Route::Rollback(Some(name(n)?)),
            ["services", n, "split"] => Route::Split(Some(name(n)?)),
            ["services", n, "drain"] => Route::Drain(Some(name(n)?)),
            ["services", n, "watch"] => Route::Watch(Some(name(n)?)),
            ["drain"] => Route::Drain(None),
            ["watch"] => Route::Watch(None),
            ["switch"] => Route::Switch(None),
            ["rollback"] => Route::Rollback(None),
            ["split"] => Route::Split(None),
            ["history"] => Route::History,
            ["reload"] => Route::Reload,
            ["shutdown"] => Route::Shutdown,
            ["openapi.json"] => Route::OpenApi,
            ["services", n, "backend"] => Route::Backend(Some(name(n)?)),
            ["backend"] => Route::Backend(None),
            _ => return None,
        })
    }

    /// The one method the route answers.
    pub(super) fn method(&self) -> Method {
        match self {
            Route::Switch(_)
            | Route::Rollback(_)
            | Route::Split(_)
            | Route::Reload
            | Route::Shutdown
            | Route::Backend(_) => Method::POST,
            _ => Method::GET,
        }
    }

    /// The service named in the path, checked.
    pub(super) fn service(&self) -> Result<Option<&str>, ApiError> {
        let name = match self {
            Route::Service(n) => n,
            Route::Switch(Some(n))
            | Route::Rollback(Some(n))
            | Route::Split(Some(n))
            | Route::Drain(Some(n))
            | Route::Watch(Some(n))
            | Route::Backend(Some(n)) => n,
            _ => return Ok(None),
        };
        check_service_name(name).map(Some)
    }
}

/// Service names are `[a-z0-9._-]` (upper case is let through for the daemon to judge); a `%`
/// (percent-encoding) or anything else cannot name a service.
pub(super) fn check_service_name(name: &str) -> Result<&str, ApiError> {
    if name.contains('%') {
        return Err(ApiError::invalid(format!(
            "percent-encoded service name {name:?}: service names are [a-z0-9._-] and need no encoding"
        )));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(ApiError::invalid(format!(
            "invalid service name {name:?}: service names are [a-z0-9._-]"
        )));
    }
    Ok(name)
}

/// One request, start to finish. Never fails: errors become JSON error responses.
pub(super) async fn handle(
    shared: &Shared,
    peer: &Peer,
    activity: &ConnActivity,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match route_and_dispatch(shared, peer, activity, req).await {
        Ok(resp) => resp,
        Err(Failure { status, error }) => error_response(status, &error),
    };
    let status = response.status();
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), peer = %peer.desc, "API request failed");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), peer = %peer.desc, "API request");
    }
    response
}

/// An error response: the error and its HTTP status (usually `error.code.http_status()`).
pub(super) struct Failure {
    status: u16,
    error: ApiError,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure { status: error.code.http_status(), error }
    }
}

/// Authenticates, routes and runs a request.
pub(super) async fn route_and_dispatch(
    shared: &Shared,
    peer: &Peer,
    activity: &ConnActivity,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Failure> {
    if peer.metrics_only {
        return metrics_only(shared, &req).await;
    }
    if peer.tcp {
        let expected = shared.token.as_deref().unwrap_or_default();
        let read_only = shared.read_token.as_deref().unwrap_or_default();
        if bearer_matches(req.headers(), expected) {
            activity.authenticated.store(true, Ordering::Relaxed);
        } else if bearer_matches(req.headers(), read_only) {
            activity.authenticated.store(true, Ordering::Relaxed);
            if !is_read(req.method()) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "the read-only token may not change anything ({} {}); use the full token",
                        req.method(),
                        req.uri().path()
                    ),
                )
                .into());
            }
        } else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
            )
            .into());
        }
    }
    let body_timeout = (shared.limits.body_timeout, &shared.stats.body_timeouts);
    let path = req.uri().path();
    let who = requester(req.headers(), &peer.user, &peer.desc);
    if let Some(answer) = crate::fleet::api::route(shared.fleet.as_ref(), req.method(), path, &who).await {
        return Ok(json_response(&answer?));
    }
    if let Some(answer) = crate::fleet::etcd::api::route(&shared.control, req.method(), path).await {
        return Ok(json_response(&answer?));
    }
    let route = Route::parse(path).ok_or_else(|| ApiError::not_found(format!("no such path: {path}")))?;
    let allowed = route.method();
    if req.method() != allowed {
        let error =
            ApiError::invalid(format!("method {} not allowed on {path}; use {allowed}", req.method()));
        let mut resp = error_response(405, &error);
        let allow = if allowed == Method::POST { "POST" } else { "GET" };
        resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        return Ok(resp);
    }
    let service = route.service()?.map(str::to_owned);
    let requester = requester(req.headers(), &peer.user, &peer.desc);
    let control = shared.control.clone();

    let resp = match route {
        Route::Health => {
            let health = call(&control, |c| c.status().map(|s| HealthView::of(&s))).await?;
            let mut resp = json_response(&health);
            if !health.ok {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        }
        Route::Status => {
            let status = call(&control, |c| c.status()).await?;
            let mut value = crate::fleet::api::status_with_bgp(status, shared.fleet.as_ref());
            if let (Some(sync), serde_json::Value::Object(map)) = (&shared.sync, &mut value) {
                // Off the runtime: the view may count the flow table.
                let sync = sync.clone();
                let view = tokio::task::spawn_blocking(move || sync.view()).await.ok();
                map.insert("sync".into(), serde_json::to_value(view).unwrap_or_default());
            }
            json_response(&crate::fleet::etcd::api::with_fleet(&control, value).await)
        }
        Route::Services => json_response(&call(&control, |c| c.status().map(|s| s.services)).await?),
        Route::Service(_) => json_response(&call(&control, move |c| c.service(service.as_deref())).await?),
        Route::Switch(_) => {
            let body: SwitchRequest = read_json(req, false, body_timeout).await?;
            let out = call(&control, move |c| c.switch(service.as_deref(), &body, &requester)).await?;
            json_response(&out)
        }
        Route::Rollback(_) => {
            let body: RollbackRequest = read_json(req, true, body_timeout).await?;
            let out = call(&control, move |c| c.rollback(service.as_deref(), &body, &requester)).await?;
            json_response(&out)
        }
        Route::Split(_) => {
            let body: SplitRequest = read_json(req, false, body_timeout).await?;
            let out = call(&control, move |c| c.split(service.as_deref(), &body, &requester)).await?;
            json_response(&out)
        }
        Route::Drain(_) => json_response(&call(&control, move |c| c.drain(service.as_deref())).await?),
        Route::Watch(_) => json_response(&call(&control, move |c| c.watch(service.as_deref())).await?),
        Route::History => {
            let (service, limit) = history_query(req.uri().query())?;
            // In a fleet the history lives in etcd, with the hosts that applied each change.
            let name = service.clone();
            match call(&control, move |c| c.fleet_history(name.as_deref(), limit)).await? {
                Some(items) => json_response(&items),
                None => json_response(&call(&control, move |c| c.history(service.as_deref(), limit)).await?),
            }
        }
        Route::Reload => {
            let _: NoFields = read_json(req, true, body_timeout).await?;
            json_response(&call(&control, move |c| c.reload(&requester)).await?)
        }
        Route::Shutdown => {
            let body: ShutdownRequest = read_json(req, true, body_timeout).await?;
            call(&control, move |c| c.shutdown(&body, &requester)).await?;
            json_response(&serde_json::json!({ "ok": true }))
        }
        Route::Backend(_) => {
            let body: BackendRequest = read_json(req, false, body_timeout).await?;
            let out = call(&control, move |c| c.backend(service.as_deref(), &body, &requester)).await?;
            json_response(&out)
        }
        Route::OpenApi => response(200, "application/json", Bytes::from_static(OPENAPI_JSON.as_bytes())),
        Route::Metrics => {
            let mut text = call(&control, |c| c.metrics()).await?;
            shared.render_metrics(&mut text);
            if let Some(sync) = &shared.sync {
                sync.render_metrics(&mut text);
            }
            response(200, METRICS_CONTENT_TYPE, Bytes::from(text))
        }
    };
    Ok(resp)
}

/// Whether a method only reads: the read-only token may send these, nothing else (every
/// change, present or future, is a POST or another method).
pub(super) fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// A request on the `api.metrics` listener: `GET /metrics`, 404 for any other path, 405 for
/// another method.
async fn metrics_only(shared: &Shared, req: &Request<Incoming>) -> Result<Response<Full<Bytes>>, Failure> {
    let path = req.uri().path();
    if path != "/metrics" {
        return Err(ApiError::not_found(format!(
            "no such path: {path} (this listener serves only /metrics)"
        ))
        .into());
    }
    if req.method() != Method::GET {
        let error = ApiError::invalid(format!("method {} not allowed on /metrics; use GET", req.method()));
        let mut resp = error_response(405, &error);
        resp.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Ok(resp);
    }
    let mut text = call(&shared.control, |c| c.metrics()).await?;
    shared.render_metrics(&mut text);
    Ok(response(200, METRICS_CONTENT_TYPE, Bytes::from(text)))
}

/// Body of `POST /v1/reload`: nothing (or `{}`).
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct NoFields {}

/// Runs a `Control` call on the blocking pool.
pub(super) async fn call<T, F>(control: &Arc<dyn Control>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Control) -> Result<T, ApiError> + Send + 'static,
{
    let control = control.clone();
    tokio::task::spawn_blocking(move || f(&*control))
        .await
        .map_err(|e| ApiError::internal(format!("request handler failed: {e}")))?
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]. An empty body means `T::default()` when
/// `empty_ok`, else it is an error.
///
/// A body that has not fully arrived within `timeout.0` gets 408 (counted in `timeout.1`) and
/// the connection is closed.
pub(super) async fn read_json<T: DeserializeOwned + Default>(
    req: Request<Incoming>,
    empty_ok: bool,
    timeout: (Duration, &AtomicU64),
) -> Result<T, Failure> {
    let too_large = || Failure {
        status: 413,
        error: ApiError::invalid(format!("request body larger than {MAX_BODY_BYTES} bytes")),
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout.0, Limited::new(req.into_body(), MAX_BODY_BYTES).collect());
    let body = match collected.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(e)) => return Err(ApiError::invalid(format!("cannot read the request body: {e}")).into()),
        Err(_) => {
            timeout.1.fetch_add(1, Ordering::Relaxed);
            return Err(Failure {
                status: 408,
                error: ApiError::invalid(format!(
                    "request body not received within {}",
                    humantime::format_duration(timeout.0)
                )),
            });
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(ApiError::invalid("this request needs a JSON body").into())
        };
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")).into())
}

/// `service` and `limit` of `GET /v1/history`.
pub(super) fn history_query(query: Option<&str>) -> Result<(Option<String>, usize), ApiError> {
    let mut service = None;
    let mut limit = DEFAULT_HISTORY_LIMIT;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "service" if value.is_empty() => service = None,
            "service" => service = Some(check_service_name(value)?.to_owned()),
            "limit" => {
                limit =
                    value.parse::<usize>().ok().filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n)).ok_or_else(
                        || {
                            ApiError::invalid(format!(
                                "bad limit {value:?}: expected a whole number from 1 to {MAX_HISTORY_LIMIT}"
                            ))
                        },
                    )?;
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?} (expected service, limit)"
                )));
            }
        }
    }
    Ok((service, limit))
}

/// Whether the `Authorization` header carries `Bearer <expected>`.
pub(super) fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else { return false };
    let value = value.as_bytes();
    let Some((scheme, token)) = value.split_at_checked(7) else { return false };
    scheme.eq_ignore_ascii_case(b"bearer ") && constant_time_eq(token.trim_ascii(), expected.as_bytes())
}

/// Compares without an early exit, so the time taken says nothing about where the first
/// difference is (only, at most, about the length).
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// 200 with a JSON body.
pub(super) fn json_response<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            response(200, "application/json", Bytes::from(body))
        }
        Err(e) => error_response(500, &ApiError::internal(format!("cannot encode the response: {e}"))),
    }
}

/// An `ApiError::body()` JSON response.
pub(super) fn error_response(status: u16, error: &ApiError) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(&error.body())
        .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"cannot encode the error"}}"#.to_vec());
    body.push(b'\n');
    let mut resp = response(status, "application/json", Bytes::from(body));
    if status == 401 {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    if status == 413 || status == 408 {
        // The unread rest of the body makes the connection unusable.
        resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    resp
}

/// A response with a body and content type.
pub(super) fn response(status: u16, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}
