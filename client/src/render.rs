//! What the client shows: every outcome and push is an [`Event`], and
//! [`render`] turns one into exactly one line. Pure: colour is a parameter,
//! decided once at start ([`colors_enabled`]).

use natter_protocol::ErrorCode;
use natter_protocol::frames::ConnectionStatus;
use natter_protocol::{ChannelId, Seq, time_format};
use owo_colors::{OwoColorize, Style};
use std::time::Duration;
use time::OffsetDateTime;

/// One thing to show, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A neutral outcome ("logged in as alice").
    Info(String),
    /// Something failed, already phrased for people.
    Error(String),
    /// A chat message of the entered channel (history, live or own).
    Message {
        /// The channel.
        channel_id: ChannelId,
        /// Its seq.
        seq: Seq,
        /// The writer; `None` once they have unregistered.
        username: Option<String>,
        /// The text.
        content: String,
        /// When it was stored.
        sent_at: OffsetDateTime,
    },
    /// New messages in a channel one has not entered.
    Unread {
        /// The channel.
        channel_id: ChannelId,
        /// Its title.
        title: String,
        /// How many the user has not read.
        unread: i64,
    },
    /// Someone invited the user.
    InviteReceived(String),
    /// Someone accepted the user's invitation.
    InviteAccepted(String),
    /// The user was made a member of a new channel.
    ChannelJoined {
        /// The channel.
        channel_id: ChannelId,
        /// Its title.
        title: String,
    },
    /// Someone is typing in the entered channel.
    Typing {
        /// The channel.
        channel_id: ChannelId,
        /// Who.
        username: String,
    },
    /// One connection of `/connections` or `/pending`.
    Connection {
        /// The other user.
        username: String,
        /// The pair's state.
        status: ConnectionStatus,
        /// Whether they are online.
        online: bool,
    },
    /// One channel of `/channels`.
    Channel {
        /// The channel.
        channel_id: ChannelId,
        /// Its title.
        title: String,
        /// Its member count.
        head_count: i32,
        /// Messages not yet read.
        unread: i64,
    },
    /// The link (the socket to the gateway) dropped; the next try is in
    /// `retry_in`.
    LinkLost {
        /// Why, briefly.
        reason: String,
        /// When the client tries again.
        retry_in: Duration,
    },
    /// The socket is back.
    Reconnected,
    /// The session was logged out or unregistered elsewhere.
    SessionRevoked,
}

/// The styles of the few kinds of text, all plain when colour is off.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    error: Style,
    notice: Style,
    name: Style,
    dim: Style,
}

impl Palette {
    /// Colours when `color`, else plain text.
    #[must_use]
    pub fn new(color: bool) -> Self {
        if color {
            Self {
                error: Style::new().red().bold(),
                notice: Style::new().yellow(),
                name: Style::new().cyan().bold(),
                dim: Style::new().dimmed(),
            }
        } else {
            Self {
                error: Style::new(),
                notice: Style::new(),
                name: Style::new(),
                dim: Style::new(),
            }
        }
    }
}

/// Whether to colour stdout: a terminal that supports it and no `NO_COLOR`
/// (the supports-color crate honours `NO_COLOR`, `TERM=dumb` and pipes).
#[must_use]
pub fn colors_enabled() -> bool {
    supports_color::on(supports_color::Stream::Stdout).is_some()
}

/// One line for `event`.
#[must_use]
pub fn render(event: &Event, p: &Palette) -> String {
    match event {
        Event::Info(text) => text.clone(),
        Event::Error(text) => format!("{} {text}", "error:".style(p.error)),
        Event::Message {
            username,
            content,
            sent_at,
            ..
        } => {
            let who = username.as_deref().unwrap_or("(deleted user)");
            format!(
                "{} {}: {content}",
                format!("[{}]", clock(*sent_at)).style(p.dim),
                who.style(p.name)
            )
        }
        Event::Unread {
            channel_id,
            title,
            unread,
        } => format!(
            "{} {unread} unread in {title} (channel {channel_id}); /enter {channel_id}",
            "*".style(p.notice)
        ),
        Event::InviteReceived(name) => format!(
            "{} {} invited you; /accept {name} or /reject {name}",
            "*".style(p.notice),
            name.style(p.name)
        ),
        Event::InviteAccepted(name) => format!(
            "{} {} accepted your invitation",
            "*".style(p.notice),
            name.style(p.name)
        ),
        Event::ChannelJoined { channel_id, title } => format!(
            "{} you were added to {title} (channel {channel_id}); /enter {channel_id}",
            "*".style(p.notice)
        ),
        Event::Typing { username, .. } => {
            format!("{}", format!("{username} is typing…").style(p.dim))
        }
        Event::Connection {
            username,
            status,
            online,
        } => format!(
            "{} {} {}",
            username.style(p.name),
            status.as_str(),
            if *online { "online" } else { "offline" }
        ),
        Event::Channel {
            channel_id,
            title,
            head_count,
            unread,
        } => {
            let members = if *head_count == 1 {
                "member"
            } else {
                "members"
            };
            format!("{channel_id} {title} ({head_count} {members}, {unread} unread)")
        }
        Event::LinkLost { reason, retry_in } => format!(
            "{} connection lost ({reason}); reconnecting in {:.1}s",
            "*".style(p.notice),
            retry_in.as_secs_f64()
        ),
        Event::Reconnected => format!("{} reconnected", "*".style(p.notice)),
        Event::SessionRevoked => format!(
            "{} your session was ended (logged out or unregistered); /login again",
            "*".style(p.notice)
        ),
    }
}

/// `HH:MM` of a message's time (UTC, as the server sends it).
fn clock(t: OffsetDateTime) -> String {
    let text = time_format::format(t);
    text.get(11..16).map_or(text.clone(), str::to_owned)
}

/// An error code's meaning, in one line. `detail` is the server's human
/// message, kept only where it names something the user needs (which
/// users, which field).
#[must_use]
pub fn describe_error(code: ErrorCode, detail: &str) -> String {
    match code {
        ErrorCode::InvalidRequest => format!("the server refused that: {detail}"),
        ErrorCode::Unauthorized => {
            "you are not logged in, or your session has ended; /login".into()
        }
        ErrorCode::RateLimited => "too many requests; wait a moment and try again".into(),
        ErrorCode::Unavailable => {
            "the server is busy; try again (it may or may not have taken effect)".into()
        }
        ErrorCode::Internal => "the server failed; try again later".into(),
        ErrorCode::NotFound => "no such channel or invite code".into(),
        ErrorCode::UsernameTaken => "that username is taken".into(),
        ErrorCode::InvalidCredentials => "wrong username or password".into(),
        ErrorCode::PayloadTooLarge => "that is too long".into(),
        ErrorCode::UnsupportedMediaType | ErrorCode::MethodNotAllowed => {
            format!("the server does not understand this client: {detail}")
        }
        ErrorCode::InvalidInviteCode => "no user has that invite code".into(),
        ErrorCode::SelfInvite => "that is your own invite code".into(),
        ErrorCode::AlreadyConnected => "you are already connected with that user".into(),
        ErrorCode::AlreadyInvited => {
            "there is already an invitation between you (pending or rejected)".into()
        }
        ErrorCode::ConnectionLimitReached => "you have reached your connection limit".into(),
        ErrorCode::PartnerConnectionLimitReached => {
            "that user has reached their connection limit".into()
        }
        ErrorCode::InvalidUsername => "there is no pending invitation from that user".into(),
        ErrorCode::NotConnected => "you are not connected with that user".into(),
        ErrorCode::UnknownUsers => format!("no such user ({detail})"),
        ErrorCode::UnconnectedUsers => {
            format!("you can only add users you are connected with ({detail})")
        }
        ErrorCode::OverLimit => "the channel is full".into(),
        ErrorCode::AlreadyJoined => "you are already a member of that channel".into(),
        ErrorCode::NotJoined => "you are not a member of that channel".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(event: &Event) -> String {
        render(event, &Palette::new(false))
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).expect("time")
    }

    #[test]
    fn messages_show_time_author_and_text() {
        let message = |username: Option<&str>| Event::Message {
            channel_id: ChannelId(1),
            seq: Seq(4),
            username: username.map(str::to_owned),
            content: "hi there".into(),
            sent_at: at(1_700_000_000),
        };
        assert_eq!(plain(&message(Some("bob"))), "[22:13] bob: hi there");
        let gone = message(None);
        assert_eq!(plain(&gone), "[22:13] (deleted user): hi there");
    }

    #[test]
    fn pushes_render_as_one_line_each() {
        let cases = [
            (
                Event::Unread {
                    channel_id: ChannelId(2),
                    title: "ops".into(),
                    unread: 3,
                },
                "* 3 unread in ops (channel 2); /enter 2",
            ),
            (
                Event::InviteReceived("bob".into()),
                "* bob invited you; /accept bob or /reject bob",
            ),
            (
                Event::InviteAccepted("bob".into()),
                "* bob accepted your invitation",
            ),
            (
                Event::ChannelJoined {
                    channel_id: ChannelId(5),
                    title: "general".into(),
                },
                "* you were added to general (channel 5); /enter 5",
            ),
            (
                Event::Typing {
                    channel_id: ChannelId(5),
                    username: "bob".into(),
                },
                "bob is typing…",
            ),
            (
                Event::LinkLost {
                    reason: "server draining".into(),
                    retry_in: Duration::from_millis(500),
                },
                "* connection lost (server draining); reconnecting in 0.5s",
            ),
            (Event::Reconnected, "* reconnected"),
            (
                Event::SessionRevoked,
                "* your session was ended (logged out or unregistered); /login again",
            ),
        ];
        for (event, line) in cases {
            let text = plain(&event);
            assert_eq!(text, line);
            assert!(!text.contains('\n'));
        }
    }

    #[test]
    fn listings_render_one_entry_per_line() {
        let c = Event::Connection {
            username: "bob".into(),
            status: ConnectionStatus::Accepted,
            online: true,
        };
        assert_eq!(plain(&c), "bob accepted online");
        let ch = Event::Channel {
            channel_id: ChannelId(3),
            title: "general".into(),
            head_count: 2,
            unread: 1,
        };
        assert_eq!(plain(&ch), "3 general (2 members, 1 unread)");
    }

    #[test]
    fn colour_is_only_added_when_asked() {
        let event = Event::Error("boom".into());
        assert_eq!(plain(&event), "error: boom");
        let coloured = render(&event, &Palette::new(true));
        assert!(coloured.contains("\u{1b}["), "{coloured:?}");
        assert!(coloured.ends_with("boom"));
    }

    #[test]
    fn error_codes_read_as_their_meaning() {
        assert_eq!(
            describe_error(ErrorCode::NotJoined, "ignored"),
            "you are not a member of that channel"
        );
        assert_eq!(
            describe_error(ErrorCode::UnknownUsers, "unknown users: zed"),
            "no such user (unknown users: zed)"
        );
        assert_eq!(
            describe_error(ErrorCode::InvalidCredentials, "x"),
            "wrong username or password"
        );
        assert_eq!(
            describe_error(ErrorCode::SelfInvite, "x"),
            "that is your own invite code"
        );
    }
}
