//! The auth service's HTTP API (docs/protocol.md §1), as the client
//! calls it. Every failure comes back as one readable line.

use crate::render::describe_error;
use natter_protocol::ErrorBody;
use natter_protocol::http::{Credentials, RefreshRequest, TokenResponse, UserView, paths};
use serde::de::DeserializeOwned;

/// Why a refresh got no new tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshError {
    /// The refresh token is unknown, expired, rotated or revoked (401):
    /// only a new login helps.
    Refused,
    /// The request was sent but its answer never came: the server may have
    /// rotated the token, and sending it again would be a reuse that ends
    /// the session (docs/protocol.md §2.7), so only a new login helps.
    Lost(String),
    /// The auth service could not be reached; nothing was sent, so the
    /// same refresh token may be tried again later.
    Unreachable(String),
}

/// A client of one auth service.
#[derive(Debug, Clone)]
pub struct AuthClient {
    base: String,
    http: reqwest::Client,
}

impl AuthClient {
    /// A client for the auth service at `base` (e.g. `http://127.0.0.1:8080`).
    #[must_use]
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: {
                // rustls is built with ring only (reqwest's own provider
                // feature would add aws-lc); install it before the first
                // client. Err: one is installed already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
        }
    }

    /// `POST /register`.
    ///
    /// # Errors
    /// One readable line.
    pub async fn register(&self, username: &str, password: &str) -> Result<UserView, String> {
        let body = credentials(username, password);
        let response = self
            .send(self.http.post(self.url(paths::REGISTER)).json(&body))
            .await?;
        read_json(response).await
    }

    /// `POST /login`: the token.
    ///
    /// # Errors
    /// One readable line.
    pub async fn login(&self, username: &str, password: &str) -> Result<TokenResponse, String> {
        let body = credentials(username, password);
        let response = self
            .send(self.http.post(self.url(paths::LOGIN)).json(&body))
            .await?;
        read_json(response).await
    }

    /// `POST /refresh`: the next token pair.
    ///
    /// # Errors
    /// [`RefreshError::Refused`] when only a new login helps.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenResponse, RefreshError> {
        let body = RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        let response = self
            .http
            .post(self.url(paths::REFRESH))
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let why = format!(
                    "cannot reach the auth service at {}: {}",
                    self.base,
                    root_cause(&e)
                );
                if e.is_connect() {
                    RefreshError::Unreachable(why)
                } else {
                    RefreshError::Lost(why)
                }
            })?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(RefreshError::Refused);
        }
        read_json(response).await.map_err(RefreshError::Lost)
    }

    /// `POST /logout`.
    ///
    /// # Errors
    /// One readable line.
    pub async fn logout(&self, token: &str) -> Result<(), String> {
        let response = self
            .send(self.http.post(self.url(paths::LOGOUT)).bearer_auth(token))
            .await?;
        read_empty(response).await
    }

    /// `POST /unregister`.
    ///
    /// # Errors
    /// One readable line.
    pub async fn unregister(&self, token: &str) -> Result<(), String> {
        let response = self
            .send(
                self.http
                    .post(self.url(paths::UNREGISTER))
                    .bearer_auth(token),
            )
            .await?;
        read_empty(response).await
    }

    /// `GET /me`.
    ///
    /// # Errors
    /// One readable line.
    pub async fn me(&self, token: &str) -> Result<UserView, String> {
        let response = self
            .send(self.http.get(self.url(paths::ME)).bearer_auth(token))
            .await?;
        read_json(response).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        request.send().await.map_err(|e| {
            format!(
                "cannot reach the auth service at {}: {}",
                self.base,
                root_cause(&e)
            )
        })
    }
}

fn credentials(username: &str, password: &str) -> Credentials {
    Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    }
}

async fn read_json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, String> {
    if response.status().is_success() {
        response
            .json::<T>()
            .await
            .map_err(|e| format!("the auth service sent an unexpected answer: {e}"))
    } else {
        Err(failure(response).await)
    }
}

async fn read_empty(response: reqwest::Response) -> Result<(), String> {
    if response.status().is_success() {
        Ok(())
    } else {
        Err(failure(response).await)
    }
}

/// The error body's meaning; for a rate limit, when to try again.
async fn failure(response: reqwest::Response) -> String {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match response.json::<ErrorBody>().await {
        Ok(body) => {
            let text = describe_error(body.code, &body.message);
            match retry_after {
                Some(secs) => format!("{text} (retry in {secs} s)"),
                None => text,
            }
        }
        Err(_) => format!("the auth service answered HTTP {status}"),
    }
}

/// The innermost cause of an error ("connection refused", "invalid peer
/// certificate: UnknownIssuer"): reqwest's own text names only the URL.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
