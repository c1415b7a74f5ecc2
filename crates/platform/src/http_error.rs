//! The JSON error body on every HTTP answer that is not a success, and
//! fallbacks so that even axum's own rejections (404, 405, 413, 415, bad
//! JSON) carry `{code, message}` instead of plain text.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use natter_protocol::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;

/// An HTTP error: a code, a message, maybe a `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The body.
    pub body: ErrorBody,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorBody::new(code, message),
            retry_after: None,
        }
    }

    /// An opaque 500; the cause goes to the log, not the client.
    pub fn internal(cause: &anyhow::Error) -> Self {
        tracing::error!(error = ?cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(&e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(&e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.body.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            response.headers_mut().insert("retry-after", v);
        }
        response
    }
}

/// A JSON body extractor whose failures are docs/protocol.md §1's: 415 for a
/// wrong content type, 413 for an oversized body, 400 `invalid_request`
/// naming the field for anything else (axum's `Json` would say 422).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
        }
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            let text = text
                .trim_start_matches("Failed to deserialize the JSON body into the target type: ");
            let text = text.split(" at line ").next().unwrap_or(text);
            ApiError::new(ErrorCode::InvalidRequest, text)
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(ErrorCode::InvalidRequest, "request body is not valid JSON")
        }
        other => ApiError::new(ErrorCode::InvalidRequest, other.body_text()),
    }
}

/// Fallback for unknown paths: 404 `not_found`.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such resource")
}

/// Rewrites axum's bare 405 and 413 answers into JSON error bodies; use as
/// `axum::middleware::map_response`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        s if s.is_client_error() => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    };
    let message = match code {
        ErrorCode::MethodNotAllowed => "method not allowed here",
        ErrorCode::PayloadTooLarge => "request body is too large",
        ErrorCode::NotFound => "no such resource",
        _ => status.canonical_reason().unwrap_or("error"),
    };
    let mut rewritten = ApiError::new(code, message).into_response();
    *rewritten.status_mut() = status;
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use natter_protocol::http::Credentials;
    use proptest::prelude::*;
    use tower::ServiceExt;

    /// A route taking credentials as auth's do, behind the same layers.
    fn app() -> Router {
        Router::new()
            .route(
                "/",
                post(|JsonBody(c): JsonBody<Credentials>| async move { c.username }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(
                natter_protocol::limits::MAX_HTTP_BODY_BYTES,
            ))
            .layer(axum::middleware::map_response(json_errors))
    }

    fn content_type() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("application/json".to_owned())),
            Just(Some("application/json; charset=utf-8".to_owned())),
            Just(Some("application/problem+json".to_owned())),
            Just(Some("text/plain".to_owned())),
            Just(Some("multipart/form-data; boundary=x".to_owned())),
            "[ -~]{0,30}".prop_map(Some),
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            "\\PC{0,64}".prop_map(String::into_bytes),
            (".{0,40}", ".{0,40}").prop_map(|(u, p)| {
                serde_json::json!({"username": u, "password": p})
                    .to_string()
                    .into_bytes()
            }),
            (any::<i64>(), any::<bool>()).prop_map(|(u, p)| {
                serde_json::json!({"username": u, "password": p})
                    .to_string()
                    .into_bytes()
            }),
            (0..3_usize).prop_map(|n| vec![b'a'; natter_protocol::limits::MAX_HTTP_BODY_BYTES + n]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever body and content type arrive, the answer is a success
        /// or a typed JSON error of §1 (400, 413, 415), never a 500.
        #[test]
        fn arbitrary_bodies_get_typed_json_errors(ctype in content_type(), bytes in body()) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let (status, body) = runtime.block_on(async {
                let mut request = axum::http::Request::post("/");
                if let Some(ctype) = &ctype {
                    request = request.header("content-type", ctype);
                }
                let response = app()
                    .oneshot(request.body(Body::from(bytes.clone())).expect("request"))
                    .await
                    .expect("infallible");
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
                (status, body)
            });
            if status == 200 {
                return Ok(());
            }
            prop_assert!([400, 413, 415].contains(&status), "{status} for {ctype:?}");
            let error: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
            let code: ErrorCode = serde_json::from_value(error["code"].clone()).expect("a known code");
            prop_assert_eq!(code.http_status(), status);
            prop_assert!(error["message"].is_string());
        }
    }
}
