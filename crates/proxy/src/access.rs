//! Who may ask for what: turns a parsed request into a route (or a task list) under
//! `[ssh_proxy.auth]` and `allow_listing`, or into the refusal the client gets.
//!
//! - `mode = "off"` (the default): HakuRiver's rule, byte for byte. A request by task
//!   ID is looked up as HakuRiver's proxy looks it up; a token that comes with it (our
//!   client sends one inside TLS) is not checked. Names and LIST are refused unless
//!   `allow_listing = true`.
//! - `mode = "kohakuriver"`: every request needs a KohakuRiver API token; the user it
//!   proves reaches only the VPS tasks KohakuRiver says it may.
//!
//! Whatever the mode, a token that arrives on a plain listener is refused: it has
//! crossed the network in clear already, and accepting it would teach clients that
//! this is fine. Every lookup (task, token, name, list) takes one token from the
//! client address's bucket; a failed token check takes a second.

use std::net::IpAddr;

use hakuriver_tunnel::protocol::{AnyRequest, Command, ExtendedRequest, ListReply, TaskListing};
use hakuriver_tunnel::protocol::{TaskRef, Token};

use crate::config::{Access, AuthMode};
use crate::directory::{Route, TaskDirectory, User};
use crate::error::Refusal;

/// What a request is answered with.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Open a tunnel along this route.
    Tunnel(Route),
    /// Send this list and close.
    List(ListReply),
}

/// What the handshake knows about the client, for the decision and its log lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Client {
    /// The client's address (for the lookup limit).
    pub ip: IpAddr,
    /// Whether the request arrived inside TLS.
    pub tls: bool,
}

/// Decides `request` for `client`. `user` is set to the authenticated user's name as
/// soon as it is known, so that refusals after it are logged with it. `take_lookup`
/// spends one lookup from the client's bucket (refusing when it is empty).
pub(crate) async fn decide(
    directory: &TaskDirectory,
    access: Access,
    request: &AnyRequest,
    client: Client,
    user: &mut Option<String>,
    take_lookup: impl Fn(IpAddr) -> Result<(), Refusal>,
) -> Result<Answer, Refusal> {
    if request.token().is_some() && !client.tls {
        take_lookup(client.ip)?;
        return Err(Refusal::TokenOverPlain);
    }
    let (command, token) = match request {
        AnyRequest::Classic(r) => (Command::Tunnel(TaskRef::Id(r.task_id)), None),
        AnyRequest::Extended(ExtendedRequest { command, token }) => {
            (command.clone(), token.as_ref())
        }
    };
    match access.mode {
        AuthMode::Off => {
            take_lookup(client.ip)?;
            match command {
                Command::Tunnel(TaskRef::Id(id)) => {
                    Ok(Answer::Tunnel(directory.lookup_async(id).await?))
                }
                _ if !access.allow_listing => Err(Refusal::ListingDisabled),
                command => answer(directory, None, command).await,
            }
        }
        AuthMode::Kohakuriver => {
            take_lookup(client.ip)?;
            let Some(token) = token else {
                return Err(Refusal::AuthRequired);
            };
            let who = authenticate(directory, token, client.ip, &take_lookup).await?;
            *user = Some(who.username.clone());
            answer(directory, Some(&who), command).await
        }
    }
}

/// Checks a token; a failure spends a second lookup, so guessing tokens runs out of
/// budget twice as fast as asking for tasks.
async fn authenticate(
    directory: &TaskDirectory,
    token: &Token,
    ip: IpAddr,
    take_lookup: &impl Fn(IpAddr) -> Result<(), Refusal>,
) -> Result<User, Refusal> {
    match directory.authenticate(token.expose()).await {
        Ok(user) => Ok(user),
        Err(denied) => {
            let refusal = Refusal::from(denied);
            if refusal.is_failed_credential() {
                // Already refused either way: an empty bucket only changes the text.
                let _ = take_lookup(ip);
            }
            Err(refusal)
        }
    }
}

async fn answer(
    directory: &TaskDirectory,
    who: Option<&User>,
    command: Command,
) -> Result<Answer, Refusal> {
    match command {
        Command::Tunnel(target) => Ok(Answer::Tunnel(directory.lookup_for(who, &target).await?)),
        Command::List => {
            let tasks = directory.list_for(who).await?;
            Ok(Answer::List(ListReply {
                tasks: tasks
                    .into_iter()
                    .map(|t| TaskListing {
                        task_id: t.task_id.to_string(),
                        name: t.name,
                        status: t.status,
                        node: t.node,
                    })
                    .collect(),
            }))
        }
    }
}
