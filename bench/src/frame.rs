//! The few fields of a server frame the load generator reads, decoded
//! without building a `serde_json::Value` (the generator decodes hundreds
//! of thousands of frames a second and must not be the bottleneck).

use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub content: Option<Cow<'a, str>>,
    #[serde(default)]
    pub seq: Option<i64>,
}

impl<'a> Frame<'a> {
    pub fn parse(text: &'a str) -> anyhow::Result<Self> {
        Ok(serde_json::from_str(text)?)
    }

    /// The send time a bench message carries as its content (µs since the
    /// run's epoch).
    pub fn sent_micros(&self) -> Option<u64> {
        self.content.as_deref().and_then(|c| c.parse().ok())
    }
}
