//! The live side of sessions, shared by `sessions prompt|watch|approve` and
//! `chat`: following a session's event stream across broken connections,
//! Ctrl-C, lines typed on stdin, and following one turn to its end.

use std::{collections::VecDeque, error::Error as _, io::BufRead as _, time::Duration};

use anyhow::Result;
use oma_proto::pb::{
    self, answer_permission_request::Answer as PbAnswer, session_event::Kind,
    session_service_client::SessionServiceClient,
};
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

use crate::{
    connection::Authed,
    error::{Failure, classify, exit},
    render::Renderer,
};

pub type Client = SessionServiceClient<Authed>;

/// How often a broken event stream is reopened before giving up, and the
/// first pause before reopening (doubled each time).
const RETRIES: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(250);
/// A stream that stayed open this long before it broke counts as having
/// worked: an idle session's watch cut now and then by a proxy or a
/// restart must not use up the retries meant for an unreachable server.
const STABLE: Duration = Duration::from_secs(1);

/// What [`Events::next`] yields.
pub enum Next {
    Event(Box<pb::SessionEvent>),
    /// The stream broke and is being reopened; a note for people.
    Reconnecting(String),
}

/// A session's events from `WatchSession`, reopened from the last seen seq
/// + 1 when the stream breaks, so that no event is missed or seen twice.
pub struct Events {
    client: Client,
    session_id: String,
    until_turn_end: bool,
    next_seq: u64,
    stream: Option<Streaming<pb::SessionEvent>>,
    /// Failed attempts since the last event or stable stream.
    failures: u32,
    opened: bool,
    /// When the current stream was opened.
    opened_at: Option<tokio::time::Instant>,
}

impl Events {
    pub fn new(client: Client, session_id: &str, from_seq: u64, until_turn_end: bool) -> Events {
        Events {
            client,
            session_id: session_id.to_owned(),
            until_turn_end,
            next_seq: from_seq.max(1),
            stream: None,
            failures: 0,
            opened: false,
            opened_at: None,
        }
    }

    /// Whether a watch was ever opened (so a later NOT_FOUND means the
    /// session was deleted meanwhile).
    pub fn opened(&self) -> bool {
        self.opened
    }

    /// The next event. A stream that ends is reopened too: the caller knows
    /// when it has seen enough. Cancel-safe.
    pub async fn next(&mut self) -> Result<Next, Status> {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    if self.failures > 0 {
                        tokio::time::sleep(BACKOFF * 2u32.pow(self.failures - 1)).await;
                    }
                    let request = pb::WatchSessionRequest {
                        session_id: self.session_id.clone(),
                        from_seq: self.next_seq,
                        until_turn_end: self.until_turn_end,
                    };
                    match self.client.watch_session(request).await {
                        Ok(response) => {
                            self.opened = true;
                            self.opened_at = Some(tokio::time::Instant::now());
                            self.stream.insert(response.into_inner())
                        }
                        Err(status) => return Ok(Next::Reconnecting(self.retry(status)?)),
                    }
                }
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    self.failures = 0;
                    if event.seq < self.next_seq {
                        continue; // seen already
                    }
                    self.next_seq = event.seq + 1;
                    return Ok(Next::Event(Box::new(event)));
                }
                Ok(None) => {
                    self.stream = None;
                    self.forgive_if_stable();
                    // Reopened quietly: a deleted session then says NOT_FOUND.
                    self.retry(Status::unavailable("the control plane ended the event stream"))?;
                }
                Err(status) => {
                    self.stream = None;
                    self.forgive_if_stable();
                    return Ok(Next::Reconnecting(self.retry(status)?));
                }
            }
        }
    }

    /// A stream that worked for a while before it broke starts the count
    /// of failures afresh.
    fn forgive_if_stable(&mut self) {
        if self.opened_at.take().is_some_and(|at| at.elapsed() >= STABLE) {
            self.failures = 0;
        }
    }

    /// Counts a failure; the status when it is final, else a note.
    fn retry(&mut self, status: Status) -> Result<String, Status> {
        if !retriable(&status) || self.failures >= RETRIES {
            return Err(status);
        }
        self.failures += 1;
        let why = status
            .source()
            .map(crate::error::cause_chain)
            .unwrap_or_else(|| status.message().to_owned());
        Ok(format!(
            "the event stream broke ({why}); reconnecting from seq {} (attempt {}/{RETRIES})",
            self.next_seq, self.failures
        ))
    }
}

/// Transport failures (made on this side, so they carry a source) and
/// statuses saying the server is going away are worth another try.
fn retriable(status: &Status) -> bool {
    status.source().is_some() || matches!(status.code(), Code::Unavailable | Code::Cancelled)
}

/// Ctrl-C presses, once listening has started (from then on Ctrl-C no
/// longer ends the process by itself).
pub struct Interrupts(mpsc::UnboundedReceiver<()>);

impl Interrupts {
    pub fn listen() -> Interrupts {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
        Interrupts(rx)
    }

    /// The next press; never, if signals cannot be listened to.
    pub async fn next(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Lines of stdin, read on a thread of their own (a read of stdin cannot be
/// cancelled).
pub struct Lines {
    rx: mpsc::Receiver<String>,
    eof: bool,
}

impl Lines {
    pub fn stdin() -> Lines {
        let (tx, rx) = mpsc::channel(1);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.lock().read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_owned();
                        if tx.blocking_send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Lines { rx, eof: false }
    }

    /// The next line, or None at the end of stdin. Cancel-safe.
    pub async fn next(&mut self) -> Option<String> {
        if self.eof {
            return None;
        }
        let line = self.rx.recv().await;
        self.eof = line.is_none();
        line
    }

    pub fn at_eof(&self) -> bool {
        self.eof
    }
}

/// An answer typed for a permission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Option(String),
    Reject,
    /// Leave it to others (or to the policy's timeout).
    Skip,
}

/// `y` = the first allow option, `n` = reject, an option id = that option,
/// an empty line = leave it; anything else is a sentence saying why not.
pub fn parse_answer(line: &str, options: &[pb::PermissionOption]) -> Result<Answer, String> {
    use pb::PermissionOptionKind as K;
    let line = line.trim();
    if line.is_empty() {
        return Ok(Answer::Skip);
    }
    if let Some(option) = options.iter().find(|o| o.option_id == line) {
        return Ok(Answer::Option(option.option_id.clone()));
    }
    match line.to_ascii_lowercase().as_str() {
        "y" | "yes" => options
            .iter()
            .find(|o| matches!(K::try_from(o.kind), Ok(K::AllowOnce | K::AllowAlways)))
            .map(|o| Answer::Option(o.option_id.clone()))
            .ok_or_else(|| "the request offers no allow option".to_owned()),
        "n" | "no" => Ok(Answer::Reject),
        _ => {
            let ids: Vec<&str> = options.iter().map(|o| o.option_id.as_str()).collect();
            Err(format!("{line:?} is not y, n or an option id ({})", ids.join(", ")))
        }
    }
}

/// The option `approve` picks when none is given: the first `allow_once`,
/// else the first `allow_always`.
pub fn default_allow(options: &[pb::PermissionOption]) -> Option<&pb::PermissionOption> {
    use pb::PermissionOptionKind as K;
    let first = |kind: K| options.iter().find(|o| o.kind == kind as i32);
    first(K::AllowOnce).or_else(|| first(K::AllowAlways))
}

/// Answers a permission request.
pub async fn answer(client: &Client, session_id: &str, request_id: &str, answer: PbAnswer) -> Result<(), Status> {
    let request = pb::AnswerPermissionRequest {
        session_id: session_id.to_owned(),
        request_id: request_id.to_owned(),
        answer: Some(answer),
    };
    client.clone().answer_permission(request).await.map(|_| ())
}

pub async fn cancel(client: &Client, session_id: &str) -> Result<(), Status> {
    let request = pb::CancelTurnRequest {
        session_id: session_id.to_owned(),
    };
    client.clone().cancel_turn(request).await.map(|_| ())
}

/// A text prompt.
pub fn text_prompt(text: &str) -> Vec<pb::ContentBlock> {
    vec![pb::ContentBlock {
        block: Some(pb::content_block::Block::Text(pb::TextContent {
            text: text.to_owned(),
        })),
    }]
}

/// Finds a permission request in the session's log (reading from the
/// start and then live), waiting at most `deadline`.
pub async fn find_request(
    client: &Client,
    session_id: &str,
    request_id: &str,
    deadline: Duration,
) -> Result<pb::PermissionRequested> {
    let mut events = Events::new(client.clone(), session_id, 1, false);
    let search = async {
        loop {
            if let Next::Event(e) = events.next().await?
                && let Some(Kind::PermissionRequested(p)) = e.kind
                && p.request_id == request_id
            {
                return Ok::<_, Status>(p);
            }
        }
    };
    match tokio::time::timeout(deadline, search).await {
        Ok(found) => Ok(found?),
        Err(_) => Err(Failure::new(
            exit::NOT_FOUND,
            format!(
                "permission request {request_id} not found in session {session_id} within {}s; pass --option OPTION_ID to answer it anyway",
                deadline.as_secs()
            ),
        )
        .into()),
    }
}

/// How a session's start went, as [`wait_ready`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Idle (or already running a turn): ready for prompts.
    Ready,
    /// It failed to start: why, in one line.
    Failed(String),
    /// It was deleted first.
    Gone,
}

/// Follows the session's events from its first one until it is ready,
/// failed or deleted. Its status changes are events of its log, so one that
/// happened before the watch opened is read back too.
pub async fn wait_ready(client: &Client, session_id: &str) -> Result<Start, Status> {
    let mut events = Events::new(client.clone(), session_id, 1, false);
    let mut start = StartWatch::default();
    loop {
        match events.next().await {
            Ok(Next::Event(e)) => {
                if let Some(done) = start.event(&e) {
                    return Ok(done);
                }
            }
            Ok(Next::Reconnecting(_)) => {}
            Err(status) if status.code() == Code::NotFound && events.opened() => return Ok(Start::Gone),
            Err(status) => return Err(status),
        }
    }
}

/// What [`wait_ready`] learns from each event: the last error said, and
/// whether the start is over.
#[derive(Default)]
struct StartWatch {
    last_error: Option<String>,
}

impl StartWatch {
    fn event(&mut self, e: &pb::SessionEvent) -> Option<Start> {
        use pb::SessionStatus as S;
        match &e.kind {
            Some(Kind::Error(err)) => {
                let message = crate::output::printable(&err.message, false);
                self.last_error = Some(format!("{} [{}]", message.trim(), err.code));
                None
            }
            Some(Kind::StatusChanged(s)) => match S::try_from(s.status) {
                Ok(S::Idle | S::Running) => Some(Start::Ready),
                Ok(S::Failed) => Some(Start::Failed(
                    self.last_error
                        .take()
                        .unwrap_or_else(|| "the machine gave no reason".to_owned()),
                )),
                Ok(S::Disposed) => Some(Start::Gone),
                _ => None,
            },
            _ => None,
        }
    }
}

/// How a followed turn ended.
pub enum TurnEnd {
    Ended(pb::TurnEnded),
    /// `/quit` was typed (chat).
    Quit,
}

/// What following a turn needs.
pub struct Turn<'a> {
    pub client: &'a Client,
    pub session_id: &'a str,
    /// The control plane URL, for error sentences.
    pub server: &'a str,
    pub renderer: &'a mut Renderer,
    pub interrupts: &'a mut Interrupts,
    /// A person's lines, when stdin is a terminal: answers to permission
    /// requests (with `ask`), and in `chat` `/cancel` and `/quit`.
    pub lines: Option<&'a mut Lines>,
    /// Ask about permission requests on stderr (stdin and stdout are
    /// terminals).
    pub ask: bool,
    pub chat: bool,
}

impl Turn<'_> {
    /// Prints the turn's events from `from_seq` until the `TurnEnded` of
    /// `turn_id`. The first Ctrl-C cancels the turn, a second one exits 130.
    pub async fn follow(mut self, turn_id: &str, from_seq: u64) -> Result<TurnEnd> {
        let mut events = Events::new(self.client.clone(), self.session_id, from_seq, true);
        let mut cancelling = false;
        let mut questions: VecDeque<pb::PermissionRequested> = VecDeque::new();
        let mut asked = false;
        loop {
            if let Some(question) = questions.front().filter(|_| !asked) {
                let mut r = self.renderer.end_line();
                r.err = format!(
                    "answer {} [y = allow, n = reject, or an option id; empty = leave it to others]: ",
                    question.request_id
                );
                r.write()?;
                asked = true;
            }
            let reading = self.lines.as_ref().is_some_and(|l| !l.at_eof());
            tokio::select! {
                next = events.next() => match next? {
                    Next::Reconnecting(note) => self.renderer.note(&note).write()?,
                    Next::Event(e) => {
                        self.renderer.event(&e).write()?;
                        match e.kind {
                            Some(Kind::PermissionRequested(p)) if self.ask && self.lines.is_some() => {
                                questions.push_back(p);
                            }
                            Some(Kind::PermissionDecided(d)) => {
                                if questions.front().is_some_and(|q| q.request_id == d.request_id) {
                                    asked = false;
                                }
                                questions.retain(|q| q.request_id != d.request_id);
                            }
                            Some(Kind::TurnEnded(end)) if turn_id.is_empty() || e.turn_id == turn_id => {
                                self.renderer.end_line().write()?;
                                return Ok(TurnEnd::Ended(end));
                            }
                            _ => {}
                        }
                    }
                },
                () = self.interrupts.next() => {
                    if cancelling {
                        self.renderer.end_line().write()?;
                        return Err(Failure::silent(exit::INTERRUPTED).into());
                    }
                    cancelling = true;
                    self.renderer.note("cancelling the turn; press Ctrl-C again to quit").write()?;
                    self.cancel().await?;
                }
                line = next_line(&mut self.lines), if reading => {
                    let Some(line) = line else {
                        if !questions.is_empty() {
                            self.renderer.note("leaving the permission request to others").write()?;
                        }
                        questions.clear();
                        continue;
                    };
                    match line.trim() {
                        "/cancel" if self.chat => self.cancel().await?,
                        "/quit" if self.chat => return Ok(TurnEnd::Quit),
                        _ => match questions.front() {
                            Some(question) => {
                                if self.answer(question, &line).await? {
                                    questions.pop_front();
                                }
                                asked = false;
                            }
                            None if line.trim().is_empty() => {}
                            None if self.chat => {
                                self.renderer.note("a turn is running: wait for it to end, or type /cancel").write()?;
                            }
                            None => {
                                self.renderer.note("no permission request is waiting for an answer").write()?;
                            }
                        },
                    }
                }
            }
        }
    }

    /// Sends CancelTurn; a failure is said, not fatal.
    async fn cancel(&mut self) -> Result<()> {
        if let Err(status) = cancel(self.client, self.session_id).await {
            let failure = classify(status.into(), Some(self.server));
            self.renderer.note(&format!("error: {}", failure.message)).write()?;
        }
        Ok(())
    }

    /// Answers `question` with a typed line; false when the line was not an
    /// answer (asked again).
    async fn answer(&mut self, question: &pb::PermissionRequested, line: &str) -> Result<bool> {
        let choice = match parse_answer(line, &question.options) {
            Ok(Answer::Skip) => {
                self.renderer.note("left to others").write()?;
                return Ok(true);
            }
            Ok(Answer::Reject) => PbAnswer::Reject(true),
            Ok(Answer::Option(id)) => PbAnswer::OptionId(id),
            Err(why) => {
                self.renderer.note(&why).write()?;
                return Ok(false);
            }
        };
        if let Err(status) = answer(self.client, self.session_id, &question.request_id, choice).await {
            let failure = classify(status.into(), Some(self.server));
            self.renderer.note(&format!("error: {}", failure.message)).write()?;
        }
        Ok(true)
    }
}

async fn next_line(lines: &mut Option<&mut Lines>) -> Option<String> {
    match lines {
        Some(lines) => lines.next().await,
        None => std::future::pending().await,
    }
}

/// Prints how a turn ended on stderr (unless it simply ended) and gives its
/// exit code.
pub fn report(ended: &pb::TurnEnded) -> u8 {
    let outcome = crate::render::outcome(ended);
    if let Some(message) = outcome.message {
        eprintln!("{message}");
    }
    outcome.exit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_ends_ready_failed_with_its_last_error_or_gone() {
        let status = |s: pb::SessionStatus| pb::SessionEvent {
            kind: Some(Kind::StatusChanged(pb::SessionStatusChanged {
                status: s as i32,
                ..Default::default()
            })),
            ..Default::default()
        };
        let error = |code: &str, message: &str| pb::SessionEvent {
            kind: Some(Kind::Error(pb::SessionError {
                code: code.into(),
                message: message.into(),
            })),
            ..Default::default()
        };
        let mut watch = StartWatch::default();
        assert_eq!(watch.event(&status(pb::SessionStatus::Pending)), None);
        assert_eq!(watch.event(&status(pb::SessionStatus::Idle)), Some(Start::Ready));
        let mut watch = StartWatch::default();
        assert_eq!(watch.event(&error("x", "first")), None);
        assert_eq!(watch.event(&error("child_exited", "the agent exited\nwith 1")), None);
        assert_eq!(
            watch.event(&status(pb::SessionStatus::Failed)),
            Some(Start::Failed("the agent exited with 1 [child_exited]".into()))
        );
        assert_eq!(
            StartWatch::default().event(&status(pb::SessionStatus::Failed)),
            Some(Start::Failed("the machine gave no reason".into()))
        );
        assert_eq!(
            StartWatch::default().event(&status(pb::SessionStatus::Disposed)),
            Some(Start::Gone)
        );
    }

    fn options() -> Vec<pb::PermissionOption> {
        let option = |id: &str, kind: pb::PermissionOptionKind| pb::PermissionOption {
            option_id: id.into(),
            name: id.into(),
            kind: kind as i32,
        };
        vec![
            option("reject", pb::PermissionOptionKind::RejectOnce),
            option("always", pb::PermissionOptionKind::AllowAlways),
            option("allow", pb::PermissionOptionKind::AllowOnce),
        ]
    }

    #[test]
    fn typed_answers() {
        let o = options();
        assert_eq!(parse_answer("y", &o), Ok(Answer::Option("always".into())));
        assert_eq!(parse_answer(" YES ", &o), Ok(Answer::Option("always".into())));
        assert_eq!(parse_answer("n", &o), Ok(Answer::Reject));
        assert_eq!(parse_answer("allow", &o), Ok(Answer::Option("allow".into())));
        assert_eq!(parse_answer("", &o), Ok(Answer::Skip));
        assert!(parse_answer("maybe", &o).unwrap_err().contains("reject, always, allow"));
        assert!(parse_answer("y", &o[..1]).is_err());
    }

    #[test]
    fn approve_prefers_allow_once() {
        let o = options();
        assert_eq!(default_allow(&o).unwrap().option_id, "allow");
        assert_eq!(default_allow(&o[..2]).unwrap().option_id, "always");
        assert!(default_allow(&o[..1]).is_none());
    }

    #[test]
    fn transport_failures_are_retried() {
        assert!(retriable(&Status::unavailable("going away")));
        assert!(retriable(&Status::cancelled("")));
        assert!(!retriable(&Status::not_found("session")));
        assert!(!retriable(&Status::internal("stored event does not decode")));
        let transport = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert!(retriable(&transport));
    }
}
