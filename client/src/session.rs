//! The client's brain: [`Session::execute`] runs one [`Command`] and
//! returns what to show. Pushes arrive separately, on the event channel
//! [`Session::new`] returns. The REPL and the script mode are thin shells
//! around this; tests drive it directly.

use crate::auth::AuthClient;
use crate::cli::Endpoints;
use crate::command::{COMMANDS, Command, ParseError, parse, spec};
use crate::link::{CallError, Link};
use crate::render::Event;
use crate::state::SharedView;
use natter_protocol::ErrorCode;
use natter_protocol::frames::results::{
    ChannelCreated, ChannelInviteCode, Channels, ConnectionChange, Connections, Entered,
    MessageEntry, Messages, Quit, UserInviteCode, Written,
};
use natter_protocol::frames::{ConnectionFilter, Request};
use natter_protocol::{ChannelId, Seq};
use tokio::sync::mpsc;

/// How many messages `/enter` shows, and `/history` by default.
pub const PAGE: i64 = 20;

/// What the front end should do after showing an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing special.
    Continue,
    /// Clear the screen.
    Clear,
    /// Close the client.
    Exit,
}

/// The result of one command: lines to show, whether it succeeded, and
/// what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// One line each, in order.
    pub events: Vec<Event>,
    /// False when the command failed.
    pub ok: bool,
    /// What to do next.
    pub action: Action,
}

impl Output {
    fn ok(events: Vec<Event>) -> Self {
        Self {
            events,
            ok: true,
            action: Action::Continue,
        }
    }

    fn info(text: impl Into<String>) -> Self {
        Self::ok(vec![Event::Info(text.into())])
    }

    fn error(text: impl Into<String>) -> Self {
        Self {
            events: vec![Event::Error(text.into())],
            ok: false,
            action: Action::Continue,
        }
    }

    fn action(action: Action) -> Self {
        Self {
            events: Vec::new(),
            ok: true,
            action,
        }
    }
}

struct LoggedIn {
    username: String,
    token: String,
    link: Link,
}

/// One user's client session.
pub struct Session {
    auth: AuthClient,
    ws_url: String,
    events: mpsc::UnboundedSender<Event>,
    view: SharedView,
    login: Option<LoggedIn>,
    /// The entered channel and the oldest seq shown in it (for `/history`).
    oldest_shown: Option<(ChannelId, Seq)>,
}

impl Session {
    /// A logged-out session and the channel its pushes arrive on.
    #[must_use]
    pub fn new(endpoints: &Endpoints) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let session = Self {
            auth: AuthClient::new(&endpoints.auth_url),
            ws_url: endpoints.ws_url.clone(),
            events,
            view: SharedView::default(),
            login: None,
            oldest_shown: None,
        };
        (session, rx)
    }

    /// The state the prompt and completer show.
    #[must_use]
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// Parses and runs one line.
    pub async fn run_line(&mut self, line: &str) -> Output {
        match parse(line) {
            Ok(Some(command)) => self.execute(command).await,
            Ok(None) => Output::ok(Vec::new()),
            Err(e) => Output::error(e.to_string()),
        }
    }

    /// Closes the socket (without logging out).
    pub async fn close(&mut self) {
        if let Some(login) = self.login.take() {
            login.link.close().await;
        }
    }

    /// Runs one command.
    pub async fn execute(&mut self, command: Command) -> Output {
        if self.login.as_ref().is_some_and(|l| !l.link.is_alive()) {
            self.forget_login();
        }
        match command {
            Command::Register { username, password } => self.register(&username, &password).await,
            Command::Login { username, password } => self.log_in(&username, &password).await,
            Command::Logout => self.log_out().await,
            Command::Unregister => self.unregister().await,
            Command::Whoami => self.whoami().await,
            Command::Help(topic) => help(topic.as_deref()),
            Command::Clear => Output::action(Action::Clear),
            Command::Exit => Output::action(Action::Exit),
            other => match &self.login {
                None => Output::error("log in first: /login <username> <password>"),
                Some(_) => self
                    .online(other)
                    .await
                    .unwrap_or_else(|e| Output::error(e.describe())),
            },
        }
    }

    async fn register(&mut self, username: &str, password: &str) -> Output {
        match self.auth.register(username, password).await {
            Ok(user) => Output::info(format!(
                "registered {} (user {}); now /login {} <password>",
                user.username, user.user_id, user.username
            )),
            Err(e) => Output::error(e),
        }
    }

    async fn log_in(&mut self, username: &str, password: &str) -> Output {
        if let Some(login) = &self.login {
            return Output::error(format!(
                "already logged in as {}; /logout first",
                login.username
            ));
        }
        let token = match self.auth.login(username, password).await {
            Ok(t) => t.token,
            Err(e) => return Output::error(e),
        };
        match Link::open(&self.ws_url, &token, self.events.clone(), self.view.clone()).await {
            Ok(link) => {
                self.view.set_user(Some(username.to_owned()));
                self.login = Some(LoggedIn {
                    username: username.to_owned(),
                    token,
                    link,
                });
                Output::info(format!("logged in as {username}"))
            }
            Err(e) => {
                // Without a socket the login is useless; do not leave the
                // session behind on the server.
                let _ = self.auth.logout(&token).await;
                Output::error(format!("logged in, but {e}"))
            }
        }
    }

    /// Closes the socket first, so the server's `session_revoked` push for
    /// our own logout is not shown as if someone else ended the session.
    async fn log_out(&mut self) -> Output {
        let Some(login) = self.login.take() else {
            return Output::error("you are not logged in");
        };
        login.link.close().await;
        self.forget_login();
        match self.auth.logout(&login.token).await {
            Ok(()) => Output::info(format!("logged out {}", login.username)),
            Err(e) => Output::error(e),
        }
    }

    async fn unregister(&mut self) -> Output {
        let Some(login) = self.login.take() else {
            return Output::error("log in first: /login <username> <password>");
        };
        login.link.close().await;
        self.forget_login();
        match self.auth.unregister(&login.token).await {
            Ok(()) => Output::info(format!("account {} deleted", login.username)),
            Err(e) => Output::error(e),
        }
    }

    async fn whoami(&self) -> Output {
        let Some(login) = &self.login else {
            return Output::info("not logged in");
        };
        match self.auth.me(&login.token).await {
            Ok(user) => Output::info(format!("{} (user {})", user.username, user.user_id)),
            Err(e) => Output::error(e),
        }
    }

    fn forget_login(&mut self) {
        self.login = None;
        self.oldest_shown = None;
        self.view.set_user(None);
    }

    /// Commands that need the socket.
    async fn online(&mut self, command: Command) -> Result<Output, CallError> {
        let Some(login) = &self.login else {
            return Ok(Output::error("log in first: /login <username> <password>"));
        };
        let link = &login.link;
        let view = &self.view;
        let output = match command {
            Command::UserInviteCode => {
                let r: UserInviteCode = link.call_as(Request::FetchUserInviteCode).await?;
                Output::info(format!(
                    "your invite code: {} (others connect with /invite {})",
                    r.invite_code, r.invite_code
                ))
            }
            Command::ChannelInviteCode(channel_id) => {
                let r: ChannelInviteCode = link
                    .call_as(Request::FetchChannelInviteCode { channel_id })
                    .await?;
                Output::info(format!(
                    "invite code of channel {}: {} (others join with /join {})",
                    r.channel_id, r.invite_code, r.invite_code
                ))
            }
            Command::Invite(invite_code) => {
                let r: ConnectionChange = link.call_as(Request::Invite { invite_code }).await?;
                view.learn_user(&r.username);
                Output::info(format!(
                    "invited {}; they can /accept {}",
                    r.username, login.username
                ))
            }
            Command::Accept(username) => {
                let r: ConnectionChange = link.call_as(Request::Accept { username }).await?;
                view.learn_user(&r.username);
                Output::info(format!("you are now connected with {}", r.username))
            }
            Command::Reject(username) => {
                let r: ConnectionChange = link.call_as(Request::Reject { username }).await?;
                Output::info(format!("rejected the invitation from {}", r.username))
            }
            Command::Disconnect(username) => {
                let r: ConnectionChange = link.call_as(Request::Disconnect { username }).await?;
                Output::info(format!("disconnected from {}", r.username))
            }
            Command::Connections => {
                list_connections(
                    link,
                    view,
                    ConnectionFilter::Accepted,
                    "no connections yet; /invite-code user shows the code to share",
                )
                .await?
            }
            Command::Pending => {
                list_connections(
                    link,
                    view,
                    ConnectionFilter::Pending,
                    "no pending invitations",
                )
                .await?
            }
            Command::Channels => {
                let r: Channels = link.call_as(Request::FetchChannels).await?;
                if r.channels.is_empty() {
                    Output::info("no channels yet; /create <title> <username> makes one")
                } else {
                    Output::ok(
                        r.channels
                            .into_iter()
                            .map(|c| {
                                view.learn_channel(c.channel_id);
                                Event::Channel {
                                    channel_id: c.channel_id,
                                    title: c.title,
                                    head_count: c.head_count,
                                    unread: c.last_seq.count_after(c.last_read_seq),
                                }
                            })
                            .collect(),
                    )
                }
            }
            Command::Create { title, usernames } => {
                let r: ChannelCreated = link.call_as(Request::Create { title, usernames }).await?;
                view.learn_channel(r.channel_id);
                Output::info(format!(
                    "created {} (channel {}, {} members); /enter {}",
                    r.title, r.channel_id, r.head_count, r.channel_id
                ))
            }
            Command::Join(invite_code) => {
                let r: ChannelCreated = link.call_as(Request::Join { invite_code }).await?;
                view.learn_channel(r.channel_id);
                Output::info(format!(
                    "joined {} (channel {}, {} members); /enter {}",
                    r.title, r.channel_id, r.head_count, r.channel_id
                ))
            }
            Command::Enter(channel_id) => {
                let outcome = link.enter(channel_id, PAGE).await?;
                let Entered {
                    channel_id,
                    title,
                    last_read_seq,
                    last_seq,
                } = outcome.entered;
                let oldest = outcome.messages.first().map_or(last_seq.next(), |m| m.seq);
                self.oldest_shown = Some((channel_id, oldest));
                let unread = last_seq.count_after(last_read_seq);
                let mut events = vec![Event::Info(format!(
                    "entered {title} (channel {channel_id}, {unread} unread); type to send, /leave to leave"
                ))];
                events.extend(messages(channel_id, outcome.messages));
                Output::ok(events)
            }
            Command::Leave => {
                let left = view.snapshot().channel;
                link.call(Request::Leave).await?;
                self.oldest_shown = None;
                match left {
                    Some((_, title)) => Output::info(format!("left {title}")),
                    None => Output::info("you were not in a channel"),
                }
            }
            Command::Quit(channel_id) => {
                let r: Quit = link.call_as(Request::Quit { channel_id }).await?;
                if self.oldest_shown.is_some_and(|(c, _)| c == r.channel_id) {
                    self.oldest_shown = None;
                }
                Output::info(format!(
                    "you are no longer a member of channel {}",
                    r.channel_id
                ))
            }
            Command::History(n) => {
                let Some((channel_id, oldest)) = self.oldest_shown else {
                    return Ok(not_in_channel());
                };
                if oldest <= Seq(1) {
                    return Ok(Output::info("no older messages"));
                }
                let r: Messages = link
                    .call_as(Request::FetchMessages {
                        channel_id,
                        after_seq: None,
                        before_seq: Some(oldest),
                        limit: Some(n.unwrap_or(PAGE)),
                    })
                    .await?;
                match r.messages.first() {
                    None => Output::info("no older messages"),
                    Some(first) => {
                        self.oldest_shown = Some((channel_id, first.seq));
                        Output::ok(messages(channel_id, r.messages).collect())
                    }
                }
            }
            Command::Read => {
                let snapshot = view.snapshot();
                let Some((channel_id, title)) = snapshot.channel else {
                    return Ok(not_in_channel());
                };
                link.call(Request::Read {
                    channel_id,
                    seq: snapshot.last_seen,
                })
                .await?;
                Output::info(format!("marked {title} read"))
            }
            Command::Say(content) => {
                let Some((channel_id, _)) = view.snapshot().channel else {
                    return Ok(not_in_channel());
                };
                let written = write(link, channel_id, content.clone()).await?;
                Output::ok(vec![Event::Message {
                    channel_id,
                    seq: written.seq,
                    username: Some(login.username.clone()),
                    content,
                    sent_at: written.sent_at,
                }])
            }
            Command::Register { .. }
            | Command::Login { .. }
            | Command::Logout
            | Command::Unregister
            | Command::Whoami
            | Command::Help(_)
            | Command::Clear
            | Command::Exit => Output::ok(Vec::new()),
        };
        Ok(output)
    }
}

/// Writes a message; one retry with the same `client_msg_id` when the
/// server was too slow to say, which the protocol makes safe.
async fn write(link: &Link, channel_id: ChannelId, content: String) -> Result<Written, CallError> {
    let request = Request::WriteMessage {
        channel_id,
        client_msg_id: uuid::Uuid::new_v4().to_string(),
        content,
    };
    match link.call_as(request.clone()).await {
        Err(CallError::Server {
            code: ErrorCode::Unavailable,
            ..
        }) => link.call_as(request).await,
        other => other,
    }
}

async fn list_connections(
    link: &Link,
    view: &SharedView,
    status: ConnectionFilter,
    empty: &str,
) -> Result<Output, CallError> {
    let r: Connections = link.call_as(Request::FetchConnections { status }).await?;
    if r.connections.is_empty() {
        return Ok(Output::info(empty));
    }
    Ok(Output::ok(
        r.connections
            .into_iter()
            .map(|c| {
                view.learn_user(&c.username);
                Event::Connection {
                    username: c.username,
                    status: c.status,
                    online: c.online,
                }
            })
            .collect(),
    ))
}

fn messages(channel_id: ChannelId, entries: Vec<MessageEntry>) -> impl Iterator<Item = Event> {
    entries.into_iter().map(move |m| Event::Message {
        channel_id,
        seq: m.seq,
        username: m.username,
        content: m.content,
        sent_at: m.sent_at,
    })
}

fn not_in_channel() -> Output {
    Output::error("you are not in a channel; /channels lists yours, /enter <channelId> enters one")
}

/// `/help` and `/help <command>`.
#[must_use]
pub fn help(topic: Option<&str>) -> Output {
    match topic {
        None => {
            let mut events: Vec<Event> = COMMANDS
                .iter()
                .map(|s| {
                    let call = if s.args.is_empty() {
                        s.name.to_owned()
                    } else {
                        format!("{} {}", s.name, s.args)
                    };
                    Event::Info(format!("{call:<44} {}", s.summary))
                })
                .collect();
            events.push(Event::Info(
                "any other line is a message to the channel you are in".into(),
            ));
            Output::ok(events)
        }
        Some(name) => match spec(name) {
            Some(s) => Output::ok(vec![
                Event::Info(s.usage()),
                Event::Info(s.summary.to_owned()),
            ]),
            None => Output::error(ParseError::Unknown(name.to_owned()).to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline() -> Session {
        Session::new(&Endpoints::behind_ingress("http://127.0.0.1:9")).0
    }

    #[tokio::test]
    async fn channel_commands_need_a_login_first() {
        let mut s = offline();
        for line in [
            "/channels",
            "/enter 1",
            "hello",
            "/invite-code user",
            "/read",
        ] {
            let out = s.run_line(line).await;
            assert!(!out.ok, "{line}");
            assert_eq!(
                out.events,
                [Event::Error(
                    "log in first: /login <username> <password>".into()
                )],
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_line_fails_with_its_usage() {
        let out = offline().run_line("/enter").await;
        assert!(!out.ok);
        assert_eq!(
            out.events,
            [Event::Error("usage: /enter <channelId>".into())]
        );
    }

    #[tokio::test]
    async fn clear_and_exit_are_actions() {
        let mut s = offline();
        assert_eq!(s.run_line("/clear").await.action, Action::Clear);
        assert_eq!(s.run_line("/exit").await.action, Action::Exit);
    }

    #[tokio::test]
    async fn an_unreachable_auth_service_is_one_readable_error() {
        let out = offline().run_line("/login alice password1").await;
        assert!(!out.ok);
        let [Event::Error(text)] = out.events.as_slice() else {
            panic!("one error expected: {:?}", out.events);
        };
        assert!(
            text.starts_with("cannot reach the auth service at http://127.0.0.1:9"),
            "{text}"
        );
    }

    #[test]
    fn help_lists_every_command_and_explains_one() {
        let all = help(None);
        assert_eq!(all.events.len(), COMMANDS.len() + 1);
        let one = help(Some("enter"));
        assert_eq!(
            one.events,
            [
                Event::Info("usage: /enter <channelId>".into()),
                Event::Info("enter a channel: its last messages, then live ones".into()),
            ]
        );
        assert!(!help(Some("dance")).ok);
    }
}
