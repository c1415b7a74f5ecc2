//! The client's brain: [`Session::execute`] runs one [`Command`] and
//! returns what to show. Pushes arrive separately, on the event channel
//! [`Session::new`] returns. The REPL and the script mode are thin shells
//! around this; tests drive it directly.
//!
//! Some commands need an answer first — a password that must not be typed
//! into the line, or a yes to something that cannot be undone. Those return
//! [`Action::Ask`]; the front end asks in its own way (a hidden prompt,
//! `NATTER_PASSWORD`) and hands the reply to [`Session::answer`].

use crate::auth::AuthClient;
use crate::cli::Endpoints;
use crate::command::{COMMANDS, ChannelRef, Command, ParseError, parse, spec};
use crate::keeper::{Ended, Keeper};
use crate::link::{CallError, ConnectError, Link, TypingHandle, WriteOutcome};
use crate::render::Event;
use crate::state::SharedView;
use crate::store::Store;
use natter_protocol::frames::results::{
    ChannelCreated, ChannelInviteCode, Channels, ConnectionChange, Connections, Entered, Members,
    MessageEntry, Messages, Quit, UserInviteCode,
};
use natter_protocol::frames::{ConnectionFilter, Request};
use natter_protocol::limits::CONTENT_CHARS;
use natter_protocol::{ChannelId, Seq};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How many messages `/enter` shows when nothing is unread, and `/history`
/// by default.
pub const PAGE: i64 = 20;
/// A message of more lines than this is sent only after a yes (a paste
/// into the wrong window should not flood a channel).
pub const ASK_ABOVE_LINES: usize = 5;

/// What the front end should do after showing an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing special.
    Continue,
    /// Clear the screen.
    Clear,
    /// Close the client.
    Exit,
    /// Ask the user, then call [`Session::answer`].
    Ask(Question),
}

/// What the session needs to know before it goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// A password: read without echo. The text is the prompt.
    Secret(String),
    /// A yes or no; anything but yes is no. The text is the question.
    Confirm(String),
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

    fn then(mut self, more: Self) -> Self {
        self.events.extend(more.events);
        self.ok &= more.ok;
        self.action = more.action;
        self
    }
}

/// A command waiting for its answer.
#[derive(Debug, Clone)]
enum Awaiting {
    Login {
        username: String,
    },
    Register {
        username: String,
    },
    RegisterAgain {
        username: String,
        password: String,
    },
    Unregister,
    Quit {
        channel_id: ChannelId,
        title: String,
    },
    Send {
        channel_id: ChannelId,
        parts: Vec<String>,
    },
}

struct LoggedIn {
    username: String,
    keeper: Arc<Keeper>,
    link: Link,
}

/// Where the prompt sends "the user is typing"; follows the login.
#[derive(Debug, Clone, Default)]
pub struct TypingSlot(Arc<Mutex<Option<TypingHandle>>>);

impl TypingSlot {
    /// The user changed the message they are composing.
    pub fn typing(&self) {
        if let Some(handle) = self.lock().as_ref() {
            handle.typing();
        }
    }

    fn set(&self, handle: Option<TypingHandle>) {
        *self.lock() = handle;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<TypingHandle>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One user's client session.
pub struct Session {
    auth: AuthClient,
    ws_url: String,
    auth_url: String,
    store_path: Option<PathBuf>,
    events: mpsc::UnboundedSender<Event>,
    view: SharedView,
    typing: TypingSlot,
    login: Option<LoggedIn>,
    /// The entered channel and the oldest seq shown in it (for `/history`).
    oldest_shown: Option<(ChannelId, Seq)>,
    awaiting: Option<Awaiting>,
    /// A session that ended by itself: who, and the channel they were in,
    /// to return to after they log in again.
    return_to: Option<(String, ChannelId)>,
}

impl Session {
    /// A logged-out session that saves no login, and the channel its
    /// pushes arrive on.
    #[must_use]
    pub fn new(endpoints: &Endpoints) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let session = Self {
            auth: AuthClient::new(&endpoints.auth_url),
            ws_url: endpoints.ws_url.clone(),
            auth_url: endpoints.auth_url.clone(),
            store_path: None,
            events,
            view: SharedView::default(),
            typing: TypingSlot::default(),
            login: None,
            oldest_shown: None,
            awaiting: None,
            return_to: None,
        };
        (session, rx)
    }

    /// Saves the login in (and resumes it from) the file at `path`.
    #[must_use]
    pub fn with_store(mut self, path: Option<PathBuf>) -> Self {
        self.store_path = path;
        self
    }

    fn store(&self) -> Option<Store> {
        self.store_path
            .clone()
            .map(|path| Store::new(path, &self.auth_url))
    }

    /// The state the prompt and completer show.
    #[must_use]
    pub fn view(&self) -> SharedView {
        self.view.clone()
    }

    /// Where the prompt reports typing.
    #[must_use]
    pub fn typing_slot(&self) -> TypingSlot {
        self.typing.clone()
    }

    /// Resumes the saved session, if there is one: online again, back in
    /// the channel it was in. Nothing to show when nothing was saved.
    pub async fn resume(&mut self) -> Output {
        let Some(store) = self.store() else {
            return Output::ok(Vec::new());
        };
        let Some(saved) = store.load() else {
            return Output::ok(Vec::new());
        };
        let username = saved.username.clone();
        let channel = saved.channel_id;
        let keeper = Arc::new(Keeper::resumed(self.auth.clone(), Some(store), saved));
        match self.go_online(&username, keeper).await {
            Ok(()) => {
                let resumed = Output::info(format!("resumed the session of {username}"));
                let summary = self.summary().await;
                let back = self.return_to_channel(channel).await;
                resumed.then(summary).then(back)
            }
            Err(ConnectError::Unauthorized) => {
                self.return_to = channel.map(|c| (username.clone(), c));
                Output::ok(vec![Event::SessionExpired])
            }
            Err(ConnectError::Other(e)) => Output::error(format!(
                "could not resume the session of {username}: {e}; /login {username} to try again"
            )),
        }
    }

    /// Parses and runs one line. A question still open is dropped.
    pub async fn run_line(&mut self, line: &str) -> Output {
        self.awaiting = None;
        match parse(line) {
            Ok(Some(command)) => self.execute(command).await,
            Ok(None) => Output::ok(Vec::new()),
            Err(e) => Output::error(e.to_string()),
        }
    }

    /// The answer to the last [`Action::Ask`]; `None` when the user
    /// cancelled (Ctrl-C, end of input).
    pub async fn answer(&mut self, reply: Option<String>) -> Output {
        let Some(awaiting) = self.awaiting.take() else {
            return Output::ok(Vec::new());
        };
        let Some(reply) = reply else {
            return Output::info("cancelled");
        };
        let yes = matches!(reply.trim().to_ascii_lowercase().as_str(), "y" | "yes");
        match awaiting {
            Awaiting::Login { username } => self.log_in(&username, &reply).await,
            Awaiting::Register { username } => {
                self.awaiting = Some(Awaiting::RegisterAgain {
                    username,
                    password: reply,
                });
                Output::action(Action::Ask(Question::Secret(
                    "the same password again: ".into(),
                )))
            }
            Awaiting::RegisterAgain { username, password } => {
                if password == reply {
                    self.register(&username, &password).await
                } else {
                    Output::error("the passwords differ; nothing was registered")
                }
            }
            Awaiting::Unregister => self.unregister(&reply).await,
            Awaiting::Quit { channel_id, title } if yes => self.quit(channel_id, &title).await,
            Awaiting::Send { channel_id, parts } if yes => self.send(channel_id, parts).await,
            Awaiting::Quit { .. } | Awaiting::Send { .. } => Output::info("nothing done"),
        }
    }

    fn ask(&mut self, awaiting: Awaiting, question: Question) -> Output {
        self.awaiting = Some(awaiting);
        Output::action(Action::Ask(question))
    }

    /// Closes the socket (without logging out: the saved session stays).
    pub async fn close(&mut self) {
        if let Some(login) = self.login.take() {
            login.link.close().await;
        }
        self.typing.set(None);
    }

    /// Runs one command.
    pub async fn execute(&mut self, command: Command) -> Output {
        self.notice_ended_session().await;
        match command {
            Command::Register { username, password } => match password {
                Some(password) => self.register(&username, &password).await,
                None => self.ask(
                    Awaiting::Register {
                        username: username.clone(),
                    },
                    Question::Secret(format!("choose a password for {username}: ")),
                ),
            },
            Command::Login { username, password } => {
                if let Some(login) = &self.login {
                    return if login.username == username {
                        Output::info(format!("already logged in as {username}"))
                    } else {
                        Output::error(format!(
                            "already logged in as {}; /logout first",
                            login.username
                        ))
                    };
                }
                match password {
                    Some(password) => self.log_in(&username, &password).await,
                    None => self.ask(
                        Awaiting::Login {
                            username: username.clone(),
                        },
                        Question::Secret(format!("password for {username}: ")),
                    ),
                }
            }
            Command::Logout => self.log_out().await,
            Command::Unregister => match &self.login {
                None => Output::error("log in first: /login <username>"),
                Some(login) => {
                    let question = format!(
                        "this deletes the account {} for good; its password to confirm: ",
                        login.username
                    );
                    self.ask(Awaiting::Unregister, Question::Secret(question))
                }
            },
            Command::Whoami => self.whoami().await,
            Command::Help(topic) => help(topic.as_deref()),
            Command::Clear => Output::action(Action::Clear),
            Command::Exit => Output::action(Action::Exit),
            other => match &self.login {
                None => Output::error("log in first: /login <username>"),
                Some(_) => self
                    .online(other)
                    .await
                    .unwrap_or_else(|e| Output::error(e.describe())),
            },
        }
    }

    /// A link that ended by itself (expired, revoked elsewhere) leaves a
    /// session that is no more: forget it, but remember where the user was.
    async fn notice_ended_session(&mut self) {
        if self.login.as_ref().is_some_and(|l| !l.link.is_alive()) {
            if let Some(login) = self.login.take() {
                if let Some(channel) = login.keeper.channel().await {
                    self.return_to = Some((login.username.clone(), channel));
                }
                login.keeper.forget();
            }
            self.forget_login();
        }
    }

    async fn register(&mut self, username: &str, password: &str) -> Output {
        match self.auth.register(username, password).await {
            Ok(user) => Output::info(format!(
                "registered {} (user {}); now /login {}",
                user.username, user.user_id, user.username
            )),
            Err(e) => Output::error(e),
        }
    }

    async fn log_in(&mut self, username: &str, password: &str) -> Output {
        let granted = match self.auth.login(username, password).await {
            Ok(granted) => granted,
            Err(e) => return Output::error(e),
        };
        let keeper = Arc::new(Keeper::from_login(
            self.auth.clone(),
            self.store(),
            username,
            granted,
        ));
        match self.go_online(username, keeper.clone()).await {
            Ok(()) => {
                let done = Output::info(format!("logged in as {username}"));
                let summary = self.summary().await;
                let back = match self.return_to.take() {
                    Some((who, channel)) if who == username => {
                        self.return_to_channel(Some(channel)).await
                    }
                    _ => Output::ok(Vec::new()),
                };
                done.then(summary).then(back)
            }
            Err(e) => {
                // Without a socket the login is useless; do not leave the
                // session behind on the server (or in the file).
                keeper.forget();
                if let Ok(token) = keeper.token().await {
                    let _ = self.auth.logout(&token).await;
                }
                Output::error(format!("logged in, but {e}"))
            }
        }
    }

    async fn go_online(&mut self, username: &str, keeper: Arc<Keeper>) -> Result<(), ConnectError> {
        let link = Link::open(
            &self.ws_url,
            keeper.clone(),
            self.events.clone(),
            self.view.clone(),
        )
        .await?;
        self.view.set_user(Some(username.to_owned()));
        self.typing.set(Some(link.typing_handle()));
        self.login = Some(LoggedIn {
            username: username.to_owned(),
            keeper,
            link,
        });
        Ok(())
    }

    /// What waits for the user: invitations and unread channels.
    async fn summary(&mut self) -> Output {
        let Some(login) = &self.login else {
            return Output::ok(Vec::new());
        };
        let mut events = Vec::new();
        let pending: Result<Connections, _> = login
            .link
            .call_as(Request::FetchConnections {
                status: ConnectionFilter::Pending,
            })
            .await;
        if let Ok(pending) = pending
            && !pending.connections.is_empty()
        {
            let names: Vec<&str> = pending
                .connections
                .iter()
                .map(|c| {
                    self.view.learn_user(&c.username);
                    c.username.as_str()
                })
                .collect();
            events.push(Event::Info(format!(
                "{} waiting: {} — /accept <username> or /reject <username>",
                plural(names.len(), "invitation"),
                names.join(", ")
            )));
        }
        let channels: Result<Channels, _> = login.link.call_as(Request::FetchChannels).await;
        if let Ok(channels) = channels {
            let unread: Vec<String> = channels
                .channels
                .iter()
                .filter_map(|c| {
                    self.view.learn_channel(c.channel_id, Some(&c.title));
                    let n = c.last_seq.count_after(c.last_read_seq);
                    (n > 0).then(|| format!("{} ({n})", c.title))
                })
                .collect();
            events.push(Event::Info(if unread.is_empty() {
                "no unread messages".into()
            } else {
                format!("unread: {} — /enter <channel>", unread.join(", "))
            }));
        }
        Output::ok(events)
    }

    async fn return_to_channel(&mut self, channel: Option<ChannelId>) -> Output {
        let Some(channel_id) = channel else {
            return Output::ok(Vec::new());
        };
        match self
            .online(Command::Enter(ChannelRef::Id(channel_id)))
            .await
        {
            Ok(output) => output,
            Err(e) => Output::error(format!(
                "could not return to channel {channel_id}: {}",
                e.describe()
            )),
        }
    }

    /// Closes the socket first, so the server's `session_revoked` push for
    /// our own logout is not shown as if someone else ended the session.
    async fn log_out(&mut self) -> Output {
        self.return_to = None;
        let Some(login) = self.login.take() else {
            return Output::error("you are not logged in");
        };
        login.link.close().await;
        self.forget_login();
        login.keeper.forget();
        let token = match login.keeper.token().await {
            Ok(token) => token,
            Err(Ended::Unreachable(e)) => return Output::error(e),
            Err(_) => return Output::info(format!("logged out {}", login.username)),
        };
        match self.auth.logout(&token).await {
            Ok(()) => Output::info(format!("logged out {}", login.username)),
            Err(e) => Output::error(e),
        }
    }

    /// Deletes the account once the password proves it is the owner: the
    /// check is a login of its own, whose token then does the deleting.
    async fn unregister(&mut self, password: &str) -> Output {
        let Some(username) = self.login.as_ref().map(|l| l.username.clone()) else {
            return Output::error("log in first: /login <username>");
        };
        let granted = match self.auth.login(&username, password).await {
            Ok(granted) => granted,
            Err(e) => return Output::error(format!("{e}; the account is kept")),
        };
        if let Some(login) = self.login.take() {
            login.link.close().await;
            login.keeper.forget();
        }
        self.forget_login();
        self.return_to = None;
        match self.auth.unregister(&granted.token).await {
            Ok(()) => Output::info(format!("account {username} deleted")),
            Err(e) => Output::error(e),
        }
    }

    async fn whoami(&self) -> Output {
        let Some(login) = &self.login else {
            return Output::info("not logged in");
        };
        let token = match login.keeper.token().await {
            Ok(token) => token,
            Err(Ended::Unreachable(e)) => return Output::error(e),
            Err(_) => return Output::ok(vec![Event::SessionExpired]),
        };
        match self.auth.me(&token).await {
            Ok(user) => Output::info(format!("{} (user {})", user.username, user.user_id)),
            Err(e) => Output::error(e),
        }
    }

    fn forget_login(&mut self) {
        self.login = None;
        self.oldest_shown = None;
        self.typing.set(None);
        self.view.set_user(None);
    }

    /// A channel the user named: an id as it is, a title when exactly one
    /// of their channels has it (the list is fetched when unknown).
    async fn resolve(&self, channel: &ChannelRef) -> Result<Result<ChannelId, Output>, CallError> {
        let title = match channel {
            ChannelRef::Id(id) => return Ok(Ok(*id)),
            ChannelRef::Title(title) => title,
        };
        let mut ids = self.view.snapshot().channels_titled(title);
        if ids.len() != 1
            && let Some(login) = &self.login
        {
            let r: Channels = login.link.call_as(Request::FetchChannels).await?;
            for c in &r.channels {
                self.view.learn_channel(c.channel_id, Some(&c.title));
            }
            ids = r
                .channels
                .iter()
                .filter(|c| c.title.eq_ignore_ascii_case(title))
                .map(|c| c.channel_id)
                .collect();
        }
        Ok(match ids.as_slice() {
            [id] => Ok(*id),
            [] => Err(Output::error(format!(
                "you have no channel titled {title}; /channels lists yours"
            ))),
            many => Err(Output::error(format!(
                "{} of your channels are titled {title} ({}); name one by its id",
                many.len(),
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        })
    }

    /// The named channel, or the entered one.
    async fn channel_or_current(
        &self,
        channel: Option<&ChannelRef>,
    ) -> Result<Result<ChannelId, Output>, CallError> {
        match channel {
            Some(channel) => self.resolve(channel).await,
            None => Ok(self
                .view
                .snapshot()
                .channel
                .map(|(id, _)| id)
                .ok_or_else(not_in_channel)),
        }
    }

    async fn quit(&mut self, channel_id: ChannelId, title: &str) -> Output {
        let Some(login) = &self.login else {
            return Output::error("log in first: /login <username>");
        };
        let r: Result<Quit, _> = login.link.call_as(Request::Quit { channel_id }).await;
        match r {
            Ok(_) => {
                if self.oldest_shown.is_some_and(|(c, _)| c == channel_id) {
                    self.oldest_shown = None;
                    login.keeper.set_channel(None).await;
                }
                Output::info(format!("you are no longer a member of {title}"))
            }
            Err(e) => Output::error(e.describe()),
        }
    }

    async fn send(&mut self, channel_id: ChannelId, parts: Vec<String>) -> Output {
        let Some(login) = &self.login else {
            return Output::error("log in first: /login <username>");
        };
        let mut events = Vec::new();
        for content in parts {
            match login.link.write(channel_id, content.clone()).await {
                Ok(WriteOutcome::Sent(written)) => events.push(Event::Message {
                    channel_id,
                    seq: written.seq,
                    username: Some(login.username.clone()),
                    content,
                    sent_at: written.sent_at,
                }),
                Ok(WriteOutcome::Queued) => events.push(Event::Pending {
                    channel_id,
                    username: login.username.clone(),
                    content,
                }),
                Err(e) => {
                    events.push(Event::Error(e.describe()));
                    return Output {
                        events,
                        ok: false,
                        action: Action::Continue,
                    };
                }
            }
        }
        Output::ok(events)
    }

    /// Commands that need the socket.
    #[expect(
        clippy::too_many_lines,
        reason = "one arm per command reads best as one match"
    )]
    async fn online(&mut self, command: Command) -> Result<Output, CallError> {
        let Some(login) = &self.login else {
            return Ok(Output::error("log in first: /login <username>"));
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
            Command::ChannelInviteCode(channel) => {
                let channel_id = match self.resolve(&channel).await? {
                    Ok(id) => id,
                    Err(out) => return Ok(out),
                };
                let r: ChannelInviteCode = link
                    .call_as(Request::FetchChannelInviteCode { channel_id })
                    .await?;
                Output::info(format!(
                    "invite code of {}: {} (others join with /join {})",
                    view.snapshot().channel_name(r.channel_id),
                    r.invite_code,
                    r.invite_code
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
                Output::info(format!(
                    "rejected the invitation from {n}; neither of you can invite the other \
                     until you /disconnect {n}, which clears it",
                    n = r.username
                ))
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
                                view.learn_channel(c.channel_id, Some(&c.title));
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
                view.learn_channel(r.channel_id, Some(&r.title));
                Output::info(format!(
                    "created {} (channel {}, {} members); /enter {}",
                    r.title, r.channel_id, r.head_count, r.channel_id
                ))
            }
            Command::Join(invite_code) => {
                let r: ChannelCreated = link.call_as(Request::Join { invite_code }).await?;
                view.learn_channel(r.channel_id, Some(&r.title));
                Output::info(format!(
                    "joined {} (channel {}, {} members); /enter {}",
                    r.title, r.channel_id, r.head_count, r.channel_id
                ))
            }
            Command::Enter(channel) => {
                let channel_id = match self.resolve(&channel).await? {
                    Ok(id) => id,
                    Err(out) => return Ok(out),
                };
                let outcome = link.enter(channel_id, PAGE).await?;
                let Entered {
                    channel_id,
                    title,
                    last_read_seq,
                    last_seq,
                } = outcome.entered;
                login.keeper.set_channel(Some(channel_id)).await;
                let oldest = outcome.messages.first().map_or(last_seq.next(), |m| m.seq);
                self.oldest_shown = Some((channel_id, oldest));
                let unread = last_seq.count_after(last_read_seq);
                let mut events = vec![Event::Info(format!(
                    "entered {title} (channel {channel_id}, {unread} unread); type to send, /leave to leave"
                ))];
                let mut marked = unread == 0;
                for m in outcome.messages {
                    if !marked && m.seq > last_read_seq {
                        events.push(Event::NewMarker);
                        marked = true;
                    }
                    events.push(message(channel_id, m));
                }
                if outcome.more_unread > 0 {
                    events.push(Event::Info(format!(
                        "… {} more unread; /more shows the next page",
                        outcome.more_unread
                    )));
                }
                Output::ok(events)
            }
            Command::More => {
                if view.snapshot().channel.is_none() {
                    return Ok(not_in_channel());
                }
                let page = link.more().await?;
                match page.first() {
                    None => Output::info("no more unread messages"),
                    Some(_) => {
                        let channel_id = view.snapshot().channel.map_or(ChannelId(0), |(id, _)| id);
                        Output::ok(page.into_iter().map(|m| message(channel_id, m)).collect())
                    }
                }
            }
            Command::Members(channel) => {
                let channel_id = match self.channel_or_current(channel.as_ref()).await? {
                    Ok(id) => id,
                    Err(out) => return Ok(out),
                };
                members(link, view, channel_id).await?
            }
            Command::Leave => {
                let left = view.snapshot().channel;
                link.call(Request::Leave).await?;
                login.keeper.set_channel(None).await;
                self.oldest_shown = None;
                match left {
                    Some((_, title)) => Output::info(format!("left {title}")),
                    None => Output::info("you were not in a channel"),
                }
            }
            Command::Quit(channel) => {
                let channel_id = match self.channel_or_current(channel.as_ref()).await? {
                    Ok(id) => id,
                    Err(out) => return Ok(out),
                };
                let title = view.snapshot().channel_name(channel_id);
                let question = format!(
                    "stop being a member of {title}? Coming back needs its invite code. [y/N] "
                );
                return Ok(self.ask(
                    Awaiting::Quit { channel_id, title },
                    Question::Confirm(question),
                ));
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
                        let title = view.snapshot().channel_name(channel_id);
                        let mut events = vec![Event::Info(format!(
                            "── earlier in {title}: {} ──",
                            plural(r.messages.len(), "message")
                        ))];
                        events.extend(r.messages.into_iter().map(|m| message(channel_id, m)));
                        Output::ok(events)
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
                let parts = split_message(&content, *CONTENT_CHARS.end());
                let lines = content.lines().count();
                if parts.len() > 1 {
                    let question = format!(
                        "that message is {} characters; natter takes {} at most. Send it as {} messages? [y/N] ",
                        content.chars().count(),
                        CONTENT_CHARS.end(),
                        parts.len()
                    );
                    return Ok(self.ask(
                        Awaiting::Send { channel_id, parts },
                        Question::Confirm(question),
                    ));
                }
                if lines > ASK_ABOVE_LINES {
                    let question = format!("send these {lines} lines as one message? [y/N] ");
                    return Ok(self.ask(
                        Awaiting::Send { channel_id, parts },
                        Question::Confirm(question),
                    ));
                }
                return Ok(self.send(channel_id, parts).await);
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

/// Splits `content` into messages of at most `max` chars, at line ends
/// where it can (else at a space, else anywhere), so a long paste arrives
/// as readable pieces in order.
#[must_use]
pub fn split_message(content: &str, max: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest: Vec<char> = content.chars().collect();
    while rest.len() > max {
        let window = &rest[..=max];
        let cut = window
            .iter()
            .rposition(|c| *c == '\n')
            .or_else(|| window.iter().rposition(|c| *c == ' '))
            .filter(|&i| i > 0)
            .unwrap_or(max);
        let part: String = rest[..cut].iter().collect();
        let skip = usize::from(cut < rest.len() && matches!(rest[cut], '\n' | ' '));
        rest.drain(..cut + skip);
        if !part.trim().is_empty() {
            parts.push(part);
        }
    }
    let last: String = rest.into_iter().collect();
    if !last.trim().is_empty() {
        parts.push(last);
    }
    parts
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
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

async fn members(
    link: &Link,
    view: &SharedView,
    channel_id: ChannelId,
) -> Result<Output, CallError> {
    let r: Members = link.call_as(Request::FetchMembers { channel_id }).await?;
    let title = view.snapshot().channel_name(channel_id);
    let online = r.members.iter().filter(|m| m.online).count();
    let mut events = vec![Event::Info(format!(
        "{} of {title}, {online} online:",
        plural(r.members.len(), "member")
    ))];
    events.extend(r.members.into_iter().map(|m| {
        view.learn_user(&m.username);
        Event::Member {
            username: m.username,
            online: m.online,
        }
    }));
    Ok(Output::ok(events))
}

fn message(channel_id: ChannelId, m: MessageEntry) -> Event {
    Event::Message {
        channel_id,
        seq: m.seq,
        username: m.username,
        content: m.content,
        sent_at: m.sent_at,
    }
}

fn not_in_channel() -> Output {
    Output::error("you are not in a channel; /channels lists yours, /enter <channel> enters one")
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
                "any other line is a message to the channel you are in (// starts one with /)"
                    .into(),
            ));
            Output::ok(events)
        }
        Some(name) => match spec(name) {
            Some(s) => Output::ok(vec![
                Event::Info(s.usage()),
                Event::Info(s.summary.to_owned()),
            ]),
            None => Output::error(
                ParseError::Unknown(name.to_owned(), crate::command::suggest(name)).to_string(),
            ),
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
            "/members",
            "/part",
        ] {
            let out = s.run_line(line).await;
            assert!(!out.ok, "{line}");
            assert_eq!(
                out.events,
                [Event::Error("log in first: /login <username>".into())],
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_line_fails_with_its_usage() {
        let out = offline().run_line("/enter").await;
        assert!(!out.ok);
        assert_eq!(out.events, [Event::Error("usage: /enter <channel>".into())]);
    }

    #[tokio::test]
    async fn clear_exit_and_a_bare_quit_are_actions() {
        let mut s = offline();
        assert_eq!(s.run_line("/clear").await.action, Action::Clear);
        assert_eq!(s.run_line("/exit").await.action, Action::Exit);
        assert_eq!(s.run_line("/quit").await.action, Action::Exit);
    }

    #[tokio::test]
    async fn login_without_a_password_asks_for_it_hidden_and_can_be_cancelled() {
        let mut s = offline();
        let out = s.run_line("/login alice").await;
        assert_eq!(
            out.action,
            Action::Ask(Question::Secret("password for alice: ".into()))
        );
        assert!(out.events.is_empty());
        assert_eq!(
            s.answer(None).await.events,
            [Event::Info("cancelled".into())]
        );
        assert!(
            s.answer(Some("late".into())).await.events.is_empty(),
            "asked once"
        );

        s.run_line("/login alice").await;
        let out = s.answer(Some("password1".into())).await;
        let [Event::Error(text)] = out.events.as_slice() else {
            panic!("one error expected: {:?}", out.events);
        };
        assert!(text.starts_with("cannot reach the auth service"), "{text}");
    }

    #[tokio::test]
    async fn register_asks_for_the_password_twice() {
        let mut s = offline();
        s.run_line("/register alice").await;
        let out = s.answer(Some("password1".into())).await;
        assert_eq!(
            out.action,
            Action::Ask(Question::Secret("the same password again: ".into()))
        );
        let out = s.answer(Some("password2".into())).await;
        assert_eq!(
            out.events,
            [Event::Error(
                "the passwords differ; nothing was registered".into()
            )]
        );
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
                Event::Info("usage: /enter <channel>".into()),
                Event::Info(
                    "enter a channel (id or title): from its first unread message, then live"
                        .into()
                ),
            ]
        );
        assert!(!help(Some("dance")).ok);
    }

    #[test]
    fn a_long_message_splits_at_line_ends_then_spaces_within_the_limit() {
        assert_eq!(split_message("short", 10), ["short"]);
        assert_eq!(
            split_message("aaaa\nbbbb\ncccc", 10),
            ["aaaa\nbbbb", "cccc"]
        );
        assert_eq!(split_message("aaaa bbbb cccc", 10), ["aaaa bbbb", "cccc"]);
        assert_eq!(split_message("abcdefghijkl", 5), ["abcde", "fghij", "kl"]);
        let long = "word ".repeat(2000);
        let parts = split_message(&long, 4000);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.chars().count() <= 4000));
        assert_eq!(parts.concat().replace(' ', ""), long.replace(' ', ""));
    }
}
