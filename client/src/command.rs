//! Command lines → [`Command`]s. Pure: the REPL, the script mode and the
//! completer all read the one table [`COMMANDS`], so help, usage lines and
//! completion can never disagree with the parser.

use natter_protocol::ChannelId;
use std::fmt;

/// One thing the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/register <username> <password>`.
    Register {
        /// The new user's name.
        username: String,
        /// Their password.
        password: String,
    },
    /// `/unregister`.
    Unregister,
    /// `/login <username> <password>`.
    Login {
        /// Who.
        username: String,
        /// Their password.
        password: String,
    },
    /// `/logout`.
    Logout,
    /// `/invite-code user`.
    UserInviteCode,
    /// `/invite-code channel <channelId>`.
    ChannelInviteCode(ChannelId),
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
    /// `/enter <channelId>`.
    Enter(ChannelId),
    /// `/leave`.
    Leave,
    /// `/quit <channelId>`.
    Quit(ChannelId),
    /// `/clear`.
    Clear,
    /// `/exit`.
    Exit,
    /// `/help [command]`.
    Help(Option<String>),
    /// `/history [n]`.
    History(Option<i64>),
    /// `/read`.
    Read,
    /// `/whoami`.
    Whoami,
    /// A line not starting with `/`: a message to the entered channel.
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
        args: "<username> <password>",
        summary: "create an account",
    },
    Spec {
        name: "/login",
        args: "<username> <password>",
        summary: "log in and go online",
    },
    Spec {
        name: "/logout",
        args: "",
        summary: "log out and go offline",
    },
    Spec {
        name: "/unregister",
        args: "",
        summary: "delete your account",
    },
    Spec {
        name: "/whoami",
        args: "",
        summary: "show who you are logged in as",
    },
    Spec {
        name: "/invite-code",
        args: "user | channel <channelId>",
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
        args: "<channelId>",
        summary: "enter a channel: its last messages, then live ones",
    },
    Spec {
        name: "/leave",
        args: "",
        summary: "leave the channel you are in (stay a member)",
    },
    Spec {
        name: "/quit",
        args: "<channelId>",
        summary: "stop being a member of a channel",
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
        summary: "close the client",
    },
];

/// Looks a command up by name, with or without its slash.
#[must_use]
pub fn spec(name: &str) -> Option<&'static Spec> {
    let name = name.trim();
    COMMANDS
        .iter()
        .find(|s| s.name == name || s.name.strip_prefix('/') == Some(name))
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The command exists; its arguments are wrong.
    Usage(&'static Spec),
    /// No such command.
    Unknown(String),
    /// A quote was opened and never closed.
    UnclosedQuote,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(spec) => f.write_str(&spec.usage()),
            Self::Unknown(name) => write!(f, "unknown command {name}; /help lists them"),
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
    if !trimmed.starts_with('/') {
        return Ok(Some(Command::Say(trimmed.to_owned())));
    }
    let words = split_words(trimmed)?;
    let (name, args) = match words.split_first() {
        Some((name, args)) => (name.as_str(), args),
        None => return Ok(None),
    };
    let spec = spec(name).ok_or_else(|| ParseError::Unknown(name.to_owned()))?;
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
    let channel = |arg: &str| arg.parse::<i64>().map(ChannelId).map_err(|_| usage());
    let command = match spec.name {
        "/register" | "/login" => {
            let [username, password] = args else {
                return Err(usage());
            };
            let (username, password) = (username.clone(), password.clone());
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
            [kind] if kind == "user" => Command::UserInviteCode,
            [kind, id] if kind == "channel" => Command::ChannelInviteCode(channel(id)?),
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
        "/enter" => Command::Enter(channel(&one()?)?),
        "/leave" => none(Command::Leave)?,
        "/quit" => Command::Quit(channel(&one()?)?),
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
    match words.next() {
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
        let cases = [
            (
                "/register alice secret12",
                Command::Register {
                    username: s("alice"),
                    password: s("secret12"),
                },
            ),
            ("/unregister", Command::Unregister),
            (
                "/login alice secret12",
                Command::Login {
                    username: s("alice"),
                    password: s("secret12"),
                },
            ),
            ("/logout", Command::Logout),
            ("/invite-code user", Command::UserInviteCode),
            (
                "/invite-code channel 7",
                Command::ChannelInviteCode(ChannelId(7)),
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
            ("/enter 3", Command::Enter(ChannelId(3))),
            ("/leave", Command::Leave),
            ("/quit 3", Command::Quit(ChannelId(3))),
            ("/clear", Command::Clear),
            ("/exit", Command::Exit),
            ("/help", Command::Help(None)),
            ("/help enter", Command::Help(Some(s("enter")))),
            ("/history", Command::History(None)),
            ("/history 40", Command::History(Some(40))),
            ("/read", Command::Read),
            ("/whoami", Command::Whoami),
            ("  hello there  ", Command::Say(s("hello there"))),
        ];
        for (line, expected) in cases {
            assert_eq!(ok(line), expected, "{line}");
        }
    }

    #[test]
    fn wrong_argument_counts_give_the_usage_line() {
        let cases = [
            ("/register alice", "usage: /register <username> <password>"),
            ("/register a b c", "usage: /register <username> <password>"),
            ("/login", "usage: /login <username> <password>"),
            ("/logout now", "usage: /logout"),
            ("/unregister me", "usage: /unregister"),
            (
                "/invite-code",
                "usage: /invite-code user | channel <channelId>",
            ),
            (
                "/invite-code channel",
                "usage: /invite-code user | channel <channelId>",
            ),
            (
                "/invite-code channel x",
                "usage: /invite-code user | channel <channelId>",
            ),
            (
                "/invite-code group 1",
                "usage: /invite-code user | channel <channelId>",
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
            ("/enter", "usage: /enter <channelId>"),
            ("/enter general", "usage: /enter <channelId>"),
            ("/leave 1", "usage: /leave"),
            ("/quit", "usage: /quit <channelId>"),
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
    fn unknown_commands_point_to_help() {
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
        assert_eq!(history_entry("  /register bob pw123456"), "/register bob");
        assert_eq!(history_entry("/login"), "/login");
        assert_eq!(history_entry("/enter 3"), "/enter 3");
        assert_eq!(history_entry("hello /login x y"), "hello /login x y");
    }
}
