//! The saved session: the login kept in the user's config directory so the
//! next start resumes it (`/logout` clears it).
//!
//! One JSON file maps each auth address to its session (who, the token,
//! the refresh token, when the token expires, the channel the user was in).
//! It holds bearer secrets, so it is written with mode 0600 in a 0700
//! directory, atomically (a temporary file renamed over it): a crash never
//! leaves half a file, and a refresh token rotated by one run is the one
//! the next run finds — presenting a rotated refresh token again would end
//! the session (docs/protocol.md §2.7).

use natter_protocol::ChannelId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One saved session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// Who is logged in.
    pub username: String,
    /// The bearer token.
    pub token: String,
    /// The refresh token, when the server gives one.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// When `token` expires, in Unix seconds.
    pub expires_at: i64,
    /// The channel the user was in, to return to.
    #[serde(default)]
    pub channel_id: Option<ChannelId>,
}

/// The session file, seen for one server.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    server: String,
}

impl Store {
    /// The file at `path`, for the auth service at `server`.
    #[must_use]
    pub fn new(path: PathBuf, server: &str) -> Self {
        Self {
            path,
            server: server.to_owned(),
        }
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The session saved for this server, if any (an unreadable file is
    /// no session).
    #[must_use]
    pub fn load(&self) -> Option<Saved> {
        self.read_all().remove(&self.server)
    }

    /// Saves `saved` as this server's session.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        let mut all = self.read_all();
        all.insert(self.server.clone(), saved.clone());
        self.write_all(&all)
    }

    /// Forgets this server's session.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn clear(&self) -> std::io::Result<()> {
        let mut all = self.read_all();
        if all.remove(&self.server).is_none() {
            return Ok(());
        }
        self.write_all(&all)
    }

    fn read_all(&self) -> BTreeMap<String, Saved> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write_all(&self, all: &BTreeMap<String, Saved>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(all).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        {
            let mut file = private_file(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::create(path)
}

/// The session file when none is given: `natter/session.json` under
/// `$XDG_CONFIG_HOME` or `~/.config`; `None` without a home directory (the
/// login then lasts as long as the process).
#[must_use]
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("natter").join("session.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(name: &str) -> Saved {
        Saved {
            username: name.into(),
            token: format!("token-of-{name}"),
            refresh_token: Some(format!("refresh-of-{name}")),
            expires_at: 1_700_000_000,
            channel_id: Some(ChannelId(3)),
        }
    }

    fn temp_path() -> PathBuf {
        std::env::temp_dir()
            .join(format!("natter-store-{}", uuid::Uuid::new_v4()))
            .join("config")
            .join("session.json")
    }

    #[test]
    fn a_saved_session_is_found_again_for_its_server_only() {
        let path = temp_path();
        let here = Store::new(path.clone(), "http://a");
        let there = Store::new(path.clone(), "http://b");
        assert_eq!(here.load(), None);
        here.save(&saved("alice")).expect("save");
        there.save(&saved("bob")).expect("save");
        assert_eq!(here.load(), Some(saved("alice")));
        assert_eq!(there.load(), Some(saved("bob")));

        here.clear().expect("clear");
        assert_eq!(here.load(), None);
        assert_eq!(there.load(), Some(saved("bob")), "other servers stay");
        let _ = std::fs::remove_dir_all(path.parent().and_then(Path::parent).expect("dir"));
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_path();
        Store::new(path.clone(), "http://a")
            .save(&saved("alice"))
            .expect("save");
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir = path.parent().expect("dir");
        let dir_mode = std::fs::metadata(dir).expect("dir").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let _ = std::fs::remove_dir_all(dir.parent().expect("root"));
    }

    #[test]
    fn a_corrupt_file_is_no_session_and_is_replaced_by_the_next_save() {
        let path = temp_path();
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        std::fs::write(&path, "{not json").expect("write");
        let store = Store::new(path.clone(), "http://a");
        assert_eq!(store.load(), None);
        store.save(&saved("alice")).expect("save");
        assert_eq!(store.load(), Some(saved("alice")));
        let _ = std::fs::remove_dir_all(path.parent().and_then(Path::parent).expect("dir"));
    }
}
