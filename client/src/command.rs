//! Command lines → [`Command`]s. Pure: the REPL, the script mode and the
//! completer all read the one table [`COMMANDS`], so help, usage lines and
//! completion can never disagree with the parser.
//!
//! Command names are case-insensitive (`/Enter` is `/enter`), an unknown one
//! gets the nearest known name as a suggestion, and a line starting with
//! `//` is a message that starts with `/`.

use natter_protocol::ChannelId;
use std::fmt;

/// A channel as the user names it: by id, or by title when that is unique
/// among their channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRef {
    /// `/enter 3`.
    Id(ChannelId),
    /// `/enter general` (or `/enter "weekend plans"`).
    Title(String),
}

impl ChannelRef {
    fn parse(word: &str) -> Self {
        word.parse::<i64>().map_or_else(
            |_| Self::Title(word.to_owned()),
            |id| Self::Id(ChannelId(id)),
        )
    }
}

/// One thing the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/register <username> [<password>]`.
    Register {
        /// The new user's name.
        username: String,
        /// Their password; asked for (hidden) when not given.
        password: Option<String>,
    },
    /// `/unregister`.
    Unregister,
    /// `/login <username> [<password>]`.
    Login {
        /// Who.
        username: String,
        /// Their password; asked for (hidden) when not given.
        password: Option<String>,
    },
    /// `/logout`.
    Logout,
    /// `/invite-code user`.
    UserInviteCode,
    /// `/invite-code channel <channel>`.
    ChannelInviteCode(ChannelRef),
    /// `/invite <inviteCode>`.
    Invite(String),
    /// `/accept <username>`.
    Accept(String),
    /// `/reject <username>`.
    Reject(String),
    /// `/disconnect <username>`.
    Disconnect(String),
    /// `/connections`.
    Connections,
    /// `/pending`.
    Pending,
    /// `/channels`.
    Channels,
    /// `/create <title> <username1> [<username2> …]`.
    Create {
        /// The channel's title (quote it to use spaces).
        title: String,
        /// The other members.
        usernames: Vec<String>,
    },
    /// `/join <inviteCode>`.
    Join(String),
    /// `/enter <channel>`.
    Enter(ChannelRef),
    /// `/more`: the next page of unread messages.
    More,
    /// `/members [<channel>]` (the entered channel by default).
    Members(Option<ChannelRef>),
    /// `/leave`.
    Leave,
    /// `/quit <channel>` or `/part [<channel>]`: stop being a member (the
    /// entered channel by default). `/quit` alone is [`Command::Exit`].
    Quit(Option<ChannelRef>),
    /// `/clear`.
    Clear,
    /// `/exit`, or `/quit` alone.
    Exit,
    /// `/help [command]`.
    Help(Option<String>),
    /// `/history [n]`.
    History(Option<i64>),
    /// `/read`.
    Read,
    /// `/whoami`.
    Whoami,
    /// A line not starting with `/` (or starting with `//`, one of which
    /// is dropped): a message to the entered channel.
    Say(String),
}

/// A command's name, arguments and one-line description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// With its slash, e.g. `/enter`.
    pub name: &'static str,
    /// The arguments as the usage line shows them.
    pub args: &'static str,
    /// What it does.
    pub summary: &'static str,
}

impl Spec {
    /// `usage: /enter <channelId>`.
    #[must_use]
    pub fn usage(&self) -> String {
        if self.args.is_empty() {
            format!("usage: {}", self.name)
        } else {
            format!("usage: {} {}", self.name, self.args)
        }
    }
}

/// Every command, in the order `/help` lists them.
pub const COMMANDS: &[Spec] = &[
    Spec {
        name: "/register",
        args: "<username>",
        summary: "create an account (asks for a password)",
    },
    Spec {
        name: "/login",
        args: "<username>",
        summary: "log in and go online (asks for the password)",
    },
    Spec {
        name: "/logout",
        args: "",
        summary: "log out and go offline",
    },
    Spec {
        name: "/unregister",
        args: "",
        summary: "delete your account (asks for the password again)",
    },
    Spec {
        name: "/whoami",
        args: "",
        summary: "show who you are logged in as",
    },
    Spec {
        name: "/invite-code",
        args: "user | channel <channel>",
        summary: "show your invite code, or a channel's",
    },
    Spec {
        name: "/invite",
        args: "<inviteCode>",
        summary: "invite the user whose code this is",
    },
    Spec {
        name: "/accept",
        args: "<username>",
        summary: "accept an invitation",
    },
    Spec {
        name: "/reject",
        args: "<username>",
        summary: "reject an invitation",
    },
    Spec {
        name: "/disconnect",
        args: "<username>",
        summary: "end a connection",
    },
    Spec {
        name: "/connections",
        args: "",
        summary: "list your connections",
    },
    Spec {
        name: "/pending",
        args: "",
        summary: "list invitations you have received",
    },
    Spec {
        name: "/channels",
        args: "",
        summary: "list your channels with unread counts",
    },
    Spec {
        name: "/create",
        args: "<title> <username1> [<username2> …]",
        summary: "create a channel with connected users",
    },
    Spec {
        name: "/join",
        args: "<inviteCode>",
        summary: "join a channel by its invite code",
    },
    Spec {
        name: "/enter",
        args: "<channel>",
        summary: "enter a channel (id or title): from its first unread message, then live",
    },
    Spec {
        name: "/more",
        args: "",
        summary: "show the next page of unread messages",
    },
    Spec {
        name: "/members",
        args: "[<channel>]",
        summary: "list a channel's members and who is online",
    },
    Spec {
        name: "/leave",
        args: "",
        summary: "leave the channel you are in (stay a member)",
    },
    Spec {
        name: "/part",
        args: "[<channel>]",
        summary: "stop being a member of a channel (asks first)",
    },
    Spec {
        name: "/quit",
        args: "[<channel>]",
        summary: "alone: close the client; with a channel: as /part",
    },
    Spec {
        name: "/history",
        args: "[n]",
        summary: "show n older messages of this channel (default 20)",
    },
    Spec {
        name: "/read",
        args: "",
        summary: "mark this channel read",
    },
    Spec {
        name: "/clear",
        args: "",
        summary: "clear the screen",
    },
    Spec {
        name: "/help",
        args: "[command]",
        summary: "list commands, or explain one",
    },
    Spec {
        name: "/exit",
        args: "",
        summary: "close the client (staying logged in)",
    },
];

/// Looks a command up by name, with or without its slash, in any case.
#[must_use]
pub fn spec(name: &str) -> Option<&'static Spec> {
    let name = name.trim();
    let bare = name.strip_prefix('/').unwrap_or(name);
    COMMANDS
        .iter()
        .find(|s| s.name[1..].eq_ignore_ascii_case(bare))
}

/// The known command nearest to `name`, when one is near enough to be
/// what was meant (a typo or two, or a unique prefix).
#[must_use]
pub fn suggest(name: &str) -> Option<&'static str> {
    let bare = name.trim().trim_start_matches('/').to_ascii_lowercase();
    if bare.is_empty() {
        return None;
    }
    let prefixed: Vec<&Spec> = COMMANDS
        .iter()
        .filter(|s| s.name[1..].starts_with(&bare))
        .collect();
    if let [only] = prefixed.as_slice() {
        return Some(only.name);
    }
    COMMANDS
        .iter()
        .map(|s| (edit_distance(&bare, &s.name[1..]), s.name))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Levenshtein distance, by chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The command exists; its arguments are wrong.
    Usage(&'static Spec),
    /// No such command; the nearest known one, if any is near.
    Unknown(String, Option<&'static str>),
    /// A quote was opened and never closed.
    UnclosedQuote,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(spec) => f.write_str(&spec.usage()),
            Self::Unknown(name, Some(near)) => write!(
                f,
                "unknown command {name}; did you mean {near}? (// sends a message starting with /)"
            ),
            Self::Unknown(name, None) => write!(f, "unknown command {name}; /help lists them"),
            Self::UnclosedQuote => f.write_str("a quote is not closed"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses one line. `Ok(None)` for a blank line.
///
/// # Errors
/// A [`ParseError`] saying what is wrong: the usage line for a known
/// command with the wrong arguments.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if let Some(message) = trimmed.strip_prefix("//") {
        return Ok(Some(Command::Say(format!("/{message}"))));
    }
    if !trimmed.starts_with('/') {
        return Ok(Some(Command::Say(trimmed.to_owned())));
    }
    let words = split_words(trimmed)?;
    let (name, args) = match words.split_first() {
        Some((name, args)) => (name.as_str(), args),
        None => return Ok(None),
    };
    let spec = spec(name).ok_or_else(|| ParseError::Unknown(name.to_owned(), suggest(name)))?;
    let usage = || ParseError::Usage(spec);
    let one = || match args {
        [a] => Ok(a.clone()),
        _ => Err(usage()),
    };
    let none = |command: Command| {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(usage())
        }
    };
    let optional_channel = || match args {
        [] => Ok(None),
        [c] => Ok(Some(ChannelRef::parse(c))),
        _ => Err(usage()),
    };
    let command = match spec.name {
        "/register" | "/login" => {
            let (username, password) = match args {
                [username] => (username.clone(), None),
                [username, password] => (username.clone(), Some(password.clone())),
                _ => return Err(usage()),
            };
            if spec.name == "/register" {
                Command::Register { username, password }
            } else {
                Command::Login { username, password }
            }
        }
        "/unregister" => none(Command::Unregister)?,
        "/logout" => none(Command::Logout)?,
        "/whoami" => none(Command::Whoami)?,
        "/invite-code" => match args {
            [kind] if kind.eq_ignore_ascii_case("user") => Command::UserInviteCode,
            [kind, c] if kind.eq_ignore_ascii_case("channel") => {
                Command::ChannelInviteCode(ChannelRef::parse(c))
            }
            _ => return Err(usage()),
        },
        "/invite" => Command::Invite(one()?),
        "/accept" => Command::Accept(one()?),
        "/reject" => Command::Reject(one()?),
        "/disconnect" => Command::Disconnect(one()?),
        "/connections" => none(Command::Connections)?,
        "/pending" => none(Command::Pending)?,
        "/channels" => none(Command::Channels)?,
        "/create" => match args {
            [title, usernames @ ..] if !usernames.is_empty() => Command::Create {
                title: title.clone(),
                usernames: usernames.to_vec(),
            },
            _ => return Err(usage()),
        },
        "/join" => Command::Join(one()?),
        "/enter" => Command::Enter(ChannelRef::parse(&one()?)),
        "/more" => none(Command::More)?,
        "/members" => Command::Members(optional_channel()?),
        "/leave" => none(Command::Leave)?,
        "/part" => Command::Quit(optional_channel()?),
        "/quit" => match optional_channel()? {
            None => Command::Exit,
            channel => Command::Quit(channel),
        },
        "/history" => match args {
            [] => Command::History(None),
            [n] => match n.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => Command::History(Some(n)),
                _ => return Err(usage()),
            },
            _ => return Err(usage()),
        },
        "/read" => none(Command::Read)?,
        "/clear" => none(Command::Clear)?,
        "/help" => match args {
            [] => Command::Help(None),
            [name] => Command::Help(Some(name.clone())),
            _ => return Err(usage()),
        },
        _ => none(Command::Exit)?,
    };
    Ok(Some(command))
}

/// Splits on whitespace; `"…"` keeps spaces inside one word (a channel
/// title such as `"weekend plans"`).
fn split_words(line: &str) -> Result<Vec<String>, ParseError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(ParseError::UnclosedQuote);
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// The line as it may be kept in the history file: a password typed in
/// `/register` or `/login` is never written to disk, so those lines keep
/// only the command and the username.
#[must_use]
pub fn history_entry(line: &str) -> String {
    let trimmed = line.trim_start();
    let mut words = trimmed.split_whitespace();
    let name = words.next().map(str::to_ascii_lowercase);
    match name.as_deref() {
        Some(name @ ("/register" | "/login")) => match words.next() {
            Some(user) => format!("{name} {user}"),
            None => name.to_owned(),
        },
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).expect(line).expect(line)
    }

    fn usage_of(line: &str) -> String {
        parse(line).expect_err(line).to_string()
    }

    #[test]
    fn every_command_parses_with_its_arguments() {
        let s = String::from;
        let id = |n| ChannelRef::Id(ChannelId(n));
        let cases = [
            (
                "/register alice secret12",
                Command::Register {
                    username: s("alice"),
                    password: Some(s("secret12")),
                },
            ),
            (
                "/register alice",
                Command::Register {
                    username: s("alice"),
                    password: None,
                },
            ),
            ("/unregister", Command::Unregister),
            (
                "/login alice secret12",
                Command::Login {
                    username: s("alice"),
                    password: Some(s("secret12")),
                },
            ),
            (
                "/login alice",
                Command::Login {
                    username: s("alice"),
                    password: None,
                },
            ),
            ("/logout", Command::Logout),
            ("/invite-code user", Command::UserInviteCode),
            ("/invite-code channel 7", Command::ChannelInviteCode(id(7))),
            (
                "/invite-code channel general",
                Command::ChannelInviteCode(ChannelRef::Title(s("general"))),
            ),
            ("/invite AbC-123_x", Command::Invite(s("AbC-123_x"))),
            ("/accept bob", Command::Accept(s("bob"))),
            ("/reject bob", Command::Reject(s("bob"))),
            ("/disconnect bob", Command::Disconnect(s("bob"))),
            ("/connections", Command::Connections),
            ("/pending", Command::Pending),
            ("/channels", Command::Channels),
            (
                "/create general bob",
                Command::Create {
                    title: s("general"),
                    usernames: vec![s("bob")],
                },
            ),
            (
                "/create \"weekend plans\" bob carol",
                Command::Create {
                    title: s("weekend plans"),
                    usernames: vec![s("bob"), s("carol")],
                },
            ),
            ("/join XyZ", Command::Join(s("XyZ"))),
            ("/enter 3", Command::Enter(id(3))),
            (
                "/enter \"weekend plans\"",
                Command::Enter(ChannelRef::Title(s("weekend plans"))),
            ),
            ("/more", Command::More),
            ("/members", Command::Members(None)),
            ("/members 3", Command::Members(Some(id(3)))),
            ("/leave", Command::Leave),
            ("/quit 3", Command::Quit(Some(id(3)))),
            ("/part", Command::Quit(None)),
            (
                "/part general",
                Command::Quit(Some(ChannelRef::Title(s("general")))),
            ),
            ("/quit", Command::Exit),
            ("/clear", Command::Clear),
            ("/exit", Command::Exit),
            ("/help", Command::Help(None)),
            ("/help enter", Command::Help(Some(s("enter")))),
            ("/history", Command::History(None)),
            ("/history 40", Command::History(Some(40))),
            ("/read", Command::Read),
            ("/whoami", Command::Whoami),
            ("  hello there  ", Command::Say(s("hello there"))),
            ("line one\nline two", Command::Say(s("line one\nline two"))),
        ];
        for (line, expected) in cases {
            assert_eq!(ok(line), expected, "{line}");
        }
    }

    #[test]
    fn command_names_ignore_case() {
        assert_eq!(ok("/ENTER 3"), Command::Enter(ChannelRef::Id(ChannelId(3))));
        assert_eq!(ok("/Channels"), Command::Channels);
        assert_eq!(spec("LOGIN"), spec("/login"));
    }

    #[test]
    fn a_double_slash_sends_a_message_starting_with_a_slash() {
        assert_eq!(ok("//shrug"), Command::Say("/shrug".into()));
        assert_eq!(ok("//"), Command::Say("/".into()));
    }

    #[test]
    fn wrong_argument_counts_give_the_usage_line() {
        let cases = [
            ("/register", "usage: /register <username>"),
            ("/register a b c", "usage: /register <username>"),
            ("/login", "usage: /login <username>"),
            ("/logout now", "usage: /logout"),
            ("/unregister me", "usage: /unregister"),
            (
                "/invite-code",
                "usage: /invite-code user | channel <channel>",
            ),
            (
                "/invite-code channel",
                "usage: /invite-code user | channel <channel>",
            ),
            (
                "/invite-code group 1",
                "usage: /invite-code user | channel <channel>",
            ),
            ("/invite", "usage: /invite <inviteCode>"),
            ("/accept", "usage: /accept <username>"),
            ("/reject a b", "usage: /reject <username>"),
            ("/disconnect", "usage: /disconnect <username>"),
            ("/connections x", "usage: /connections"),
            ("/pending x", "usage: /pending"),
            ("/channels x", "usage: /channels"),
            (
                "/create general",
                "usage: /create <title> <username1> [<username2> …]",
            ),
            (
                "/create",
                "usage: /create <title> <username1> [<username2> …]",
            ),
            ("/join", "usage: /join <inviteCode>"),
            ("/enter", "usage: /enter <channel>"),
            ("/enter a b", "usage: /enter <channel>"),
            ("/more 2", "usage: /more"),
            ("/members a b", "usage: /members [<channel>]"),
            ("/leave 1", "usage: /leave"),
            ("/part a b", "usage: /part [<channel>]"),
            ("/quit a b", "usage: /quit [<channel>]"),
            ("/clear x", "usage: /clear"),
            ("/exit x", "usage: /exit"),
            ("/help a b", "usage: /help [command]"),
            ("/history 0", "usage: /history [n]"),
            ("/history many", "usage: /history [n]"),
            ("/read 1", "usage: /read"),
            ("/whoami x", "usage: /whoami"),
        ];
        for (line, usage) in cases {
            assert_eq!(usage_of(line), usage, "{line}");
        }
    }

    #[test]
    fn unknown_commands_suggest_the_nearest_or_point_to_help() {
        assert_eq!(
            usage_of("/entr 3"),
            "unknown command /entr; did you mean /enter? (// sends a message starting with /)"
        );
        assert_eq!(suggest("/chanels"), Some("/channels"));
        assert_eq!(suggest("/memb"), Some("/members"));
        assert_eq!(suggest("/shrug"), None);
        assert_eq!(
            usage_of("/dance"),
            "unknown command /dance; /help lists them"
        );
    }

    #[test]
    fn blank_lines_are_nothing_and_open_quotes_are_errors() {
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(parse("/create \"x bob"), Err(ParseError::UnclosedQuote));
    }

    #[test]
    fn every_spec_is_reachable_by_name() {
        for s in COMMANDS {
            assert_eq!(spec(s.name), Some(s));
            assert_eq!(spec(&s.name[1..]), Some(s));
            assert!(
                matches!(parse(s.name), Ok(Some(_)) | Err(ParseError::Usage(_))),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn history_never_keeps_passwords() {
        assert_eq!(history_entry("/login alice hunter22"), "/login alice");
        assert_eq!(history_entry("/LOGIN alice hunter22"), "/login alice");
        assert_eq!(history_entry("  /register bob pw123456"), "/register bob");
        assert_eq!(history_entry("/login"), "/login");
        assert_eq!(history_entry("/enter 3"), "/enter 3");
        assert_eq!(history_entry("hello /login x y"), "hello /login x y");
    }
}
