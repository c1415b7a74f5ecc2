//! The interactive prompt: reedline with a history file (passwords
//! stripped), tab completion of commands, usernames and channels (one Tab
//! completes a single candidate; channels show their titles), usage hints,
//! a prompt showing who and where you are and what is new elsewhere
//! (`alice@general · ops 3 › `), who is typing on its right, and pushes
//! printed above the line being typed (reedline's external printer).
//!
//! Quiet by design: news of another channel prints one line, then only
//! updates the prompt's count; typing shows in the prompt, not as lines; a
//! message you send replaces its echoed input line. Pastes arrive whole
//! (bracketed paste): a multi-line paste is one message.

use crate::command::{COMMANDS, history_entry, spec};
use crate::render::{Event, Look, render};
use crate::session::{Action, Output, Question, Session, TypingSlot};
use crate::state::{SharedView, View};
use crate::terminal;
use owo_colors::OwoColorize;
use reedline::{
    Color, ColumnarMenu, Completer, CompletionResult, DefaultHinter, Emacs, ExternalPrinter,
    FileBackedHistory, Hinter, History, HistoryItem, HistoryItemId, HistorySessionId, KeyCode,
    KeyModifiers, MenuBuilder, Prompt, PromptEditMode, PromptHistorySearch,
    PromptHistorySearchStatus, Reedline, ReedlineEvent, ReedlineMenu, SearchQuery, Signal, Span,
    Suggestion, default_emacs_keybindings,
};
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Lines kept in the history file.
const HISTORY_SIZE: usize = 1000;
/// "bob is typing" shows this long after bob's last `typing`.
const TYPING_SHOWN: Duration = Duration::from_secs(6);
/// The prompt names this many channels with news, then "+n".
const ACTIVITY_SHOWN: usize = 3;
/// What reedline puts before the second and later lines of an input.
const CONTINUATION: &str = "… ";

/// Runs the prompt until `/exit`, `/quit` or Ctrl-D. The session's
/// commands run on `runtime`; the prompt blocks this thread.
///
/// # Errors
/// When the terminal cannot be used.
pub fn run(
    runtime: &Runtime,
    mut session: Session,
    events: mpsc::UnboundedReceiver<Event>,
    history_file: Option<PathBuf>,
    color: bool,
) -> anyhow::Result<()> {
    let look = Look::terminal(color);
    let view = session.view();
    let printer = ExternalPrinter::<String>::new(256);
    let sender = printer.sender();
    let mut editor = build_editor(&view, session.typing_slot(), history_file, color)?
        .with_external_printer(printer);
    // reedline does not export the signal's type, hence closures.
    let repaint = editor.repaint_signal();
    let again = repaint.clone();
    forward_events(events, sender, look, view.clone(), move || {
        repaint.request_repaint();
    });
    expire_typing(view.clone(), move || again.request_repaint());

    let prompt = ChatPrompt { view: view.clone() };
    println!("natter — type /help for commands, /quit to close");
    let resumed = runtime.block_on(session.resume());
    if show(runtime, &mut session, resumed, &look) == Action::Exit {
        runtime.block_on(session.close());
        return Ok(());
    }
    loop {
        let line = match editor.read_line(&prompt)? {
            Signal::Success(line) => line,
            Signal::CtrlC => continue,
            Signal::CtrlD | Signal::ExternalBreak(_) => break,
            _ => continue,
        };
        let echoed = if is_message(&line) {
            let before = format!("{}{}", prompt_text(&view.snapshot()), INDICATOR);
            terminal::rows_of(&before, CONTINUATION, &line, terminal::columns())
        } else {
            0
        };
        let output = runtime.block_on(session.run_line(&line));
        if output
            .events
            .iter()
            .any(|e| matches!(e, Event::Message { .. } | Event::Pending { .. }))
        {
            // The message is shown as sent; its echoed input would be the
            // same words twice.
            terminal::erase_rows_above(echoed);
        }
        match show(runtime, &mut session, output, &look) {
            Action::Clear => editor.clear_screen()?,
            Action::Exit => break,
            Action::Continue | Action::Ask(_) => {}
        }
    }
    runtime.block_on(session.close());
    Ok(())
}

/// Prints an output, asking its questions (hidden for a password) until
/// the session has no more; the last action.
fn show(runtime: &Runtime, session: &mut Session, mut output: Output, look: &Look) -> Action {
    loop {
        for event in &output.events {
            println!("{}", render(event, look));
        }
        let Action::Ask(question) = output.action else {
            return output.action;
        };
        let reply = match question {
            Question::Secret(prompt) => terminal::read_secret(&prompt),
            Question::Confirm(question) => terminal::read_answer(&question),
        };
        output = runtime.block_on(session.answer(reply));
    }
}

/// Whether a submitted line is a message (not a command).
fn is_message(line: &str) -> bool {
    let trimmed = line.trim_start();
    !trimmed.is_empty() && (!trimmed.starts_with('/') || trimmed.starts_with("//"))
}

/// Pushes go to the external printer from their own thread: its channel
/// is a blocking one, and reedline drains it while the user types. News
/// that only changes a count, and typing, repaint the prompt instead.
fn forward_events(
    mut events: mpsc::UnboundedReceiver<Event>,
    sender: std::sync::mpsc::SyncSender<String>,
    look: Look,
    view: SharedView,
    repaint: impl Fn() + Send + 'static,
) {
    std::thread::spawn(move || {
        while let Some(event) = events.blocking_recv() {
            match &event {
                Event::Unread { first: false, .. } => repaint(),
                Event::Typing { username, .. } => {
                    view.note_typing(username, Instant::now() + TYPING_SHOWN);
                    repaint();
                }
                _ => {
                    if sender.send(render(&event, &look)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Repaints the prompt while someone is shown typing, so the notice goes
/// when it is stale.
fn expire_typing(view: SharedView, repaint: impl Fn() + Send + 'static) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if !view.snapshot().typing.is_empty() {
                view.drop_stale_typing(Instant::now());
                repaint();
            }
        }
    });
}

fn build_editor(
    view: &SharedView,
    typing: TypingSlot,
    history_file: Option<PathBuf>,
    color: bool,
) -> anyhow::Result<Reedline> {
    let history = match history_file {
        Some(path) => FileBackedHistory::with_file(HISTORY_SIZE, path)?,
        None => FileBackedHistory::new(HISTORY_SIZE)?,
    };
    let mut keybindings = default_emacs_keybindings();
    keybindings.add_binding(
        KeyModifiers::NONE,
        KeyCode::Tab,
        ReedlineEvent::UntilFound(vec![
            ReedlineEvent::Menu("completion_menu".into()),
            ReedlineEvent::MenuNext,
        ]),
    );
    let menu = ColumnarMenu::default().with_name("completion_menu");
    Ok(Reedline::create()
        .with_history(Box::new(RedactingHistory(history)))
        .with_completer(Box::new(ChatCompleter { view: view.clone() }))
        .with_menu(ReedlineMenu::EngineCompleter(Box::new(menu)))
        .with_quick_completions(true)
        .with_partial_completions(true)
        .with_hinter(Box::new(UsageHinter {
            typing,
            ..UsageHinter::default()
        }))
        .with_edit_mode(Box::new(Emacs::new(keybindings)))
        .with_ansi_colors(color)
        .use_bracketed_paste(true)
        .with_poll_interval(Duration::from_millis(50)))
}

/// What follows the prompt's text.
const INDICATOR: &str = " › ";

/// `alice@general`, `alice` or `natter`, then news of other channels:
/// `alice@general · ops 3 · dev 1`.
#[must_use]
pub fn prompt_text(view: &View) -> String {
    let clean = crate::sanitize::line;
    let mut text = match (&view.username, &view.channel) {
        (Some(user), Some((_, title))) => format!("{user}@{}", clean(title)),
        (Some(user), None) => user.clone(),
        (None, _) => "natter".into(),
    };
    for (title, unread) in view.activity.values().take(ACTIVITY_SHOWN) {
        text.push_str(&format!(" · {} {unread}", clean(title)));
    }
    if view.activity.len() > ACTIVITY_SHOWN {
        text.push_str(&format!(" · +{}", view.activity.len() - ACTIVITY_SHOWN));
    }
    text
}

/// The prompt's right side: who is typing, and messages waiting to be sent.
#[must_use]
pub fn prompt_right(view: &View, now: Instant) -> String {
    let typing: Vec<String> = view
        .typing
        .iter()
        .filter(|(_, until)| **until > now)
        .map(|(name, _)| crate::sanitize::line(name))
        .collect();
    let mut parts = Vec::new();
    match typing.as_slice() {
        [] => {}
        [one] => parts.push(format!("{one} is typing…")),
        many => parts.push(format!("{} are typing…", many.join(", "))),
    }
    if view.queued > 0 {
        parts.push(format!("{} pending", view.queued));
    }
    parts.join("  ")
}

struct ChatPrompt {
    view: SharedView,
}

impl Prompt for ChatPrompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Owned(prompt_text(&self.view.snapshot()))
    }

    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Owned(prompt_right(&self.view.snapshot(), Instant::now()))
    }

    fn render_prompt_indicator(&self, _mode: PromptEditMode) -> Cow<'_, str> {
        Cow::Borrowed(INDICATOR)
    }

    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed(CONTINUATION)
    }

    fn render_prompt_history_search_indicator(&self, search: PromptHistorySearch) -> Cow<'_, str> {
        let prefix = match search.status {
            PromptHistorySearchStatus::Passing => "",
            PromptHistorySearchStatus::Failing => "failing ",
        };
        Cow::Owned(format!("({prefix}search: {}) ", search.term))
    }

    fn get_prompt_color(&self) -> Color {
        Color::Cyan
    }
}

/// One completion: the text to insert and what to show beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Inserted into the line.
    pub value: String,
    /// Shown beside it (a command's summary, a channel's title).
    pub description: Option<String>,
}

/// What can follow the text before the cursor: command names, then
/// usernames or channels the client has seen, by the command's argument.
/// A channel is offered by id with its title beside it, or by title when
/// the word typed so far is one.
#[must_use]
pub fn completions(view: &View, before_cursor: &str) -> Vec<Candidate> {
    let words: Vec<&str> = before_cursor.split_whitespace().collect();
    let typing_new_word = before_cursor.ends_with(char::is_whitespace) || words.is_empty();
    let partial = if typing_new_word {
        ""
    } else {
        words.last().copied().unwrap_or("")
    };
    let position = if typing_new_word {
        words.len()
    } else {
        words.len() - 1
    };
    let command = words
        .first()
        .and_then(|w| spec(w))
        .map(|s| s.name)
        .unwrap_or_default();
    let plain = |v: String| Candidate {
        value: v,
        description: None,
    };
    let users = || view.users.iter().cloned().map(plain).collect::<Vec<_>>();
    let channels = || channel_candidates(view, partial);
    let candidates: Vec<Candidate> = match (position, command) {
        (0, _) => COMMANDS
            .iter()
            .map(|s| Candidate {
                value: s.name.to_owned(),
                description: Some(s.summary.to_owned()),
            })
            .collect(),
        (1, "/accept" | "/reject" | "/disconnect") | (2.., "/create") => users(),
        (1, "/enter" | "/quit" | "/part" | "/members") => channels(),
        (1, "/invite-code") => vec![plain("user".into()), plain("channel".into())],
        (2, "/invite-code") if words.get(1) == Some(&"channel") => channels(),
        (1, "/help") => COMMANDS
            .iter()
            .map(|s| plain(s.name[1..].to_owned()))
            .collect(),
        _ => Vec::new(),
    };
    let lower = partial.to_lowercase();
    candidates
        .into_iter()
        .filter(|c| {
            let value = c.value.trim_start_matches('"').to_lowercase();
            value.starts_with(lower.trim_start_matches('"')) && c.value != partial
        })
        .collect()
}

/// Channels by id (titled), or by title when `partial` is not a number.
fn channel_candidates(view: &View, partial: &str) -> Vec<Candidate> {
    let by_title = !partial.is_empty() && partial.parse::<i64>().is_err();
    view.channels
        .iter()
        .filter_map(|(id, title)| {
            if by_title {
                let title = title.as_ref()?;
                let value = if title.contains(char::is_whitespace) {
                    format!("\"{title}\"")
                } else {
                    title.clone()
                };
                Some(Candidate {
                    value: crate::sanitize::line(&value),
                    description: Some(format!("channel {id}")),
                })
            } else {
                Some(Candidate {
                    value: id.to_string(),
                    description: title.as_deref().map(crate::sanitize::line),
                })
            }
        })
        .collect()
}

struct ChatCompleter {
    view: SharedView,
}

impl Completer for ChatCompleter {
    fn complete(&mut self, line: &str, pos: usize) -> CompletionResult {
        let before = line.get(..pos).unwrap_or(line);
        let start = before.rfind(char::is_whitespace).map_or(0, |i| {
            i + before[i..].chars().next().map_or(1, char::len_utf8)
        });
        let suggestions: Vec<Suggestion> = completions(&self.view.snapshot(), before)
            .into_iter()
            .map(|c| Suggestion {
                description: c.description,
                value: c.value,
                span: Span::new(start, pos),
                append_whitespace: true,
                ..Suggestion::default()
            })
            .collect();
        CompletionResult::fresh(suggestions)
    }
}

/// The grey text after the cursor: the rest of a unique command name, then
/// the command's arguments (e.g. `/ent` → `er <channelId>`).
#[must_use]
pub fn usage_hint(line: &str) -> (String, String) {
    if !line.starts_with('/') || line.contains(char::is_whitespace) && !line.ends_with(' ') {
        return (String::new(), String::new());
    }
    let name = line.trim_end();
    if line.ends_with(' ') && name.contains(' ') {
        return (String::new(), String::new());
    }
    let matching: Vec<_> = COMMANDS
        .iter()
        .filter(|s| s.name.starts_with(name))
        .collect();
    let exact = COMMANDS.iter().find(|s| s.name == name);
    let Some(spec) = exact.or(match matching.as_slice() {
        [only] => Some(*only),
        _ => None,
    }) else {
        return (String::new(), String::new());
    };
    let rest = if line.ends_with(' ') {
        ""
    } else {
        &spec.name[name.len()..]
    };
    let args = match (spec.args.is_empty(), line.ends_with(' ')) {
        (true, _) => String::new(),
        (false, true) => spec.args.to_owned(),
        (false, false) => format!(" {}", spec.args),
    };
    (rest.to_owned(), args)
}

/// Hints the usage of the command being typed — and, since it sees every
/// change of the line, tells the link the user is composing a message
/// (the link sends at most one `typing` per few seconds).
#[derive(Default)]
struct UsageHinter {
    completion: String,
    fallback: Option<DefaultHinter>,
    typing: TypingSlot,
    last_line: String,
}

impl Hinter for UsageHinter {
    fn handle(
        &mut self,
        line: &str,
        pos: usize,
        history: &dyn History,
        use_ansi_coloring: bool,
        cwd: &str,
    ) -> String {
        if line != self.last_line {
            if is_message(line) {
                self.typing.typing();
            }
            line.clone_into(&mut self.last_line);
        }
        let (rest, args) = if pos == line.len() {
            usage_hint(line)
        } else {
            (String::new(), String::new())
        };
        if rest.is_empty() && args.is_empty() {
            // Not a command being named: fall back to history hints.
            let hinter = self.fallback.get_or_insert_with(DefaultHinter::default);
            let hint = hinter.handle(line, pos, history, use_ansi_coloring, cwd);
            self.completion = hinter.complete_hint();
            return hint;
        }
        self.completion = rest.clone();
        let text = format!("{rest}{args}");
        if use_ansi_coloring {
            text.dimmed().to_string()
        } else {
            text
        }
    }

    fn complete_hint(&self) -> String {
        self.completion.clone()
    }

    fn next_hint_token(&self) -> String {
        self.completion.clone()
    }
}

/// The file-backed history, except that passwords typed in `/register`
/// and `/login` never reach it.
struct RedactingHistory(FileBackedHistory);

impl History for RedactingHistory {
    fn save(&mut self, mut h: HistoryItem) -> reedline::Result<HistoryItem> {
        h.command_line = history_entry(&h.command_line);
        self.0.save(h)
    }

    fn load(&self, id: HistoryItemId) -> reedline::Result<HistoryItem> {
        self.0.load(id)
    }

    fn count(&self, query: SearchQuery) -> reedline::Result<i64> {
        self.0.count(query)
    }

    fn search(&self, query: SearchQuery) -> reedline::Result<Vec<HistoryItem>> {
        self.0.search(query)
    }

    fn update(
        &mut self,
        id: HistoryItemId,
        updater: &dyn Fn(HistoryItem) -> HistoryItem,
    ) -> reedline::Result<()> {
        self.0.update(id, &|item| {
            let mut item = updater(item);
            item.command_line = history_entry(&item.command_line);
            item
        })
    }

    fn clear(&mut self) -> reedline::Result<()> {
        self.0.clear()
    }

    fn delete(&mut self, h: HistoryItemId) -> reedline::Result<()> {
        self.0.delete(h)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.0.sync()
    }

    fn session(&self) -> Option<HistorySessionId> {
        self.0.session()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::ChannelId;

    fn view() -> View {
        View {
            username: Some("alice".into()),
            channel: Some((ChannelId(3), "general".into())),
            users: ["bob".to_owned(), "carol".to_owned()].into(),
            channels: [
                (ChannelId(3), Some("general".to_owned())),
                (ChannelId(12), Some("weekend plans".to_owned())),
            ]
            .into(),
            ..View::default()
        }
    }

    fn values(v: &View, before: &str) -> Vec<String> {
        completions(v, before)
            .into_iter()
            .map(|c| c.value)
            .collect()
    }

    #[test]
    fn the_prompt_shows_who_where_and_what_is_new_elsewhere() {
        let mut v = view();
        assert_eq!(prompt_text(&v), "alice@general");
        v.activity
            .insert(ChannelId(12), ("weekend plans".into(), 4));
        assert_eq!(prompt_text(&v), "alice@general · weekend plans 4");
        for id in 20..24 {
            v.activity.insert(ChannelId(id), (format!("c{id}"), 1));
        }
        assert_eq!(
            prompt_text(&v),
            "alice@general · weekend plans 4 · c20 1 · c21 1 · +2"
        );
        v.activity.clear();
        v.channel = None;
        assert_eq!(prompt_text(&v), "alice");
        v.username = None;
        assert_eq!(prompt_text(&v), "natter");
    }

    #[test]
    fn the_right_of_the_prompt_says_who_is_typing_and_what_waits() {
        let now = Instant::now();
        let mut v = view();
        assert_eq!(prompt_right(&v, now), "");
        v.typing.insert("bob".into(), now + Duration::from_secs(3));
        v.typing.insert("old".into(), now);
        assert_eq!(prompt_right(&v, now), "bob is typing…");
        v.typing
            .insert("carol".into(), now + Duration::from_secs(3));
        v.queued = 2;
        assert_eq!(prompt_right(&v, now), "bob, carol are typing…  2 pending");
    }

    #[test]
    fn completion_offers_commands_then_their_arguments() {
        let v = view();
        assert_eq!(values(&v, "/ac"), ["/accept"]);
        assert_eq!(values(&v, "/AC"), ["/accept"], "any case");
        assert!(completions(&v, "/").len() == COMMANDS.len());
        assert_eq!(values(&v, "/accept "), ["bob", "carol"]);
        assert_eq!(values(&v, "/reject c"), ["carol"]);
        assert_eq!(values(&v, "/enter 1"), ["12"]);
        assert_eq!(values(&v, "/quit "), ["3", "12"]);
        assert_eq!(values(&v, "/part "), ["3", "12"]);
        assert_eq!(values(&v, "/invite-code ch"), ["channel"]);
        assert_eq!(values(&v, "/invite-code channel "), ["3", "12"]);
        assert_eq!(values(&v, "/create t bob "), ["bob", "carol"]);
        assert_eq!(values(&v, "/help ent"), ["enter"]);
        assert!(completions(&v, "hello wor").is_empty());
    }

    #[test]
    fn channels_complete_with_their_titles() {
        let v = view();
        assert_eq!(
            completions(&v, "/enter "),
            [
                Candidate {
                    value: "3".into(),
                    description: Some("general".into())
                },
                Candidate {
                    value: "12".into(),
                    description: Some("weekend plans".into())
                },
            ]
        );
        assert_eq!(values(&v, "/enter gen"), ["general"]);
        assert_eq!(values(&v, "/members wee"), ["\"weekend plans\""]);
    }

    #[test]
    fn a_message_line_is_told_from_a_command() {
        assert!(is_message("hello"));
        assert!(is_message("//shrug"));
        assert!(!is_message("/enter 3"));
        assert!(!is_message("   "));
    }

    #[test]
    fn hints_finish_the_command_and_show_its_arguments() {
        assert_eq!(usage_hint("/ent"), ("er".into(), " <channel>".into()));
        assert_eq!(usage_hint("/enter"), (String::new(), " <channel>".into()));
        assert_eq!(usage_hint("/enter "), (String::new(), "<channel>".into()));
        assert_eq!(usage_hint("/lea"), ("ve".into(), String::new()));
        assert_eq!(usage_hint("/enter 3"), (String::new(), String::new()));
        assert_eq!(usage_hint("/in"), (String::new(), String::new()));
        assert_eq!(usage_hint("hello"), (String::new(), String::new()));
    }

    #[test]
    fn the_history_file_never_gets_a_password() {
        let dir = std::env::temp_dir().join(format!("natter-history-{}", uuid::Uuid::new_v4()));
        let path = dir.join("history");
        let mut h =
            RedactingHistory(FileBackedHistory::with_file(10, path.clone()).expect("history"));
        h.save(HistoryItem::from_command_line(
            "/login alice hunter2hunter2",
        ))
        .expect("save");
        h.save(HistoryItem::from_command_line("/enter 3"))
            .expect("save");
        h.sync().expect("sync");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("/login alice"), "{text}");
        assert!(text.contains("/enter 3"), "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
