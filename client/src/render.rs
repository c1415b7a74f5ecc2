//! What the client shows: every outcome and push is an [`Event`], and
//! [`render`] turns one into its lines (one, except a message with several
//! lines). Pure: colour, the time zone and whether lines name their channel
//! are a [`Look`], decided once at start.
//!
//! Everything that came from the network — names, titles, content, the
//! server's messages — goes through [`crate::sanitize`] here, the one
//! place text reaches the terminal, so no escape sequence a user sends can
//! act on another user's screen.

use crate::sanitize;
use natter_protocol::frames::ConnectionStatus;
use natter_protocol::{ChannelId, ErrorCode, Seq};
use owo_colors::{OwoColorize, Style};
use std::time::Duration;
use time::{OffsetDateTime, UtcOffset};

/// One thing to show.
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
    /// One's own message, typed while the link was down: it is sent when
    /// the link is back, and shown as a [`Event::Message`] once stored.
    Pending {
        /// The channel.
        channel_id: ChannelId,
        /// The writer.
        username: String,
        /// The text.
        content: String,
    },
    /// Where unread messages begin, in the page `/enter` shows.
    NewMarker,
    /// New messages in a channel one has not entered.
    Unread {
        /// The channel.
        channel_id: ChannelId,
        /// Its title.
        title: String,
        /// How many the user has not read.
        unread: i64,
        /// The first news of this channel since it was last entered: the
        /// prompt shows later counts, so only this one needs a line.
        first: bool,
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
    /// Someone became a member of the entered channel.
    MemberJoined {
        /// The channel.
        channel_id: ChannelId,
        /// Who.
        username: String,
    },
    /// Someone stopped being a member of the entered channel.
    MemberLeft {
        /// The channel.
        channel_id: ChannelId,
        /// Who.
        username: String,
        /// They quit (`false`), or their account was deleted (`true`).
        unregistered: bool,
    },
    /// A connection partner ended the connection.
    ConnectionEnded(String),
    /// One connection of `/connections` or `/pending`.
    Connection {
        /// The other user.
        username: String,
        /// The pair's state.
        status: ConnectionStatus,
        /// Whether they are online.
        online: bool,
    },
    /// One member of `/members`.
    Member {
        /// The member.
        username: String,
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
    /// The session's token expired and could not be refreshed.
    SessionExpired,
}

impl Event {
    /// The channel the event is about, if any (script mode names it).
    #[must_use]
    pub fn channel_id(&self) -> Option<ChannelId> {
        match self {
            Self::Message { channel_id, .. }
            | Self::Pending { channel_id, .. }
            | Self::Unread { channel_id, .. }
            | Self::ChannelJoined { channel_id, .. }
            | Self::Typing { channel_id, .. }
            | Self::MemberJoined { channel_id, .. }
            | Self::MemberLeft { channel_id, .. }
            | Self::Channel { channel_id, .. } => Some(*channel_id),
            _ => None,
        }
    }
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

/// The time zone message times are shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// The user's, as the system says (`TZ`, `/etc/localtime`).
    Local,
    /// A fixed offset (tests).
    Fixed(UtcOffset),
}

impl Zone {
    /// The offset from UTC at `t`: daylight saving moves it.
    #[must_use]
    pub fn offset_at(self, t: OffsetDateTime) -> UtcOffset {
        match self {
            Self::Fixed(offset) => offset,
            Self::Local => {
                use chrono::{Offset, TimeZone};
                let secs = chrono::Local
                    .timestamp_opt(t.unix_timestamp(), 0)
                    .single()
                    .map_or(0, |local| local.offset().fix().local_minus_utc());
                UtcOffset::from_whole_seconds(secs).unwrap_or(UtcOffset::UTC)
            }
        }
    }
}

/// How events look: colour, time zone, and whether each line names its
/// channel (script mode, where one stream carries every channel).
#[derive(Debug, Clone, Copy)]
pub struct Look {
    /// The colours.
    pub palette: Palette,
    /// Times are shown in this zone.
    pub zone: Zone,
    /// Lines about a channel start with `#<channel id> `.
    pub channel_ids: bool,
}

impl Look {
    /// The interactive prompt: local time, colour when `color`.
    #[must_use]
    pub fn terminal(color: bool) -> Self {
        Self {
            palette: Palette::new(color),
            zone: Zone::Local,
            channel_ids: false,
        }
    }

    /// Script mode: plain, local time, every channel line names its channel.
    #[must_use]
    pub fn script() -> Self {
        Self {
            palette: Palette::new(false),
            zone: Zone::Local,
            channel_ids: true,
        }
    }

    /// Plain text in a fixed zone (tests).
    #[must_use]
    pub fn plain(zone: Zone) -> Self {
        Self {
            palette: Palette::new(false),
            zone,
            channel_ids: false,
        }
    }
}

/// Whether to colour stdout: a terminal that supports it and no `NO_COLOR`
/// (the supports-color crate honours `NO_COLOR`, `TERM=dumb` and pipes).
#[must_use]
pub fn colors_enabled() -> bool {
    supports_color::on(supports_color::Stream::Stdout).is_some()
}

/// The text for `event`: one line, or several joined by `\n` for a
/// message with several lines (the later ones indented under its text).
#[must_use]
pub fn render(event: &Event, look: &Look) -> String {
    render_at(event, look, OffsetDateTime::now_utc())
}

/// [`render`] as of `now` (which decides whether a time needs its date).
#[must_use]
pub fn render_at(event: &Event, look: &Look, now: OffsetDateTime) -> String {
    let prefix = match (look.channel_ids, event.channel_id(), event) {
        // A `/channels` line starts with its id already.
        (_, _, Event::Channel { .. }) | (false, _, _) | (_, None, _) => String::new(),
        (true, Some(id), _) => format!("#{id} "),
    };
    let body = body(event, look, now);
    let mut lines = body.lines();
    let first = lines.next().unwrap_or("");
    let mut out = format!("{prefix}{first}");
    for more in lines {
        out.push('\n');
        out.push_str(&prefix);
        out.push_str(more);
    }
    out
}

fn body(event: &Event, look: &Look, now: OffsetDateTime) -> String {
    let p = &look.palette;
    let star = || "*".style(p.notice).to_string();
    let name = |n: &str| sanitize::line(n).style(p.name).to_string();
    let title = sanitize::line;
    match event {
        Event::Info(text) => sanitize::text(text),
        Event::Error(text) => format!("{} {}", "error:".style(p.error), sanitize::line(text)),
        Event::Message {
            username,
            content,
            sent_at,
            ..
        } => {
            let who = username.as_deref().unwrap_or("(deleted user)");
            let stamp = format!("[{}]", stamp(*sent_at, now, look.zone));
            message_lines(
                &format!("{} {}: ", stamp.style(p.dim), name(who)),
                stamp.chars().count() + 1 + sanitize::line(who).chars().count() + 2,
                content,
            )
        }
        Event::Pending {
            username, content, ..
        } => {
            let stamp = "[--:--]";
            let text = message_lines(
                &format!("{} {}: ", stamp.style(p.dim), name(username)),
                stamp.len() + 1 + sanitize::line(username).chars().count() + 2,
                content,
            );
            format!("{text} {}", "(pending: sent when reconnected)".style(p.dim))
        }
        Event::NewMarker => format!("{}", "——— new ———".style(p.notice)),
        Event::Unread {
            channel_id,
            title: t,
            unread,
            ..
        } => format!(
            "{} {unread} unread in {} (channel {channel_id}); /enter {channel_id}",
            star(),
            title(t)
        ),
        Event::InviteReceived(n) => format!(
            "{} {} invited you; /accept {n} or /reject {n}",
            star(),
            name(n),
            n = sanitize::line(n)
        ),
        Event::InviteAccepted(n) => format!("{} {} accepted your invitation", star(), name(n)),
        Event::ChannelJoined {
            channel_id,
            title: t,
        } => format!(
            "{} you were added to {} (channel {channel_id}); /enter {channel_id}",
            star(),
            title(t)
        ),
        Event::Typing { username, .. } => {
            format!(
                "{}",
                format!("{} is typing…", sanitize::line(username)).style(p.dim)
            )
        }
        Event::MemberJoined { username, .. } => {
            format!("{} {} joined the channel", star(), name(username))
        }
        Event::MemberLeft {
            username,
            unregistered,
            ..
        } => {
            let why = if *unregistered {
                "deleted their account and left the channel"
            } else {
                "left the channel"
            };
            format!("{} {} {why}", star(), name(username))
        }
        Event::ConnectionEnded(n) => format!("{} {} ended your connection", star(), name(n)),
        Event::Connection {
            username,
            status,
            online,
        } => format!(
            "{} {} {}",
            name(username),
            status.as_str(),
            if *online { "online" } else { "offline" }
        ),
        Event::Member { username, online } => format!(
            "{} {}",
            name(username),
            if *online { "online" } else { "offline" }
        ),
        Event::Channel {
            channel_id,
            title: t,
            head_count,
            unread,
        } => {
            let members = if *head_count == 1 {
                "member"
            } else {
                "members"
            };
            format!(
                "{channel_id} {} ({head_count} {members}, {unread} unread)",
                title(t)
            )
        }
        Event::LinkLost { reason, retry_in } => format!(
            "{} connection lost ({}); reconnecting in {:.1}s",
            star(),
            sanitize::line(reason),
            retry_in.as_secs_f64()
        ),
        Event::Reconnected => format!("{} reconnected", star()),
        Event::SessionRevoked => format!(
            "{} your session was ended (logged out or unregistered elsewhere); /login again",
            star()
        ),
        Event::SessionExpired => format!("{} session expired — /login again", star()),
    }
}

/// A message's text after `head`; each further line indented by `indent`
/// columns, so a pasted block stays readable under its author.
fn message_lines(head: &str, indent: usize, content: &str) -> String {
    let clean = sanitize::text(content);
    let mut lines = clean.split('\n');
    let mut out = format!("{head}{}", lines.next().unwrap_or(""));
    for more in lines {
        out.push('\n');
        out.push_str(&" ".repeat(indent));
        out.push_str(more);
    }
    out
}

/// A message's time in `zone`: `HH:MM` today, `YYYY-MM-DD HH:MM` on any
/// other day (both as the reader's calendar has them).
#[must_use]
pub fn stamp(sent_at: OffsetDateTime, now: OffsetDateTime, zone: Zone) -> String {
    let local = sent_at.to_offset(zone.offset_at(sent_at));
    let today = now.to_offset(zone.offset_at(now)).date();
    let clock = format!("{:02}:{:02}", local.hour(), local.minute());
    if local.date() == today {
        clock
    } else {
        format!(
            "{:04}-{:02}-{:02} {clock}",
            local.year(),
            u8::from(local.month()),
            local.day()
        )
    }
}

/// An error code's meaning, in one line. `detail` is the server's human
/// message, kept only where it names something the user needs (which
/// users, which field).
#[must_use]
pub fn describe_error(code: ErrorCode, detail: &str) -> String {
    match code {
        ErrorCode::InvalidRequest => format!("the server refused that: {}", sanitize::line(detail)),
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
        ErrorCode::UnsupportedMediaType | ErrorCode::MethodNotAllowed => format!(
            "the server does not understand this client: {}",
            sanitize::line(detail)
        ),
        ErrorCode::InvalidInviteCode => "no user has that invite code".into(),
        ErrorCode::SelfInvite => "that is your own invite code".into(),
        ErrorCode::AlreadyConnected => "you are already connected with that user".into(),
        ErrorCode::AlreadyInvited => "there is already an invitation between you (pending or \
                                      rejected); if it was rejected, the one who rejected it can \
                                      /disconnect <username> to clear it"
            .into(),
        ErrorCode::ConnectionLimitReached => "you have reached your connection limit".into(),
        ErrorCode::PartnerConnectionLimitReached => {
            "that user has reached their connection limit".into()
        }
        ErrorCode::InvalidUsername => "there is no pending invitation from that user".into(),
        ErrorCode::NotConnected => "you are not connected with that user (a rejected invitation \
                                    can be cleared only by the one who rejected it)"
            .into(),
        ErrorCode::UnknownUsers => format!("no such user ({})", sanitize::line(detail)),
        ErrorCode::UnconnectedUsers => format!(
            "you can only add users you are connected with ({})",
            sanitize::line(detail)
        ),
        ErrorCode::OverLimit => "the channel is full (or a membership limit is reached)".into(),
        ErrorCode::AlreadyJoined => "you are already a member of that channel".into(),
        ErrorCode::NotJoined => "you are not a member of that channel".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).expect("time")
    }

    /// 2023-11-14 22:13:20 UTC.
    const T: i64 = 1_700_000_000;

    fn plain(event: &Event) -> String {
        render_at(event, &Look::plain(Zone::Fixed(UtcOffset::UTC)), at(T))
    }

    fn message(username: Option<&str>, content: &str) -> Event {
        Event::Message {
            channel_id: ChannelId(1),
            seq: Seq(4),
            username: username.map(str::to_owned),
            content: content.into(),
            sent_at: at(T),
        }
    }

    #[test]
    fn messages_show_time_author_and_text() {
        assert_eq!(
            plain(&message(Some("bob"), "hi there")),
            "[22:13] bob: hi there"
        );
        assert_eq!(
            plain(&message(None, "hi there")),
            "[22:13] (deleted user): hi there"
        );
    }

    #[test]
    fn a_message_of_several_lines_keeps_them_under_its_text() {
        assert_eq!(
            plain(&message(Some("bob"), "one\ntwo\n\tthree")),
            "[22:13] bob: one\n             two\n             \tthree"
        );
    }

    #[test]
    fn times_are_local_with_the_date_when_not_today() {
        let plus_two = Zone::Fixed(UtcOffset::from_hms(2, 0, 0).expect("offset"));
        // 22:13 UTC is 00:13 the next day at +02:00.
        assert_eq!(stamp(at(T), at(T + 3600), plus_two), "00:13");
        assert_eq!(stamp(at(T), at(T), Zone::Fixed(UtcOffset::UTC)), "22:13");
        assert_eq!(
            stamp(at(T), at(T + 86_400), Zone::Fixed(UtcOffset::UTC)),
            "2023-11-14 22:13"
        );
        assert_eq!(
            stamp(at(T), at(T + 2 * 3600), plus_two),
            "00:13",
            "same local day, although UTC's date differs"
        );
    }

    #[test]
    fn script_lines_name_their_channel_on_every_line() {
        let look = Look {
            channel_ids: true,
            ..Look::plain(Zone::Fixed(UtcOffset::UTC))
        };
        assert_eq!(
            render_at(&message(Some("bob"), "a\nb"), &look, at(T)),
            "#1 [22:13] bob: a\n#1              b"
        );
        assert_eq!(render_at(&Event::Info("hi".into()), &look, at(T)), "hi");
        let listed = Event::Channel {
            channel_id: ChannelId(1),
            title: "general".into(),
            head_count: 2,
            unread: 0,
        };
        assert_eq!(
            render_at(&listed, &look, at(T)),
            "1 general (2 members, 0 unread)"
        );
    }

    #[test]
    fn pushes_render_as_one_line_each() {
        let cases = [
            (
                Event::Unread {
                    channel_id: ChannelId(2),
                    title: "ops".into(),
                    unread: 3,
                    first: true,
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
                Event::MemberJoined {
                    channel_id: ChannelId(5),
                    username: "carol".into(),
                },
                "* carol joined the channel",
            ),
            (
                Event::MemberLeft {
                    channel_id: ChannelId(5),
                    username: "carol".into(),
                    unregistered: false,
                },
                "* carol left the channel",
            ),
            (
                Event::MemberLeft {
                    channel_id: ChannelId(5),
                    username: "dave".into(),
                    unregistered: true,
                },
                "* dave deleted their account and left the channel",
            ),
            (
                Event::ConnectionEnded("bob".into()),
                "* bob ended your connection",
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
                "* your session was ended (logged out or unregistered elsewhere); /login again",
            ),
            (Event::SessionExpired, "* session expired — /login again"),
            (
                Event::Pending {
                    channel_id: ChannelId(5),
                    username: "alice".into(),
                    content: "later".into(),
                },
                "[--:--] alice: later (pending: sent when reconnected)",
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
        let m = Event::Member {
            username: "bob".into(),
            online: false,
        };
        assert_eq!(plain(&m), "bob offline");
    }

    #[test]
    fn escape_sequences_from_the_network_never_reach_the_terminal() {
        let hostile = "\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{9b}31m";
        let events = [
            message(Some(hostile), hostile),
            Event::Unread {
                channel_id: ChannelId(2),
                title: hostile.into(),
                unread: 1,
                first: true,
            },
            Event::InviteReceived(hostile.into()),
            Event::ChannelJoined {
                channel_id: ChannelId(2),
                title: hostile.into(),
            },
            Event::Typing {
                channel_id: ChannelId(2),
                username: hostile.into(),
            },
            Event::MemberLeft {
                channel_id: ChannelId(2),
                username: hostile.into(),
                unregistered: false,
            },
            Event::Member {
                username: hostile.into(),
                online: true,
            },
            Event::Info(format!("created {hostile}")),
            Event::Error(describe_error(ErrorCode::UnknownUsers, hostile)),
            Event::LinkLost {
                reason: hostile.into(),
                retry_in: Duration::ZERO,
            },
        ];
        for event in &events {
            for color in [false, true] {
                let look = Look {
                    palette: Palette::new(color),
                    ..Look::plain(Zone::Fixed(UtcOffset::UTC))
                };
                let text = render_at(event, &look, at(T));
                let without_our_colours = strip_sgr(&text);
                assert!(
                    !without_our_colours
                        .chars()
                        .any(|c| c.is_control() && c != '\n'),
                    "{event:?} → {text:?}"
                );
                assert!(!text.contains("owned"), "{text:?}");
            }
        }
    }

    /// Removes the SGR colour sequences the palette itself adds.
    fn strip_sgr(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("\u{1b}[") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            match after.find('m') {
                Some(end) if after[..end].chars().all(|c| c.is_ascii_digit() || c == ';') => {
                    rest = &after[end + 1..];
                }
                _ => {
                    out.push_str(&rest[i..=i]);
                    rest = &rest[i + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn colour_is_only_added_when_asked() {
        let event = Event::Error("boom".into());
        assert_eq!(plain(&event), "error: boom");
        let coloured = render(&event, &Look::terminal(true));
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

    #[test]
    fn the_rejected_pair_rule_is_explained_where_it_applies() {
        assert!(describe_error(ErrorCode::AlreadyInvited, "x").contains("/disconnect"));
        assert!(describe_error(ErrorCode::NotConnected, "x").contains("rejected"));
    }
}
