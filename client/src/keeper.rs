//! The session's tokens, kept: a valid bearer token for whoever asks (the
//! link when it reconnects, the session for HTTP calls), renewed with the
//! refresh token when it expires or is refused (docs/protocol.md §2.7),
//! and saved to the [`Store`] after every change so the next start resumes
//! the same session.
//!
//! Renewals are serialised: two at once with one refresh token would
//! present a rotated token, which the server takes for theft and answers
//! by ending the session. Within the process a mutex does it; between two
//! natter processes sharing the saved session, a lock on a file beside it,
//! held around "read the saved refresh token, refresh, save the new one"
//! (docs/protocol.md §2.7).

use crate::auth::{AuthClient, RefreshError};
use crate::store::{Saved, Store};
use natter_protocol::ChannelId;
use natter_protocol::http::TokenResponse;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// A token is renewed this long before it expires.
const RENEW_BEFORE_SECS: i64 = 30;

/// Why no token can be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The token expired and there is no way to renew it.
    Expired,
    /// The session was ended by the server (logout or unregister elsewhere).
    Revoked,
    /// The auth service could not be asked; try again later.
    Unreachable(String),
}

/// One login's tokens.
#[derive(Debug)]
pub struct Keeper {
    auth: AuthClient,
    store: Option<Store>,
    saved: Mutex<Saved>,
}

impl Keeper {
    /// Keeps the tokens of a fresh login (and saves them).
    #[must_use]
    pub fn from_login(
        auth: AuthClient,
        store: Option<Store>,
        username: &str,
        granted: TokenResponse,
    ) -> Self {
        let saved = Saved {
            username: username.to_owned(),
            token: granted.token,
            refresh_token: Some(granted.refresh_token),
            expires_at: now_secs().saturating_add(i64::try_from(granted.expires_in).unwrap_or(0)),
            channel_id: None,
        };
        let keeper = Self::resumed(auth, store, saved);
        keeper.persist_now();
        keeper
    }

    /// Keeps a saved session's tokens.
    #[must_use]
    pub fn resumed(auth: AuthClient, store: Option<Store>, saved: Saved) -> Self {
        Self {
            auth,
            store,
            saved: Mutex::new(saved),
        }
    }

    /// Who the session is for.
    pub async fn username(&self) -> String {
        self.saved.lock().await.username.clone()
    }

    /// The current token as it is, for opening a socket (which renews it
    /// only when refused).
    pub async fn current(&self) -> String {
        self.saved.lock().await.token.clone()
    }

    /// A token good for a while: the current one, or a renewed one when it
    /// is about to expire.
    ///
    /// # Errors
    /// When it cannot be renewed.
    pub async fn token(&self) -> Result<String, Ended> {
        let stale = {
            let saved = self.saved.lock().await;
            // Without a refresh token the token is all there is: used as
            // it is, until the server refuses it.
            if saved.refresh_token.is_none() || saved.expires_at - RENEW_BEFORE_SECS > now_secs() {
                return Ok(saved.token.clone());
            }
            saved.token.clone()
        };
        self.renew(&stale).await
    }

    /// `refused` was turned down (a 401): a renewed token.
    ///
    /// # Errors
    /// When it cannot be renewed: the session is over, or auth is down.
    pub async fn renew(&self, refused: &str) -> Result<String, Ended> {
        let mut saved = self.saved.lock().await;
        if saved.token != refused {
            // Renewed meanwhile by someone else in this process.
            return Ok(saved.token.clone());
        }
        let _other_processes_wait = self.lock_file().await;
        if let Some(newer) = self.renewed_elsewhere(&saved) {
            // Another natter on this machine rotated the tokens of this
            // same session; presenting ours again would end it.
            let channel_id = saved.channel_id;
            *saved = Saved {
                channel_id,
                ..newer
            };
            return Ok(saved.token.clone());
        }
        let expired = saved.expires_at <= now_secs();
        let Some(refresh_token) = saved.refresh_token.clone() else {
            return Err(if expired {
                Ended::Expired
            } else {
                Ended::Revoked
            });
        };
        match self.auth.refresh(&refresh_token).await {
            Ok(granted) => {
                saved.token = granted.token;
                saved.refresh_token = Some(granted.refresh_token);
                saved.expires_at =
                    now_secs().saturating_add(i64::try_from(granted.expires_in).unwrap_or(0));
                self.persist(&saved);
                Ok(saved.token.clone())
            }
            Err(RefreshError::Refused | RefreshError::Lost(_)) => {
                // The refresh token is spent (or may be): never present it
                // again, from this process or the next.
                saved.refresh_token = None;
                self.forget();
                Err(if expired {
                    Ended::Expired
                } else {
                    Ended::Revoked
                })
            }
            Err(RefreshError::Unreachable(why)) => Err(Ended::Unreachable(why)),
        }
    }

    /// An exclusive lock on `<session file>.lock`, released when dropped;
    /// `None` without a session file (or when it cannot be had: then only
    /// this process's mutex serialises).
    async fn lock_file(&self) -> Option<std::fs::File> {
        let path = self.store.as_ref()?.path().with_extension("lock");
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).ok()?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ok()?;
            file.lock().ok()?;
            Some(file)
        })
        .await
        .ok()
        .flatten()
    }

    /// Remembers the channel the user is in, to return to it.
    pub async fn set_channel(&self, channel_id: Option<ChannelId>) {
        let mut saved = self.saved.lock().await;
        if saved.channel_id != channel_id {
            saved.channel_id = channel_id;
            self.persist(&saved);
        }
    }

    /// The channel the user was in.
    pub async fn channel(&self) -> Option<ChannelId> {
        self.saved.lock().await.channel_id
    }

    /// Forgets the saved session (logout, unregister, a session that ended).
    pub fn forget(&self) {
        if let Some(store) = &self.store {
            let _ = store.clear();
        }
    }

    fn renewed_elsewhere(&self, ours: &Saved) -> Option<Saved> {
        let theirs = self.store.as_ref()?.load()?;
        (theirs.username == ours.username
            && theirs.token != ours.token
            && theirs.refresh_token.is_some()
            && theirs.refresh_token != ours.refresh_token)
            .then_some(theirs)
    }

    fn persist_now(&self) {
        if let Ok(saved) = self.saved.try_lock() {
            self.persist(&saved);
        }
    }

    /// Saves the session; a file that cannot be written costs only the
    /// resume at the next start, so the error is not the user's problem now.
    fn persist(&self, saved: &Saved) {
        if let Some(store) = &self.store {
            let _ = store.save(saved);
        }
    }
}

/// Now, in Unix seconds.
#[must_use]
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
