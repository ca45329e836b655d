//! The HTTP API: routes, request checks and JSON errors.
//!
//! Every failure a client can cause is a 4xx with a JSON body
//! `{"error": "..."}` saying what was wrong; a full queue is 503 with
//! `Retry-After`. Requests are checked and tokenized here, on the async
//! threads, so that only well-formed work reaches the model's queue.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde_json::{json, Map, Value};

use crate::serve::batcher::{Job, SubmitError};
use crate::serve::metrics::{Gauges, UNKNOWN_ADAPTER};
use crate::serve::registry::{validate_name, ServedAdapter};
use crate::serve::{codec, openapi, AppState};
use crate::tasks::formats::type_name;

/// A 4xx/5xx answer with a JSON body `{"error": message}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    retry_after: Option<u32>,
    bearer: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
            bearer: false,
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
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/adapters", get(list_adapters).post(load_adapter))
        .route("/v1/adapters/{name}", delete(unload_adapter))
        .route("/v1/adapters/{name}/predict", post(predict))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; see GET /openapi.json for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route; see GET /openapi.json for the API",
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

/// Parses a JSON object body, naming the problem.
fn parse_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(body_error)?;
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

fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "request body is over the limit (--max-body-bytes); send fewer or shorter inputs",
        )
    } else {
        ApiError::new(status, format!("cannot read the request body: {rejection}"))
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
    body: Result<Bytes, BytesRejection>,
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
    body: Result<Bytes, BytesRejection>,
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
    body: Result<Bytes, BytesRejection>,
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
