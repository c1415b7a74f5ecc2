//! The TLS crypto provider.
//!
//! rustls is built with `ring` only (async-nats already brings it), and
//! reqwest is built without a provider of its own (its `rustls` feature
//! would add aws-lc), so every process installs `ring` as the default
//! before the first HTTP client is built. Telemetry's `init` and the test
//! kit call this; calling it again is harmless.

use std::sync::Once;

/// Installs `ring` as the process-wide rustls provider, once.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
