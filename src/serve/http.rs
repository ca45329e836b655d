//! The HTTP API: routes, request checks and JSON errors.
//!
//! Every failure a client can cause is a 4xx with a JSON body
//! `{"error": "..."}` saying what was wrong; a full queue is 503 with
//! `Retry-After`. Requests are checked and tokenized here, on the async
//! threads, so that only well-formed work reaches the model's queue.
//!
//! The exceptions are what hyper handles before axum sees a request: a bad
//! request line, header or `Content-Length` gets hyper's own empty 400 (or
//! 414, 431), and a request head not in within `--request-timeout-secs`
//! has its connection closed without an answer (hyper reads heads; the
//! socket keeps their deadline, see `RequestClock`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Map, Value};

use crate::serve::batcher::{Job, SubmitError};
use crate::serve::metrics::{Gauges, UNKNOWN_ADAPTER};
use crate::serve::registry::{validate_name, ServedAdapter};
use crate::serve::{codec, openapi, AppState, RequestClock};
use crate::tasks::formats::type_name;

/// A 4xx/5xx answer with a JSON body `{"error": message}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    retry_after: Option<u32>,
    bearer: bool,
    /// The body was not read to its end: the connection cannot carry
    /// another request.
    close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            bearer: false,
            close: false,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            bearer: true,
            ..Self::new(StatusCode::UNAUTHORIZED, message)
        }
    }

    /// A request body that could not be read whole.
    fn body(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            close: true,
            ..Self::new(status, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, json_body(&json!({"error": self.message}))).into_response();
        let headers = response.headers_mut();
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.bearer {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ptuning admin\""),
            );
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON body with its content type.
fn json_body(value: &Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

fn ok_json(status: StatusCode, value: &Value) -> Response {
    let mut r = json_body(value);
    *r.status_mut() = status;
    r
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/adapters", get(list_adapters).post(load_adapter))
        .route("/v1/adapters/{name}", delete(unload_adapter))
        .route("/v1/adapters/{name}/predict", post(predict))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    // Around the routes whole: a layer of `routes` would run inside each
    // route, before axum adds the Allow header that the 405s are made from.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(name_allowed_methods))
        .layer(middleware::from_fn(off_the_clock))
}

/// When a request's body must be in: set from its connection's
/// [`RequestClock`] (absent in-process, where the body is given whole).
#[derive(Clone, Copy)]
struct BodyDeadline(tokio::time::Instant);

/// Takes a request off its connection's clock while it is handled, and
/// gives its body the rest of the request's time.
async fn off_the_clock(mut req: Request, next: Next) -> Response {
    let clock = req
        .extensions()
        .get::<ConnectInfo<RequestClock>>()
        .map(|c| c.0.clone());
    let _handling = clock.map(|clock| {
        let (deadline, handling) = clock.handling();
        req.extensions_mut().insert(BodyDeadline(deadline));
        handling
    });
    next.run(req).await
}

/// Makes axum's bare 405 a JSON error naming the methods the path takes
/// (axum knows them only as the `Allow` header of its answer).
async fn name_allowed_methods(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = next.run(req).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let allowed = allow
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .replace(',', ", ");
    let path: String = uri.path().chars().take(80).collect();
    let mut answer = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {path}; allowed: {allowed}"),
    )
    .into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see GET /openapi.json for the API",
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let status = if state.batcher.is_closed() {
        "shutting_down"
    } else {
        "ok"
    };
    let code = if state.batcher.is_closed() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    ok_json(
        code,
        &json!({
            "status": status,
            "adapters": state.registry.len(),
            "queue_depth": state.batcher.depth(),
        }),
    )
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(Gauges {
        queue_depth: state.batcher.depth(),
        queue_capacity: state.batcher.capacity(),
        adapters: state.registry.len(),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn openapi_json() -> Response {
    ok_json(StatusCode::OK, &openapi::spec())
}

async fn list_adapters(State(state): State<Arc<AppState>>) -> Response {
    let adapters: Vec<Value> = state.registry.all().iter().map(|a| a.summary()).collect();
    let c = &state.backbone.config;
    ok_json(
        StatusCode::OK,
        &json!({
            "backbone": {
                "name": state.backbone_name,
                "model_type": c.model_type.as_str(),
                "hidden_size": c.hidden_size,
                "num_layers": c.num_hidden_layers,
                "weights_hash": state.backbone_hash,
            },
            "adapters": adapters,
        }),
    )
}

/// Checks `Authorization: Bearer <token>` against the admin token.
fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.config.admin_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin endpoints are disabled: start the server with --admin-token (or PTUNING_ADMIN_TOKEN)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => Err(ApiError::unauthorized(
            "admin token required: send Authorization: Bearer <token>",
        )),
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("bad admin token")),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= (x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

/// A request body, read whole: at most `--max-body-bytes` (413 beyond, at
/// once when the declared length is over) and by the request's deadline
/// (408 after).
struct RequestBody(Bytes);

impl FromRequest<Arc<AppState>> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        // hyper has refused a Content-Length that is not a number.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Refused before reading: reading would wait for bytes a client may
        // never send.
        if declared.is_some_and(|n| n > state.config.max_body_bytes as u64) {
            return Err(body_too_large());
        }
        let deadline = req.extensions().get::<BodyDeadline>().map_or_else(
            || tokio::time::Instant::now() + state.config.request_timeout,
            |d| d.0,
        );
        match tokio::time::timeout_at(deadline, Bytes::from_request(req, state)).await {
            Ok(Ok(bytes)) => Ok(RequestBody(bytes)),
            Ok(Err(rejection)) => Err(body_error(rejection)),
            Err(_) => Err(ApiError::body(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time (--request-timeout-secs)",
            )),
        }
    }
}

/// Parses a JSON object body, naming the problem.
fn parse_object(body: Result<RequestBody, ApiError>) -> Result<Map<String, Value>, ApiError> {
    let RequestBody(bytes) = body?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_request(format!(
            "invalid request: expected a JSON object, found {}",
            type_name(&other)
        ))),
    }
}

fn body_too_large() -> ApiError {
    ApiError::body(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body is over the limit (--max-body-bytes); send fewer or shorter inputs",
    )
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        body_too_large()
    } else {
        ApiError::body(status, format!("cannot read the request body: {rejection}"))
    }
}

fn unknown_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field {k:?}; expected {}",
            allowed.join(", ")
        )));
    }
    Ok(())
}

async fn load_adapter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<RequestBody, ApiError>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let map = parse_object(body)?;
    unknown_fields(&map, &["name", "path"])?;
    let field = |key: &str| -> Result<String, ApiError> {
        match map.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key:?} must be a string, found {}",
                type_name(other)
            ))),
            None => Err(ApiError::bad_request(format!(
                "{key:?} is required: {{\"name\": \"...\", \"path\": \"RUN_DIR\"}}"
            ))),
        }
    };
    let name = field("name")?;
    let path = field("path")?;
    validate_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if state.registry.contains(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("an adapter named {name:?} is already loaded; DELETE it first"),
        ));
    }
    let loader = Arc::clone(&state);
    let loaded = tokio::task::spawn_blocking(move || {
        loader.load_adapter(&name, std::path::Path::new(&path))
    })
    .await
    .map_err(|_| ApiError::bad_request("loading the adapter failed"))?;
    match loaded {
        Ok(adapter) => Ok(ok_json(
            StatusCode::CREATED,
            &json!({"loaded": adapter.summary()}),
        )),
        Err(e) => {
            let message = e.to_string();
            let status = if message.contains("already loaded") {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(ApiError::new(
                status,
                format!("cannot load the adapter: {message}"),
            ))
        }
    }
}

async fn unload_adapter(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    check_admin(&state, &headers)?;
    let Path(name) = name.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match state.registry.remove(&name) {
        Some(_) => Ok(ok_json(StatusCode::OK, &json!({"unloaded": name}))),
        None => Err(unknown_adapter(&state, &name)),
    }
}

fn unknown_adapter(state: &AppState, name: &str) -> ApiError {
    let names = state.registry.names();
    let loaded = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    let shown: String = name.chars().take(80).collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("unknown adapter {shown:?}; loaded: {loaded}"),
    )
}

async fn predict(
    State(state): State<Arc<AppState>>,
    name: Result<Path<String>, PathRejection>,
    body: Result<RequestBody, ApiError>,
) -> Response {
    let started = Instant::now();
    let _in_flight = state.metrics.start_request();
    let adapter = match &name {
        Ok(Path(n)) => state.registry.get(n),
        Err(_) => None,
    };
    let label = adapter
        .as_ref()
        .map_or(UNKNOWN_ADAPTER.to_string(), |a| a.name.clone());
    let result = match (name, adapter) {
        (Err(e), _) => Err(ApiError::bad_request(e.body_text())),
        (Ok(Path(n)), None) => Err(unknown_adapter(&state, &n)),
        (Ok(_), Some(adapter)) => run_predict(&state, adapter, body).await,
    };
    let response = match result {
        Ok(value) => ok_json(StatusCode::OK, &value),
        Err(e) => e.into_response(),
    };
    state.metrics.record_request(
        &label,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn run_predict(
    state: &AppState,
    adapter: Arc<ServedAdapter>,
    body: Result<RequestBody, ApiError>,
) -> Result<Value, ApiError> {
    let map = parse_object(body)?;
    unknown_fields(&map, &["inputs", "truncate"])?;
    let truncate = match map.get("truncate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "\"truncate\" must be true or false, found {}",
                type_name(other)
            )))
        }
    };
    let inputs = match map.get("inputs") {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "\"inputs\" must be an array of texts or [text, text] pairs, found {}",
                type_name(other)
            )))
        }
        None => {
            return Err(ApiError::bad_request(
                "\"inputs\" is required: {\"inputs\": [\"text\", ...]}",
            ))
        }
    };
    if inputs.is_empty() {
        return Err(ApiError::bad_request(
            "empty inputs: send at least one input",
        ));
    }
    let limit = state.config.max_inputs;
    if inputs.len() > limit {
        return Err(ApiError::bad_request(format!(
            "too many inputs: {} in one request, the limit is {limit} (--max-inputs); split the request",
            inputs.len()
        )));
    }
    let codec::Encoded { sequences, reader } =
        codec::encode(&state.text, &adapter, inputs, truncate, limit)?;
    if sequences.is_empty() {
        // Only empty texts (no word to tag): nothing for the model to do.
        return Ok(json!({
            "adapter": adapter.name,
            "outputs": codec::decode(&adapter, reader, &[])?,
        }));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    state
        .batcher
        .submit(Job {
            adapter: Arc::clone(&adapter),
            sequences,
            reply: tx,
        })
        .map_err(|e| match e {
            SubmitError::Full => ApiError::unavailable(
                "the server is busy: the request queue is full (--queue); retry shortly",
            ),
            SubmitError::Closed => ApiError::unavailable("the server is shutting down"),
        })?;
    let logits = match rx.await {
        Ok(Ok(logits)) => logits,
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the model failed on this request: {e}"),
            ))
        }
        Err(_) => return Err(ApiError::unavailable("the server is shutting down")),
    };
    Ok(json!({
        "adapter": adapter.name,
        "outputs": codec::decode(&adapter, reader, &logits)?,
    }))
}
