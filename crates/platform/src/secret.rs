//! Keeping secrets out of `Debug` output, logs and `natter-server config`.
//!
//! A [`Secret`] holds a key (the JWT secret, the admin secret): it prints
//! as `[redacted]` however it is formatted or serialized, and gives up its
//! value only where it is used. URLs stay plain strings — every client
//! library takes them as such — and [`redact_url`] hides the password in
//! one wherever a URL is shown.

use serde::{Serialize, Serializer};
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

/// What a secret prints as.
pub const REDACTED: &str = "[redacted]";

/// A secret string: `Debug` and `Serialize` show [`REDACTED`], and there is
/// no `Display`. It derefs to `str`, so `Option<Secret>::as_deref()` gives
/// the value to the one place that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the code that signs or compares with it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// `url` with the password of each URL in it replaced by `***`: a single
/// URL or a comma-separated list (a NATS cluster). A NATS URL's bare
/// userinfo is a token, so it is hidden whole; elsewhere a bare user name
/// is not a secret and stays. Anything that is not a URL is returned as it
/// is.
#[must_use]
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let scheme = &url[..scheme_end];
    let userinfo = &rest[..at];
    let hidden = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None if scheme.trim_start().starts_with("nats") || scheme.trim_start() == "tls" => {
            "***".to_owned()
        }
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{hidden}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::from("hunter2");
        assert_eq!(format!("{secret:?}"), REDACTED);
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        assert_eq!(
            serde_json::to_string(&secret).expect("serializes"),
            "\"[redacted]\""
        );
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn passwords_in_urls_are_hidden_and_the_rest_kept() {
        assert_eq!(
            redact_url("postgres://natter:s3cret@db:5432/natter?sslmode=require"),
            "postgres://natter:***@db:5432/natter?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/natter"),
            "postgres://postgres@127.0.0.1:5432/natter"
        );
        assert_eq!(
            redact_url("redis://:pw@redis:6379/0"),
            "redis://:***@redis:6379/0"
        );
        assert_eq!(
            redact_url("nats://a:b@n1:4222,nats://tok@n2:4222,nats://n3:4222"),
            "nats://a:***@n1:4222,nats://***@n2:4222,nats://n3:4222"
        );
        assert_eq!(redact_url("http://h/p@q"), "http://h/p@q");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
