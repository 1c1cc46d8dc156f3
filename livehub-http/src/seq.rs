//! Per-session command sequence numbers: a replayed command is refused, a retried one (its
//! answer was lost) is answered again without running twice.
//!
//! A command request may carry `Hub-Command-Seq: <n>` (or the query parameter `seq=<n>`; if
//! both are given they must agree). Per session the numbers start at 1 and go up by exactly one
//! per command that runs. The session keeps one entry: the last number that ran, a keyed hash
//! of its body, and the answer it got.
//!
//! - `n == last + 1`: a new command. It runs (once: the run is spawned, so a client that goes
//!   away mid-request cannot leave it half-done), and its answer is remembered.
//! - `n == last` with the same body: a retry. It does not run again; the remembered answer is
//!   given again, marked `Hub-Command-Duplicate: 1`. A retry that arrives while the first try
//!   still runs waits for it.
//! - anything else (older, skipping ahead, `0`, not a number, `last` with another body):
//!   refused with 409 `bad_seq`, saying which number is expected; nothing runs.
//! - no number: run as before on a session that has never numbered a command (unless the
//!   service requires numbers); refused with 409 `bad_seq` on a session that has, so that
//!   stripping the header does not make a captured command replayable.
//!
//! Numbered commands of one session run one at a time, in order. Requests refused for other
//! reasons (unknown session, credentials, bad body) never reach this and consume nothing.
//!
//! livehub-sse and livehub-poll both use this module, so the two transports keep the same rules; the
//! answers they give are built here too ([`answered`], [`bad_seq`], [`run_numbered`]).

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Uri};
use tokio::sync::Notify;
use tokio::task::JoinError;

/// The request header that numbers a command.
pub const SEQ_HEADER: &str = "hub-command-seq";
/// The query parameter that numbers a command, for clients that cannot set headers.
pub const SEQ_PARAM: &str = "seq";
/// The answer header that marks a retry's answer (the command did not run again).
pub const DUPLICATE_HEADER: &str = "hub-command-duplicate";
/// The stable error code of every sequence refusal.
pub const BAD_SEQ: &str = "bad_seq";

/// What a request said about its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// No number.
    Absent,
    /// A well-formed number (at least 1).
    Seq(u64),
    /// Something else; the text says what.
    Malformed(&'static str),
}

/// Reads the number of a command request: the `Hub-Command-Seq` header(s) and the `seq` query
/// parameter(s). Every value given must be the same decimal number, 1 to 2^64 - 1.
pub fn presented(headers: &HeaderMap, uri: &Uri) -> Presented {
    let mut found: Option<u64> = None;
    let mut add = |value: Option<&str>| -> Result<(), &'static str> {
        let n = value
            .and_then(parse_seq)
            .ok_or("Hub-Command-Seq (or `seq`) must be a decimal number from 1 to 2^64-1")?;
        match found {
            Some(m) if m != n => Err("the command's number is given twice, differently"),
            _ => {
                found = Some(n);
                Ok(())
            }
        }
    };
    for value in headers.get_all(SEQ_HEADER) {
        if let Err(why) = add(value.to_str().ok()) {
            return Presented::Malformed(why);
        }
    }
    let query = uri.query().unwrap_or("");
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == SEQ_PARAM {
            if let Err(why) = add(Some(&v)) {
                return Presented::Malformed(why);
            }
        }
    }
    found.map_or(Presented::Absent, Presented::Seq)
}

/// A command number: 1 to 20 ASCII digits (no sign, no spaces), at least 1, within `u64`.
pub fn parse_seq(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n >= 1)
}

/// The answer a command got: what a retry of it gets again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Empty, or a small JSON document.
    pub body: Bytes,
}

/// What to do with a command request.
#[derive(Debug)]
pub enum Verdict {
    /// No number, on a session that does not use them: run it (as before numbers existed).
    Unsequenced,
    /// A new command: run it, then give the ticket its answer.
    Run(Ticket),
    /// A retry of the last command: answer this again, marked as a duplicate; do not run.
    Duplicate {
        /// The command's number.
        seq: u64,
        /// What it was answered the first time.
        answer: Answer,
    },
    /// Refuse with 409 `bad_seq`; nothing runs.
    Refuse {
        /// For humans.
        message: String,
        /// The number the next new command must carry.
        expected: u64,
    },
}

/// One session's numbering: one entry, whatever the number of commands.
#[derive(Debug)]
pub struct Sequencer {
    state: Mutex<State>,
    /// The running command finished.
    done: Notify,
    /// Keys the body hash, per session.
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct State {
    /// The session has numbered a command: from now on every command must be numbered.
    used: bool,
    /// The last number that ran (or runs), 0 if none.
    last: u64,
    /// The hash of that command's body.
    digest: u64,
    /// Its answer; `None` while it runs.
    answer: Option<Answer>,
}

impl State {
    fn expected(&self) -> u64 {
        self.last.saturating_add(1)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer {
            state: Mutex::new(State::default()),
            done: Notify::new(),
            hasher: RandomState::new(),
        }
    }
}

impl Sequencer {
    /// A keyed hash of a command body, to tell a retry from another command with the same
    /// number.
    pub fn digest(&self, body: &[u8]) -> u64 {
        self.hasher.hash_one(body)
    }

    /// Judges a command request whose body hashes to `digest`. `required`: the service
    /// refuses unnumbered commands on every session. A numbered command waits while the
    /// session's previous one still runs.
    pub async fn admit(
        self: &Arc<Self>,
        presented: Presented,
        digest: u64,
        required: bool,
    ) -> Verdict {
        let seq = match presented {
            Presented::Malformed(why) => {
                let expected = lock(&self.state).expected();
                return Verdict::Refuse {
                    message: format!("{why}; the next command is {expected}"),
                    expected,
                };
            }
            Presented::Absent => {
                let st = lock(&self.state);
                if st.used || required {
                    let expected = st.expected();
                    let message = if st.used {
                        format!(
                            "this session numbers its commands: send Hub-Command-Seq: {expected}"
                        )
                    } else {
                        "this server requires numbered commands: send Hub-Command-Seq: 1".to_owned()
                    };
                    return Verdict::Refuse { message, expected };
                }
                return Verdict::Unsequenced;
            }
            Presented::Seq(seq) => seq,
        };
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            {
                let mut st = lock(&self.state);
                if let Some(answer) = st.answer.clone() {
                    return self.judge(&mut st, seq, digest, Some(answer));
                }
                if st.last == 0 {
                    return self.judge(&mut st, seq, digest, None);
                }
            }
            // The previous command still runs: its answer (or the room to run) comes next.
            done.await;
        }
    }

    /// `answer`: the last command's, `None` if there was none.
    fn judge(
        self: &Arc<Self>,
        st: &mut State,
        seq: u64,
        digest: u64,
        answer: Option<Answer>,
    ) -> Verdict {
        let expected = st.expected();
        if seq == expected && st.last < u64::MAX {
            st.used = true;
            st.last = seq;
            st.digest = digest;
            st.answer = None;
            return Verdict::Run(Ticket {
                owner: self.clone(),
                seq,
                finished: false,
            });
        }
        let message = match answer {
            Some(answer) if seq == st.last && digest == st.digest => {
                return Verdict::Duplicate { seq, answer };
            }
            Some(_) if seq == st.last => format!(
                "command {seq} was another command: a new command is {expected}, a retry \
                 repeats its command exactly"
            ),
            _ if seq < expected => {
                format!(
                    "command {seq} is already past (the last was {}): expected {expected}",
                    st.last
                )
            }
            _ => format!("command {seq} skips ahead: expected {expected}"),
        };
        Verdict::Refuse { message, expected }
    }
}

/// A new command's place in its session's sequence: give it the command's answer once the
/// command has run. Dropped without one (the run panicked), it records a 500.
#[derive(Debug)]
pub struct Ticket {
    owner: Arc<Sequencer>,
    seq: u64,
    finished: bool,
}

impl Ticket {
    /// The command's number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records the command's answer, for its retries, and lets the next command run.
    pub fn finish(mut self, answer: Answer) {
        self.record(answer);
    }

    fn record(&mut self, answer: Answer) {
        self.finished = true;
        {
            let mut st = lock(&self.owner.state);
            if st.last == self.seq {
                st.answer = Some(answer);
            }
        }
        self.owner.done.notify_waiters();
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            let body = serde_json::json!({
                "code": "internal",
                "message": "the command failed on the server",
            });
            self.record(Answer {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: Bytes::from(body.to_string()),
            });
        }
    }
}

/// The answer to a numbered command as sent: its status and body (`Content-Type:
/// application/json` if it has one) with `Hub-Command-Seq: <seq>`, the first time, or again
/// for a retry (`duplicate`), then also with `Hub-Command-Duplicate: 1`.
pub fn answered(seq: u64, answer: Answer, duplicate: bool) -> Response<Bytes> {
    let json = !answer.body.is_empty();
    let mut resp = Response::new(answer.body);
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    if json {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::JSON_TYPE),
        );
    }
    h.insert(SEQ_HEADER, HeaderValue::from(seq));
    if duplicate {
        h.insert(DUPLICATE_HEADER, HeaderValue::from_static("1"));
    }
    resp
}

/// 409 `bad_seq` with the JSON body `{"code", "message", "expected"}`: nothing ran;
/// `expected` is the number the next new command must carry.
pub fn bad_seq(message: &str, expected: u64) -> Response<Bytes> {
    let body = serde_json::json!({
        "code": BAD_SEQ,
        "message": message,
        "expected": expected,
    })
    .to_string();
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = StatusCode::CONFLICT;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::JSON_TYPE),
    );
    resp.extensions_mut().insert(crate::Refused {
        code: BAD_SEQ,
        message: message.to_owned(),
    });
    resp
}

/// Runs a new numbered command (`run`, the command's work) to the end in a task of its own, so
/// that it never runs half even if the client drops the request, then gives `ticket` its
/// answer (202, no body) for the command's retries and returns that answer as sent
/// ([`answered`]).
///
/// `Err` if the run failed (panicked): the ticket has then recorded a 500 for the retries, and
/// the caller answers this request with a 500 of its own.
pub async fn run_numbered<F>(ticket: Ticket, run: F) -> Result<Response<Bytes>, CommandFailed>
where
    F: Future<Output = ()> + Send + 'static,
{
    let seq = ticket.seq();
    let accepted = Answer {
        status: StatusCode::ACCEPTED,
        body: Bytes::new(),
    };
    let done = accepted.clone();
    let task = tokio::spawn(async move {
        run.await;
        ticket.finish(done);
    });
    match task.await {
        Ok(()) => Ok(answered(seq, accepted, false)),
        Err(error) => Err(CommandFailed { seq, error }),
    }
}

/// A numbered command whose run failed: see [`run_numbered`].
#[derive(Debug)]
pub struct CommandFailed {
    /// The command's number.
    pub seq: u64,
    /// How its task ended.
    pub error: JoinError,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(v: Verdict) -> Ticket {
        match v {
            Verdict::Run(t) => t,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    fn refused(v: Verdict) -> u64 {
        match v {
            Verdict::Refuse { expected, .. } => expected,
            other => panic!("expected Refuse, got {other:?}"),
        }
    }

    fn accepted() -> Answer {
        Answer {
            status: StatusCode::ACCEPTED,
            body: Bytes::new(),
        }
    }

    #[test]
    fn parses_only_plain_positive_decimals() {
        assert_eq!(parse_seq("1"), Some(1));
        assert_eq!(parse_seq("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1.0",
            "0x1",
            "18446744073709551616",
            "abc",
        ] {
            assert_eq!(parse_seq(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_header_and_the_query_which_must_agree() {
        let uri = |q: &str| format!("/commands?session=x{q}").parse::<Uri>().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h, &uri("")), Presented::Absent);
        assert_eq!(presented(&h, &uri("&seq=4")), Presented::Seq(4));
        h.insert(SEQ_HEADER, "4".parse().unwrap());
        assert_eq!(presented(&h, &uri("")), Presented::Seq(4));
        assert_eq!(presented(&h, &uri("&seq=4")), Presented::Seq(4));
        assert!(matches!(
            presented(&h, &uri("&seq=5")),
            Presented::Malformed(_)
        ));
        h.insert(SEQ_HEADER, "x".parse().unwrap());
        assert!(matches!(presented(&h, &uri("")), Presented::Malformed(_)));
    }

    #[tokio::test]
    async fn runs_new_commands_repeats_retries_and_refuses_the_rest() {
        let s = Arc::new(Sequencer::default());
        let (a, b) = (s.digest(b"a"), s.digest(b"b"));
        // Unnumbered commands run until the session numbers one.
        assert!(matches!(
            s.admit(Presented::Absent, a, false).await,
            Verdict::Unsequenced
        ));
        assert_eq!(refused(s.admit(Presented::Absent, a, true).await), 1);
        assert_eq!(refused(s.admit(Presented::Seq(2), a, false).await), 1);
        let t = run(s.admit(Presented::Seq(1), a, false).await);
        assert_eq!(t.seq(), 1);
        t.finish(accepted());
        match s.admit(Presented::Seq(1), a, false).await {
            Verdict::Duplicate { seq: 1, answer } => assert_eq!(answer, accepted()),
            other => panic!("{other:?}"),
        }
        assert_eq!(refused(s.admit(Presented::Seq(1), b, false).await), 2);
        assert_eq!(refused(s.admit(Presented::Absent, a, false).await), 2);
        assert_eq!(
            refused(s.admit(Presented::Malformed("x"), a, false).await),
            2
        );
        run(s.admit(Presented::Seq(2), b, false).await).finish(accepted());
        assert_eq!(refused(s.admit(Presented::Seq(1), a, false).await), 3);
        assert_eq!(refused(s.admit(Presented::Seq(4), a, false).await), 3);
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_running_try_and_a_failed_run_answers_500() {
        let s = Arc::new(Sequencer::default());
        let d = s.digest(b"x");
        let t = run(s.admit(Presented::Seq(1), d, false).await);
        let s2 = s.clone();
        let retry = tokio::spawn(async move { s2.admit(Presented::Seq(1), d, false).await });
        tokio::task::yield_now().await;
        drop(t); // as if the run had panicked
        match retry.await.unwrap() {
            Verdict::Duplicate { seq: 1, answer } => {
                assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
            }
            other => panic!("{other:?}"),
        }
    }
}
