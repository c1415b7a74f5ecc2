//! `natter-server admin …`: the command-line client of message's admin API
//! (`natter_message`'s `admin` module, `/admin/v1` on message's port). It
//! sends `NATTER_ADMIN_SECRET` as a Bearer token and prints the JSON
//! answer, pretty, to stdout (pipe it to `jq`).

use anyhow::Context;
use natter_platform::secret::Secret;
use serde_json::Value;

/// One request to the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET online`.
    Online,
    /// `GET gateways`.
    Gateways,
    /// `POST users/{username}/disconnect`.
    Disconnect(String),
    /// `GET streams`.
    Streams,
    /// `GET dlq`.
    DeadLetters,
    /// `POST dlq/redrive` with this body.
    Redrive(Value),
}

/// Sends `request` to the admin API at `base` (message's address, e.g.
/// `http://natter-message:8091`) and returns its JSON answer.
///
/// # Errors
/// When no secret is set, the API does not answer, or it answers with an
/// error (its message is the error's).
pub async fn call(base: &str, secret: Option<&Secret>, request: &Request) -> anyhow::Result<Value> {
    let secret = secret.context("NATTER_ADMIN_SECRET (or --admin-secret) is required")?;
    let base = base.trim_end_matches('/');
    let http = reqwest::Client::new();
    let builder = match request {
        Request::Online => http.get(format!("{base}/admin/v1/online")),
        Request::Gateways => http.get(format!("{base}/admin/v1/gateways")),
        Request::Disconnect(username) => {
            http.post(format!("{base}/admin/v1/users/{username}/disconnect"))
        }
        Request::Streams => http.get(format!("{base}/admin/v1/streams")),
        Request::DeadLetters => http.get(format!("{base}/admin/v1/dlq")),
        Request::Redrive(body) => http.post(format!("{base}/admin/v1/dlq/redrive")).json(body),
    };
    let response = builder
        .bearer_auth(secret.expose())
        .send()
        .await
        .with_context(|| format!("reaching the admin API at {base}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("the admin API answered {status} without JSON"))?;
    anyhow::ensure!(
        status.is_success(),
        "the admin API refused ({status}): {}",
        body["message"].as_str().unwrap_or("no message")
    );
    Ok(body)
}
