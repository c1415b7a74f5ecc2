//! auth's HTTP API as a test calls it: JSON in, the raw response out, so
//! a test can assert on statuses and bodies.

use crate::PASSWORD;
use natter_protocol::http::{TokenResponse, paths};
use serde_json::{Value, json};

/// A client of the auth service at one address.
#[derive(Clone)]
pub struct AuthClient {
    http: reqwest::Client,
    url: String,
}

impl AuthClient {
    /// A client of auth at `url` (`http://host:port`).
    #[must_use]
    pub fn new(http: reqwest::Client, url: String) -> Self {
        Self { http, url }
    }

    /// POSTs JSON to an auth path, with a bearer token if given.
    ///
    /// # Panics
    /// When auth does not answer.
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("auth answers")
    }

    /// `GET` an auth path with a bearer token.
    ///
    /// # Panics
    /// When auth does not answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("auth answers")
    }

    /// `POST /register`.
    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.post(
            paths::REGISTER,
            &json!({"username": username, "password": password}),
            None,
        )
        .await
    }

    /// `POST /login`.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.post(
            paths::LOGIN,
            &json!({"username": username, "password": password}),
            None,
        )
        .await
    }

    /// Registers `username` with [`PASSWORD`] and logs in: the token.
    ///
    /// # Panics
    /// When either step fails.
    pub async fn user(&self, username: &str) -> String {
        let r = self.register(username, PASSWORD).await;
        assert_eq!(r.status(), 201, "register {username}");
        self.token(username).await
    }

    /// Logs in an existing user with [`PASSWORD`]: the token.
    ///
    /// # Panics
    /// When login fails.
    pub async fn token(&self, username: &str) -> String {
        let r = self.login(username, PASSWORD).await;
        assert_eq!(r.status(), 200, "login {username}");
        r.json::<TokenResponse>().await.expect("token body").token
    }
}
