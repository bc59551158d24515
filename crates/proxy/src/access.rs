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
        AnyRequest::Extended(ExtendedRequest { command, token, .. }) => {
            (command.clone(), token.as_ref())
        }
        // The handshake answers RESUME itself (crate::resume); it never gets here.
        AnyRequest::Resume(_) => {
            return Err(Refusal::Internal(
                "a RESUME reached the access decision".into(),
            ))
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use hakuriver_ssh_tests::kohaku::{self, tokens, Schema};
    use hakuriver_tunnel::protocol::Request;
    use hakuriver_tunnel::TaskId;

    use super::*;

    fn extended(command: Command, token: &str) -> AnyRequest {
        AnyRequest::Extended(ExtendedRequest {
            command,
            token: Token::new(token),
            resume: None,
        })
    }

    const AUTH: Access = Access {
        mode: AuthMode::Kohakuriver,
        allow_listing: false,
    };

    /// Runs `decide` with a bucket that counts what it is asked for.
    async fn decide_counting(
        directory: &TaskDirectory,
        access: Access,
        request: &AnyRequest,
        tls: bool,
    ) -> (Result<Answer, Refusal>, u32, Option<String>) {
        let taken = Cell::new(0);
        let mut user = None;
        let client = Client {
            ip: "127.0.0.1".parse().expect("ip"),
            tls,
        };
        let answer = decide(directory, access, request, client, &mut user, |_| {
            taken.set(taken.get() + 1);
            Ok(())
        })
        .await;
        (answer, taken.get(), user)
    }

    #[tokio::test]
    async fn failed_tokens_cost_two_lookups_and_good_ones_one() {
        let (db, _) = kohaku::routing(Schema::Kohaku10, 1, 2).expect("db");
        let directory = TaskDirectory::new(db.path());
        let task = Command::Tunnel(TaskRef::Id(TaskId::try_from(1).expect("id")));
        let (answer, taken, user) = decide_counting(
            &directory,
            AUTH,
            &extended(task.clone(), tokens::OWNER),
            true,
        )
        .await;
        assert!(matches!(answer, Ok(Answer::Tunnel(_))), "{answer:?}");
        assert_eq!((taken, user.as_deref()), (1, Some(kohaku::users::OWNER)));
        for bad in [tokens::WRONG, tokens::REVOKED, tokens::INACTIVE] {
            let (answer, taken, _) =
                decide_counting(&directory, AUTH, &extended(task.clone(), bad), true).await;
            assert!(answer.is_err(), "{bad}");
            assert_eq!(taken, 2, "{bad}");
        }
        // Another user's task is refused after one lookup, as a missing one would be.
        let (answer, taken, _) =
            decide_counting(&directory, AUTH, &extended(task, tokens::OTHER), true).await;
        assert!(matches!(answer, Err(Refusal::NotFoundOrForbidden(..))));
        assert_eq!(taken, 1);
    }

    #[tokio::test]
    async fn tokens_on_plain_listeners_and_requests_without_one_are_refused() {
        let (db, _) = kohaku::routing(Schema::Kohaku10, 1, 2).expect("db");
        let directory = TaskDirectory::new(db.path());
        let list = extended(Command::List, tokens::OWNER);
        for access in [AUTH, Access::default()] {
            let (answer, taken, user) = decide_counting(&directory, access, &list, false).await;
            assert!(matches!(answer, Err(Refusal::TokenOverPlain)), "{answer:?}");
            assert_eq!((taken, user), (1, None));
        }
        let classic = AnyRequest::Classic(Request {
            task_id: TaskId::try_from(1).expect("id"),
        });
        let (answer, taken, _) = decide_counting(&directory, AUTH, &classic, true).await;
        assert!(matches!(answer, Err(Refusal::AuthRequired)), "{answer:?}");
        assert_eq!(taken, 1);
        // Mode off: HakuRiver's rule, and no names or lists unless allowed.
        let (answer, _, _) = decide_counting(&directory, Access::default(), &classic, false).await;
        assert!(matches!(answer, Ok(Answer::Tunnel(_))), "{answer:?}");
        let name = AnyRequest::Extended(ExtendedRequest {
            command: Command::Tunnel(TaskRef::Name(kohaku::NAME_UNIQUE.into())),
            token: None,
            resume: None,
        });
        let (answer, _, _) = decide_counting(&directory, Access::default(), &name, false).await;
        assert!(
            matches!(answer, Err(Refusal::ListingDisabled)),
            "{answer:?}"
        );
        let listing = Access {
            mode: AuthMode::Off,
            allow_listing: true,
        };
        let (answer, _, _) = decide_counting(&directory, listing, &name, false).await;
        assert!(matches!(answer, Ok(Answer::Tunnel(_))), "{answer:?}");
    }
}
