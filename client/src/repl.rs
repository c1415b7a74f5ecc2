//! The interactive prompt: reedline with a history file (passwords
//! stripped), tab completion of commands, usernames and channel ids, usage
//! hints, a prompt showing who and where you are (`alice@general › `), and
//! pushes printed above the line being typed (reedline's external printer).

use crate::command::{COMMANDS, history_entry, spec};
use crate::render::{Event, Palette, render};
use crate::session::{Action, Session};
use crate::state::{SharedView, View};
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
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Lines kept in the history file.
const HISTORY_SIZE: usize = 1000;

/// Runs the prompt until `/exit` or Ctrl-D. The session's commands run on
/// `runtime`; the prompt blocks this thread.
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
    let palette = Palette::new(color);
    let view = session.view();
    let printer = ExternalPrinter::<String>::new(256);
    forward_events(events, printer.sender(), palette);

    let mut editor = build_editor(&view, history_file, color)?.with_external_printer(printer);
    let prompt = ChatPrompt { view };
    println!("natter — type /help for commands, /exit to quit");
    loop {
        let line = match editor.read_line(&prompt)? {
            Signal::Success(line) => line,
            Signal::CtrlC => continue,
            Signal::CtrlD | Signal::ExternalBreak(_) => break,
            _ => continue,
        };
        let output = runtime.block_on(session.run_line(&line));
        for event in &output.events {
            println!("{}", render(event, &palette));
        }
        match output.action {
            Action::Continue => {}
            Action::Clear => editor.clear_screen()?,
            Action::Exit => break,
        }
    }
    runtime.block_on(session.close());
    Ok(())
}

/// Pushes go to the external printer from their own thread: its channel
/// is a blocking one, and reedline drains it while the user types.
fn forward_events(
    mut events: mpsc::UnboundedReceiver<Event>,
    sender: std::sync::mpsc::SyncSender<String>,
    palette: Palette,
) {
    std::thread::spawn(move || {
        while let Some(event) = events.blocking_recv() {
            if sender.send(render(&event, &palette)).is_err() {
                break;
            }
        }
    });
}

fn build_editor(
    view: &SharedView,
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
        .with_hinter(Box::new(UsageHinter::default()))
        .with_edit_mode(Box::new(Emacs::new(keybindings)))
        .with_ansi_colors(color)
        .with_poll_interval(Duration::from_millis(50)))
}

/// `alice@general › `, `alice › ` or `natter › `.
#[must_use]
pub fn prompt_text(view: &View) -> String {
    match (&view.username, &view.channel) {
        (Some(user), Some((_, title))) => format!("{user}@{title}"),
        (Some(user), None) => user.clone(),
        (None, _) => "natter".into(),
    }
}

struct ChatPrompt {
    view: SharedView,
}

impl Prompt for ChatPrompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Owned(prompt_text(&self.view.snapshot()))
    }

    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn render_prompt_indicator(&self, _mode: PromptEditMode) -> Cow<'_, str> {
        Cow::Borrowed(" › ")
    }

    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed("… ")
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

/// What can follow the text before the cursor: command names, then
/// usernames or channel ids the client has seen, by the command's argument.
#[must_use]
pub fn completions(view: &View, before_cursor: &str) -> Vec<String> {
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
    let candidates: Vec<String> = match (position, words.first().copied()) {
        (0, _) => COMMANDS.iter().map(|s| s.name.to_owned()).collect(),
        (1, Some("/accept" | "/reject" | "/disconnect")) => view.users.iter().cloned().collect(),
        (_, Some("/create")) => view.users.iter().cloned().collect(),
        (1, Some("/enter" | "/quit")) => view.channels.iter().map(ToString::to_string).collect(),
        (1, Some("/invite-code")) => vec!["user".into(), "channel".into()],
        (2, Some("/invite-code")) if words.get(1) == Some(&"channel") => {
            view.channels.iter().map(ToString::to_string).collect()
        }
        (1, Some("/help")) => COMMANDS.iter().map(|s| s.name[1..].to_owned()).collect(),
        _ => Vec::new(),
    };
    candidates
        .into_iter()
        .filter(|c| c.starts_with(partial) && c != partial)
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
            .map(|value| Suggestion {
                description: spec(&value).map(|s| s.summary.to_owned()),
                value,
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

#[derive(Default)]
struct UsageHinter {
    completion: String,
    fallback: Option<DefaultHinter>,
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
    use natter_protocol::{ChannelId, Seq};

    fn view() -> View {
        View {
            username: Some("alice".into()),
            channel: Some((ChannelId(3), "general".into())),
            last_seen: Seq::ZERO,
            users: ["bob".to_owned(), "carol".to_owned()].into(),
            channels: [ChannelId(3), ChannelId(12)].into(),
        }
    }

    #[test]
    fn the_prompt_shows_who_and_where() {
        let mut v = view();
        assert_eq!(prompt_text(&v), "alice@general");
        v.channel = None;
        assert_eq!(prompt_text(&v), "alice");
        v.username = None;
        assert_eq!(prompt_text(&v), "natter");
    }

    #[test]
    fn completion_offers_commands_then_their_arguments() {
        let v = view();
        assert_eq!(completions(&v, "/ac"), ["/accept"]);
        assert!(completions(&v, "/").len() == COMMANDS.len());
        assert_eq!(completions(&v, "/accept "), ["bob", "carol"]);
        assert_eq!(completions(&v, "/reject c"), ["carol"]);
        assert_eq!(completions(&v, "/enter 1"), ["12"]);
        assert_eq!(completions(&v, "/quit "), ["3", "12"]);
        assert_eq!(completions(&v, "/invite-code ch"), ["channel"]);
        assert_eq!(completions(&v, "/invite-code channel "), ["3", "12"]);
        assert_eq!(completions(&v, "/create t bob "), ["bob", "carol"]);
        assert_eq!(completions(&v, "/help ent"), ["enter"]);
        assert!(completions(&v, "hello wor").is_empty());
    }

    #[test]
    fn hints_finish_the_command_and_show_its_arguments() {
        assert_eq!(usage_hint("/ent"), ("er".into(), " <channelId>".into()));
        assert_eq!(usage_hint("/enter"), (String::new(), " <channelId>".into()));
        assert_eq!(usage_hint("/enter "), (String::new(), "<channelId>".into()));
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
