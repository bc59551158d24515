//! hakuriver-ssh's extension of the handshake: one request line that can carry a
//! KohakuRiver API token, a task name instead of an ID, or ask for the list of the
//! user's VPS tasks.
//!
//! ```text
//! client → host:  HAKURIVER_SSH/1 TUNNEL task=<id> [token=<token>]\n
//!                 HAKURIVER_SSH/1 TUNNEL name=<name> [token=<token>]\n
//!                 HAKURIVER_SSH/1 LIST [token=<token>]\n
//!                 HAKURIVER_SSH/1 RESUME id=<tunnel> gen=<n> received=<bytes> proof=<mac>\n
//! host → client:  SUCCESS\n (then raw bytes; for LIST one JSON line, then close)
//!              |  ERROR <message>\n
//! ```
//!
//! Values are percent-encoded (RFC 3986 unreserved bytes stay as they are), so a name
//! with spaces or a token of any alphabet stays one word. A HakuRiver host (or an older
//! hakuriver-ssh-proxy) answers the line with `ERROR Invalid request format.`, which is
//! how a client learns that the extension is not spoken there. The classic
//! `REQUEST_TUNNEL <id>\n` stays exactly as HakuRiver 0.3.0 speaks it.

use std::fmt;

use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use super::{parse_request, Request, RequestError, TaskId, REQUEST_PREFIX};
use crate::resume::{PublicKey, ResumeRequest};

/// The first word (and its space) of an extended request line.
pub const EXTENDED_PREFIX: &[u8] = b"HAKURIVER_SSH/1 ";
/// Longest extended request line accepted, newline included: a 255-byte name and a
/// token, both percent-encoded, fit with room to spare.
pub const MAX_EXTENDED_LINE: usize = 4096;
/// Longest task name accepted, in bytes (KohakuRiver's column is `VARCHAR(255)`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest token accepted, in bytes (KohakuRiver's are 43 characters).
pub const MAX_TOKEN_LEN: usize = 512;
/// Longest LIST reply a client reads, newline included.
pub const MAX_LIST_REPLY: usize = 1024 * 1024;

/// Bytes that stay as they are in a value: RFC 3986's unreserved set.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A KohakuRiver API token. It is a password: `Debug` hides it, there is no `Display`,
/// and its bytes leave the process only through [`ExtendedRequest::encode`], which a
/// client calls only inside a verified TLS session.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token read from a file or the environment (surrounding whitespace
    /// dropped). `None` when nothing is left or it is longer than [`MAX_TOKEN_LEN`].
    pub fn new(text: &str) -> Option<Token> {
        let text = text.trim();
        (!text.is_empty() && text.len() <= MAX_TOKEN_LEN && !text.chars().any(char::is_control))
            .then(|| Token(text.to_owned()))
    }

    /// The token's text, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a tunnel request names: a task ID, or (KohakuRiver 1.0) a task name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskRef {
    /// A task ID.
    Id(TaskId),
    /// A VPS task's name, among those the user may reach.
    Name(String),
}

impl TaskRef {
    /// An ID when `text` is all digits, else a name (empty, over-long or control
    /// characters: `None`).
    pub fn parse(text: &str) -> Option<TaskRef> {
        if let Ok(id) = text.parse::<TaskId>() {
            return Some(TaskRef::Id(id));
        }
        valid_name(text).then(|| TaskRef::Name(text.to_owned()))
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskRef::Id(id) => id.fmt(f),
            TaskRef::Name(name) => write!(f, "{name:?}"),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// What an extended request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A tunnel to a task.
    Tunnel(TaskRef),
    /// The VPS tasks the user may reach.
    List,
}

/// A parsed `HAKURIVER_SSH/1` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendedRequest {
    /// What is asked.
    pub command: Command,
    /// The user's API token, if the client sent one.
    pub token: Option<Token>,
    /// The client's key when it asks for a resumable tunnel.
    pub resume: Option<PublicKey>,
}

impl ExtendedRequest {
    /// The line as sent on the wire, newline included. Contains the token: write it only
    /// to a verified TLS session.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = String::from_utf8_lossy(EXTENDED_PREFIX).into_owned();
        match &self.command {
            Command::Tunnel(TaskRef::Id(id)) => line.push_str(&format!("TUNNEL task={id}")),
            Command::Tunnel(TaskRef::Name(name)) => {
                line.push_str(&format!("TUNNEL name={}", utf8_percent_encode(name, VALUE)));
            }
            Command::List => line.push_str("LIST"),
        }
        if let Some(token) = &self.token {
            line.push_str(&format!(" token={}", utf8_percent_encode(&token.0, VALUE)));
        }
        if let Some(key) = &self.resume {
            line.push_str(&format!(" resume={key}"));
        }
        line.push('\n');
        line.into_bytes()
    }
}

/// Either form of request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRequest {
    /// HakuRiver's `REQUEST_TUNNEL <id>`.
    Classic(Request),
    /// hakuriver-ssh's `HAKURIVER_SSH/1 ...`.
    Extended(ExtendedRequest),
    /// `HAKURIVER_SSH/1 RESUME ...`: continue a resumable tunnel.
    Resume(ResumeRequest),
}

/// The RESUME line, newline included.
pub fn encode_resume(request: &ResumeRequest) -> Vec<u8> {
    let mut line = String::from_utf8_lossy(EXTENDED_PREFIX).into_owned();
    line.push_str("RESUME ");
    line.push_str(&request.encode_fields());
    line.push('\n');
    line.into_bytes()
}

impl AnyRequest {
    /// The task a tunnel request names (`None` for LIST).
    pub fn target(&self) -> Option<TaskRef> {
        match self {
            AnyRequest::Classic(r) => Some(TaskRef::Id(r.task_id)),
            AnyRequest::Extended(ExtendedRequest {
                command: Command::Tunnel(target),
                ..
            }) => Some(target.clone()),
            AnyRequest::Extended(_) | AnyRequest::Resume(_) => None,
        }
    }

    /// The token, if one came with the request.
    pub fn token(&self) -> Option<&Token> {
        match self {
            AnyRequest::Classic(_) | AnyRequest::Resume(_) => None,
            AnyRequest::Extended(e) => e.token.as_ref(),
        }
    }
}

/// Parses a request line of either form (with or without its `\n`). A classic line
/// follows HakuRiver exactly ([`parse_request`]); anything wrong in an extended line is
/// `Invalid request format.` (unknown verb or key, a repeated key, bad encoding) or
/// `Invalid task ID format.` (a `task=` that is not a task ID).
pub fn parse_any_request(line: &[u8]) -> Result<AnyRequest, RequestError> {
    match line.strip_prefix(EXTENDED_PREFIX) {
        Some(rest) => match rest.strip_prefix(b"RESUME ") {
            Some(fields) => std::str::from_utf8(fields)
                .ok()
                .and_then(|f| ResumeRequest::parse_fields(f).ok())
                .map(AnyRequest::Resume)
                .ok_or(RequestError::InvalidFormat),
            None => parse_extended(rest).map(AnyRequest::Extended),
        },
        None => parse_request(line).map(AnyRequest::Classic),
    }
}

fn parse_extended(rest: &[u8]) -> Result<ExtendedRequest, RequestError> {
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    let text = std::str::from_utf8(rest).map_err(|_| RequestError::InvalidFormat)?;
    let mut words = text.split(' ');
    let verb = words.next().unwrap_or_default();
    let (mut task, mut name, mut token, mut resume) = (None, None, None, None);
    for word in words {
        let (key, value) = word.split_once('=').ok_or(RequestError::InvalidFormat)?;
        let slot = match key {
            "task" => &mut task,
            "name" => &mut name,
            "token" => &mut token,
            "resume" => &mut resume,
            _ => return Err(RequestError::InvalidFormat),
        };
        if slot.is_some() {
            return Err(RequestError::InvalidFormat);
        }
        *slot = Some(decode(value)?);
    }
    let token = match token {
        None => None,
        Some(text) => Some(Token::new(&text).ok_or(RequestError::InvalidFormat)?),
    };
    let resume = match resume {
        None => None,
        Some(text) if verb == "TUNNEL" => {
            Some(PublicKey::parse(&text).map_err(|_| RequestError::InvalidFormat)?)
        }
        Some(_) => return Err(RequestError::InvalidFormat),
    };
    let command = match (verb, task, name) {
        ("TUNNEL", Some(task), None) => Command::Tunnel(TaskRef::Id(task.parse()?)),
        ("TUNNEL", None, Some(name)) if valid_name(&name) => Command::Tunnel(TaskRef::Name(name)),
        ("LIST", None, None) => Command::List,
        _ => return Err(RequestError::InvalidFormat),
    };
    Ok(ExtendedRequest {
        command,
        token,
        resume,
    })
}

/// Decodes one percent-encoded value; it must be UTF-8 and hold no spaces' stand-ins
/// left unencoded (the line is split on spaces before this).
fn decode(value: &str) -> Result<String, RequestError> {
    percent_decode(value.as_bytes())
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| RequestError::InvalidFormat)
}

/// Whether a (possibly partial) request line may still grow past the classic
/// [`super::MAX_REQUEST_LINE`]: only an extended one may.
pub fn allows_long_line(start: &[u8]) -> bool {
    let n = start.len().min(EXTENDED_PREFIX.len());
    start[..n] == EXTENDED_PREFIX[..n] && !start.starts_with(REQUEST_PREFIX)
}

/// One VPS task in a LIST reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskListing {
    /// The task ID (a string: JSON numbers lose precision above 2^53).
    pub task_id: String,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Its status (`running`, `paused`, `pending`, ...).
    pub status: String,
    /// The runner it is assigned to.
    pub node: Option<String>,
}

/// The JSON line behind `SUCCESS\n` in a LIST reply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ListReply {
    /// The tasks, ordered by ID.
    pub tasks: Vec<TaskListing>,
}

impl ListReply {
    /// The reply line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain strings and vectors cannot fail.
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{\"tasks\":[]}".to_vec());
        line.push(b'\n');
        line
    }

    /// Parses the reply line (with or without `\n`).
    pub fn parse(line: &[u8]) -> Result<ListReply, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: i64) -> TaskId {
        TaskId::try_from(n).expect("id")
    }

    #[test]
    fn extended_lines_round_trip() {
        let token = Token::new("abc DEF/+=%").expect("token");
        let cases = [
            ExtendedRequest {
                command: Command::Tunnel(TaskRef::Id(id(42))),
                token: None,
                resume: None,
            },
            ExtendedRequest {
                command: Command::Tunnel(TaskRef::Id(id(7323718749301768192))),
                token: Some(token.clone()),
                resume: None,
            },
            ExtendedRequest {
                command: Command::Tunnel(TaskRef::Name("my dev box ü".into())),
                token: Some(token.clone()),
                resume: None,
            },
            ExtendedRequest {
                command: Command::List,
                token: Some(token),
                resume: None,
            },
            ExtendedRequest {
                command: Command::List,
                token: None,
                resume: None,
            },
        ];
        for request in cases {
            let line = request.encode();
            assert!(line.len() <= MAX_EXTENDED_LINE);
            assert_eq!(
                parse_any_request(&line),
                Ok(AnyRequest::Extended(request.clone())),
                "{:?}",
                String::from_utf8_lossy(&line)
            );
        }
        assert_eq!(
            ExtendedRequest {
                command: Command::Tunnel(TaskRef::Name("a b".into())),
                token: Token::new("t0k"),
                resume: None,
            }
            .encode(),
            b"HAKURIVER_SSH/1 TUNNEL name=a%20b token=t0k\n"
        );
    }

    #[test]
    fn malformed_extended_lines_are_refused() {
        let bad: &[&[u8]] = &[
            b"HAKURIVER_SSH/1 \n",
            b"HAKURIVER_SSH/1 TUNNEL\n",
            b"HAKURIVER_SSH/1 TUNNEL task=1 name=x\n",
            b"HAKURIVER_SSH/1 TUNNEL task=1 task=1\n",
            b"HAKURIVER_SSH/1 TUNNEL task=1 token=a token=b\n",
            b"HAKURIVER_SSH/1 TUNNEL task=1 colour=blue\n",
            b"HAKURIVER_SSH/1 TUNNEL task=1  token=a\n",
            b"HAKURIVER_SSH/1 TUNNEL name=\n",
            b"HAKURIVER_SSH/1 TUNNEL name=%0a\n",
            b"HAKURIVER_SSH/1 TUNNEL name=%ff\n",
            b"HAKURIVER_SSH/1 TUNNEL task=1 token=\n",
            b"HAKURIVER_SSH/1 LIST task=1\n",
            b"HAKURIVER_SSH/1 RESUME x=1\n",
            b"HAKURIVER_SSH/1 tunnel task=1\n",
            b"HAKURIVER_SSH/1 TUNNEL task\n",
            b"HAKURIVER_SSH/1 TUNNEL task=1\xff\n",
        ];
        for line in bad {
            assert_eq!(
                parse_any_request(line),
                Err(RequestError::InvalidFormat),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(
            parse_any_request(b"HAKURIVER_SSH/1 TUNNEL task=-1\n"),
            Err(RequestError::InvalidTaskId)
        );
        // Classic lines are HakuRiver's, untouched.
        assert_eq!(
            parse_any_request(b"REQUEST_TUNNEL  5 \r\n"),
            Ok(AnyRequest::Classic(Request { task_id: id(5) }))
        );
        assert_eq!(
            parse_any_request(b"HAKURIVER_SSH/2 LIST\n"),
            Err(RequestError::InvalidFormat)
        );
    }

    #[test]
    fn tokens_never_print() {
        let token = Token::new("  s3cret\n").expect("token");
        assert_eq!(token.expose(), "s3cret");
        assert!(!format!("{token:?}").contains("s3cret"));
        let request = AnyRequest::Extended(ExtendedRequest {
            command: Command::List,
            token: Some(token),
            resume: None,
        });
        assert!(!format!("{request:?}").contains("s3cret"));
        assert!(Token::new(" \n").is_none());
        assert!(Token::new("a\u{1b}b").is_none());
    }

    #[test]
    fn task_refs() {
        assert_eq!(TaskRef::parse("42"), Some(TaskRef::Id(id(42))));
        assert_eq!(TaskRef::parse("dev"), Some(TaskRef::Name("dev".into())));
        assert_eq!(TaskRef::parse(""), None);
        assert_eq!(TaskRef::parse("a\nb"), None);
        assert_eq!(TaskRef::parse(&"x".repeat(256)), None);
    }

    #[test]
    fn long_lines_only_for_the_extension() {
        assert!(allows_long_line(b"HAKURIVER_SSH/1 TUNNEL"));
        assert!(allows_long_line(b"HAKU"));
        assert!(!allows_long_line(b"REQUEST_TUNNEL 1"));
        assert!(!allows_long_line(b"GET / HTTP/1.1"));
    }

    #[test]
    fn list_replies_round_trip() {
        let reply = ListReply {
            tasks: vec![TaskListing {
                task_id: "7323718749301768192".into(),
                name: Some("dev".into()),
                status: "running".into(),
                node: Some("n1".into()),
            }],
        };
        let line = reply.encode();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(ListReply::parse(&line).expect("parse"), reply);
    }
}
