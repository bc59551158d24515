//! KohakuRiver 1.0's users, API tokens and who may reach which VPS, read from its
//! database: [`TaskDirectory::authenticate`], [`TaskDirectory::lookup_for`],
//! [`TaskDirectory::list_for`].
//!
//! The rule, as KohakuRiver documents it: operators and admins reach any VPS; a `user`
//! reaches the VPS tasks it owns (`tasks.owner_id`) and those assigned to it
//! (`vps_assignments`); lower roles reach none. A task the user may not reach is
//! refused exactly like one that does not exist.

use std::fmt;

use hakuriver_tunnel::protocol::TaskRef;
use hakuriver_tunnel::TaskId;
use rusqlite::{Connection, OptionalExtension};
use sha3::{Digest, Sha3_512};

/// Why auth mode fails over the HTTP directory (the log's text).
const HTTP_NO_AUTH: &str =
    "auth mode needs the SQLite database ([database] kind = \"sqlite\"): the Host API does not give users and tokens";

use super::{evaluate, query_task, DbError, Denied, Route, Row, SchemaKind, TaskDirectory};

/// Statuses in which a VPS is listed and found by name (not yet ended), as SQL.
macro_rules! live_statuses {
    () => {
        "('pending', 'assigning', 'running', 'paused')"
    };
}

/// The token's user. Tokens of deleted users vanish with them (`ON DELETE CASCADE`).
const AUTH_SQL: &str = "SELECT u.id, u.username, u.role, u.is_active \
     FROM tokens AS k JOIN users AS u ON u.id = k.user_id \
     WHERE k.token_hash = ?1 LIMIT 1";

/// Whether user `?1` may reach the task `t` (owner or assigned), as an SQL expression.
macro_rules! reachable_by {
    ($user:literal) => {
        concat!(
            "(t.owner_id = ",
            $user,
            " OR EXISTS (SELECT 1 FROM vps_assignments AS a \
             WHERE a.vps_task_id = t.task_id AND a.user_id = ",
            $user,
            "))"
        )
    };
}

/// The lookup for a `user`: the routing row plus whether the user may reach it.
const LOOKUP_FOR_SQL: &str = concat!(
    "SELECT t.task_type, t.status, t.assigned_node, t.ssh_port, \
     n.hostname, n.status, n.url, ",
    reachable_by!("?2"),
    " FROM tasks AS t LEFT JOIN nodes AS n ON n.hostname = t.assigned_node \
     WHERE t.task_id = ?1"
);

/// Live VPS tasks named `?1` that user `?2` may reach (`?2` NULL: any).
const BY_NAME_SQL: &str = concat!(
    "SELECT t.task_id FROM tasks AS t WHERE t.name = ?1 AND t.task_type = 'vps' \
     AND t.status IN ",
    live_statuses!(),
    " AND (?2 IS NULL OR ",
    reachable_by!("?2"),
    ") ORDER BY t.task_id"
);

/// Live VPS tasks that user `?1` may reach (`?1` NULL: all), on 1.0.
const LIST_SQL_10: &str = concat!(
    "SELECT t.task_id, t.name, t.status, t.assigned_node FROM tasks AS t \
     WHERE t.task_type = 'vps' AND t.status IN ",
    live_statuses!(),
    " AND (?1 IS NULL OR ",
    reachable_by!("?1"),
    ") ORDER BY t.task_id"
);
/// Live VPS tasks on 0.4 (no names; `?1` is always NULL there).
const LIST_SQL_04: &str = concat!(
    "SELECT task_id, NULL, status, assigned_node FROM tasks \
     WHERE task_type = 'vps' AND ?1 IS NULL AND status IN ",
    live_statuses!(),
    " ORDER BY task_id"
);
/// Live VPS tasks on HakuRiver 0.3.0 (no names; `?1` is always NULL there).
const LIST_SQL_030: &str = concat!(
    "SELECT task_id, NULL, status, assigned_node_id FROM task \
     WHERE task_type = 'vps' AND ?1 IS NULL AND status IN ",
    live_statuses!(),
    " ORDER BY task_id"
);

/// A KohakuRiver role, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `anony` (also any role text we do not know).
    Anony,
    /// `viewer`: may look, not connect.
    Viewer,
    /// `user`: reaches its own and its assigned VPS tasks.
    User,
    /// `operator`: reaches every VPS.
    Operator,
    /// `admin`: reaches every VPS.
    Admin,
}

impl Role {
    /// The role stored in `users.role`; unknown text is the lowest role.
    pub fn from_db(text: &str) -> Role {
        match text {
            "viewer" => Role::Viewer,
            "user" => Role::User,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => Role::Anony,
        }
    }

    /// KohakuRiver's name of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Anony => "anony",
            Role::Viewer => "viewer",
            Role::User => "user",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether the role reaches every VPS (operators and admins).
    pub fn reaches_all(self) -> bool {
        self >= Role::Operator
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user proven by an API token ([`TaskDirectory::authenticate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `users.id`.
    pub id: i64,
    /// `users.username` (for the log).
    pub username: String,
    /// `users.role`.
    pub role: Role,
}

/// One VPS task of a listing ([`TaskDirectory::list_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    /// The task ID.
    pub task_id: TaskId,
    /// Its name (KohakuRiver 1.0 only; optional there too).
    pub name: Option<String>,
    /// Its status (`pending`, `assigning`, `running` or `paused`).
    pub status: String,
    /// The hostname of its node, if assigned.
    pub node: Option<String>,
}

/// Lowercase hex of SHA3-512 of the token: what KohakuRiver keeps in `tokens.token_hash`.
fn token_hash(token: &str) -> String {
    use fmt::Write as _;
    let digest = Sha3_512::digest(token.as_bytes());
    let mut hex = String::with_capacity(128);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// The per-user rule for `who`: `None` when it reaches every VPS (no user, operators,
/// admins), `Some(user id)` for a `user`; lower roles are refused.
fn rule(who: Option<&User>) -> Result<Option<i64>, Denied> {
    match who {
        None => Ok(None),
        Some(user) if user.role.reaches_all() => Ok(None),
        Some(user) if user.role == Role::User => Ok(Some(user.id)),
        Some(user) => Err(Denied::RoleTooLow(user.role)),
    }
}

impl TaskDirectory {
    /// Runs `f` on a KohakuRiver 1.0 database; `Err(kind)` inside when the file is of
    /// another kind. A cached older kind is detected once more first: KohakuRiver
    /// migrates 0.4 files to 1.0 in place (same inode).
    fn with_users<T>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<Result<T, SchemaKind>, DbError> {
        let attempt = || {
            self.with_conn(|conn, kind| match kind {
                SchemaKind::Kohaku10 => f(conn).map(Ok),
                other => Ok(Err(other)),
            })
        };
        match attempt()? {
            Err(_) => {
                self.forget_kind();
                attempt()
            }
            done => Ok(done),
        }
    }

    /// The user whose API token this is: [`Denied::BadToken`] when no `tokens` row has
    /// its hash (unknown or revoked), [`Denied::AccountDisabled`] when the user's
    /// `is_active` is 0, [`Denied::AuthUnsupported`] on a database without users.
    /// Blocking; see [`TaskDirectory::authenticate`].
    pub fn authenticate_blocking(&self, token: &str) -> Result<User, Denied> {
        let hash = token_hash(token);
        let found = self
            .with_users(|conn| {
                conn.prepare_cached(AUTH_SQL)?
                    .query_row([&hash], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                        ))
                    })
                    .optional()
            })
            .map_err(Denied::Database)?
            .map_err(Denied::AuthUnsupported)?;
        let Some((id, username, role, is_active)) = found else {
            return Err(Denied::BadToken);
        };
        if is_active.unwrap_or(0) == 0 {
            return Err(Denied::AccountDisabled(username));
        }
        Ok(User {
            id,
            username,
            role: Role::from_db(role.as_deref().unwrap_or_default()),
        })
    }

    /// [`TaskDirectory::authenticate_blocking`] on tokio's blocking pool. The token is
    /// hashed here and never logged nor put in an error.
    pub async fn authenticate(&self, token: &str) -> Result<User, Denied> {
        if self.http.is_some() {
            return Err(Denied::Internal(HTTP_NO_AUTH.to_owned()));
        }
        let this = self.clone();
        let token = token.to_owned();
        match tokio::task::spawn_blocking(move || this.authenticate_blocking(&token)).await {
            Ok(result) => result,
            Err(join) => Err(Denied::Internal(format!("token lookup failed: {join}"))),
        }
    }

    /// Where a tunnel to `target` goes for `who` (`None`: no per-user rule, as HakuRiver
    /// has none). The access rule comes first and a task `who` may not reach is
    /// [`Denied::NotFoundOrForbidden`] exactly like a missing one; then HakuRiver's
    /// checks. Names: among the live VPS tasks `who` may reach, one must match.
    /// Blocking; see [`TaskDirectory::lookup_for`].
    pub fn lookup_for_blocking(
        &self,
        who: Option<&User>,
        target: &TaskRef,
    ) -> Result<Route, Denied> {
        let rule = rule(who)?;
        match target {
            TaskRef::Id(id) => self.lookup_id_for(who.is_some(), rule, *id),
            TaskRef::Name(name) => {
                let ids = self
                    .with_users(|conn| {
                        conn.prepare_cached(BY_NAME_SQL)?
                            .query_map(rusqlite::params![name, rule], |r| r.get::<_, i64>(0))?
                            .collect::<rusqlite::Result<Vec<i64>>>()
                    })
                    .map_err(Denied::Database)?
                    .map_err(|_| Denied::NamesUnsupported)?;
                match ids.as_slice() {
                    [] => Err(Denied::NoSuchName(name.clone())),
                    [id] => {
                        let id = TaskId::try_from(*id)
                            .map_err(|_| Denied::Internal(format!("task id {id} is negative")))?;
                        self.lookup_id_for(who.is_some(), rule, id)
                    }
                    several => Err(Denied::AmbiguousName(name.clone(), several.len())),
                }
            }
        }
    }

    /// The ID lookup: HakuRiver's plain one without a user; with one, missing and
    /// forbidden tasks look the same.
    fn lookup_id_for(
        &self,
        authenticated: bool,
        rule: Option<i64>,
        id: TaskId,
    ) -> Result<Route, Denied> {
        let hidden = |exists| Denied::NotFoundOrForbidden { id, exists };
        let Some(user) = rule else {
            if !authenticated {
                return self.lookup(id);
            }
            let row = self
                .with_conn(|conn, kind| query_task(conn, kind, id))
                .map_err(Denied::Database)?;
            return match row {
                None => Err(hidden(false)),
                row => evaluate(id, row),
            };
        };
        let found = self
            .with_users(|conn| {
                conn.prepare_cached(LOOKUP_FOR_SQL)?
                    .query_row(rusqlite::params![id.get(), user], |r| {
                        let row: Row = (
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        );
                        Ok((row, r.get::<_, Option<bool>>(7)?.unwrap_or(false)))
                    })
                    .optional()
            })
            .map_err(Denied::Database)?
            .map_err(Denied::AuthUnsupported)?;
        match found {
            None => Err(hidden(false)),
            Some((_, false)) => Err(hidden(true)),
            Some((row, true)) => evaluate(id, Some(row)),
        }
    }

    /// [`TaskDirectory::lookup_for_blocking`] from async code: HakuRiver's plain lookup
    /// ([`TaskDirectory::lookup_async`], with its fast path) without a user, else on
    /// tokio's blocking pool.
    pub async fn lookup_for(&self, who: Option<&User>, target: &TaskRef) -> Result<Route, Denied> {
        if let (None, TaskRef::Id(id)) = (who, target) {
            return self.lookup_async(*id).await;
        }
        if self.http.is_some() {
            return Err(Denied::Internal(HTTP_NO_AUTH.to_owned()));
        }
        let this = self.clone();
        let who = who.cloned();
        let target = target.clone();
        match tokio::task::spawn_blocking(move || this.lookup_for_blocking(who.as_ref(), &target))
            .await
        {
            Ok(result) => result,
            Err(join) => Err(Denied::Internal(format!("lookup task failed: {join}"))),
        }
    }

    /// The live VPS tasks (pending, assigning, running, paused) `who` may reach, by task
    /// ID. Without a user on every schema (no names before 1.0); with one only on 1.0.
    /// Blocking; see [`TaskDirectory::list_for`].
    pub fn list_for_blocking(&self, who: Option<&User>) -> Result<Vec<TaskSummary>, Denied> {
        let rule = rule(who)?;
        let read = |conn: &Connection, sql: &str, user: Option<i64>| {
            conn.prepare_cached(sql)?
                .query_map([user], summary)?
                .collect::<rusqlite::Result<Vec<Option<TaskSummary>>>>()
                .map(|rows| rows.into_iter().flatten().collect())
        };
        if who.is_none() {
            return self
                .with_conn(|conn, kind| {
                    let sql = match kind {
                        SchemaKind::HakuRiver030 => LIST_SQL_030,
                        SchemaKind::Kohaku04 => LIST_SQL_04,
                        SchemaKind::Kohaku10 => LIST_SQL_10,
                    };
                    read(conn, sql, None)
                })
                .map_err(Denied::Database);
        }
        self.with_users(|conn| read(conn, LIST_SQL_10, rule))
            .map_err(Denied::Database)?
            .map_err(Denied::AuthUnsupported)
    }

    /// [`TaskDirectory::list_for_blocking`] on tokio's blocking pool.
    pub async fn list_for(&self, who: Option<&User>) -> Result<Vec<TaskSummary>, Denied> {
        if let Some(http) = &self.http {
            return match who {
                None => Box::pin(http.list()).await,
                Some(_) => Err(Denied::Internal(HTTP_NO_AUTH.to_owned())),
            };
        }
        let this = self.clone();
        let who = who.cloned();
        match tokio::task::spawn_blocking(move || this.list_for_blocking(who.as_ref())).await {
            Ok(result) => result,
            Err(join) => Err(Denied::Internal(format!("list task failed: {join}"))),
        }
    }
}

/// One listing row; `None` for a (corrupt) negative ID.
fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<TaskSummary>> {
    let Ok(task_id) = TaskId::try_from(r.get::<_, i64>(0)?) else {
        return Ok(None);
    };
    Ok(Some(TaskSummary {
        task_id,
        name: r.get(1)?,
        status: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        node: r.get(3)?,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use hakuriver_ssh_tests::fixtures::{self, TASK_NOT_VPS, TASK_OK, TASK_PAUSED};
    use hakuriver_ssh_tests::kohaku::{
        self, texts, tokens, users, Cast, Schema, SqlDb, NAME_OTHERS, NAME_TWIN, NAME_UNIQUE,
        TASK_INACTIVE_OWNED, TASK_OTHERS, TASK_OTHERS_TWIN, TASK_TWIN_A, TASK_TWIN_B, TASK_UNOWNED,
    };

    use super::*;
    use crate::error::Refusal;

    const PORT: u16 = 2222;

    fn wire(denied: Denied) -> String {
        Refusal::from(denied).to_string()
    }

    fn tid(id: i64) -> TaskId {
        TaskId::try_from(id).unwrap()
    }

    fn id(id: i64) -> TaskRef {
        TaskRef::Id(tid(id))
    }

    fn name(name: &str) -> TaskRef {
        TaskRef::Name(name.into())
    }

    struct World {
        db: SqlDb,
        cast: Cast,
        directory: TaskDirectory,
    }

    fn world() -> World {
        let (db, cast) = kohaku::routing(Schema::Kohaku10, PORT, 1).unwrap();
        let directory = TaskDirectory::new(db.path());
        World {
            db,
            cast: cast.unwrap(),
            directory,
        }
    }

    impl World {
        fn user(&self, token: &str) -> User {
            self.directory.authenticate_blocking(token).unwrap()
        }

        fn reach(&self, who: Option<&User>, target: &TaskRef) -> Result<u16, String> {
            self.directory
                .lookup_for_blocking(who, target)
                .map(|route| route.port)
                .map_err(wire)
        }

        fn listed(&self, who: Option<&User>) -> Vec<i64> {
            self.directory
                .list_for_blocking(who)
                .unwrap()
                .iter()
                .map(|t| t.task_id.get())
                .collect()
        }
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Anony < Role::Viewer && Role::Viewer < Role::User);
        assert!(Role::User < Role::Operator && Role::Operator < Role::Admin);
        for role in [
            Role::Anony,
            Role::Viewer,
            Role::User,
            Role::Operator,
            Role::Admin,
        ] {
            assert_eq!(Role::from_db(role.as_str()), role);
        }
        assert_eq!(Role::from_db("superuser"), Role::Anony);
        assert_eq!(Role::from_db("Admin"), Role::Anony);
        assert_eq!(token_hash("abc"), kohaku::token_hash("abc"));
    }

    #[test]
    fn tokens_prove_their_users() {
        let w = world();
        for (token, username, uid, role) in [
            (tokens::OWNER, users::OWNER, w.cast.owner, Role::User),
            (
                tokens::ASSIGNED,
                users::ASSIGNED,
                w.cast.assigned,
                Role::User,
            ),
            (
                tokens::OPERATOR,
                users::OPERATOR,
                w.cast.operator,
                Role::Operator,
            ),
            (tokens::ADMIN, users::ADMIN, w.cast.admin, Role::Admin),
            (tokens::VIEWER, users::VIEWER, w.cast.viewer, Role::Viewer),
        ] {
            let user = w.user(token);
            assert_eq!(
                user,
                User {
                    id: uid,
                    username: username.into(),
                    role
                }
            );
        }
        let refused = |token: &str| {
            let denied = w.directory.authenticate_blocking(token).unwrap_err();
            // The token never reaches an error, on the wire or in the log.
            let refusal = Refusal::from(denied);
            if !token.is_empty() {
                assert!(!refusal.to_string().contains(token));
                assert!(!refusal.detail().contains(token));
                assert!(!format!("{refusal:?}").contains(token));
            }
            refusal.to_string()
        };
        assert_eq!(refused(tokens::WRONG), texts::BAD_TOKEN);
        assert_eq!(refused(tokens::REVOKED), texts::BAD_TOKEN);
        assert_eq!(refused(""), texts::BAD_TOKEN);
        assert_eq!(refused(tokens::INACTIVE), texts::INACTIVE_ACCOUNT);
        // Revoking live takes effect on the next lookup.
        w.db.revoke_token(w.cast.owner_token_row).unwrap();
        assert_eq!(refused(tokens::OWNER), texts::BAD_TOKEN);
        // So does disabling an account.
        w.db.set_active(w.cast.assigned, false).unwrap();
        assert_eq!(refused(tokens::ASSIGNED), texts::INACTIVE_ACCOUNT);
    }

    #[test]
    fn auth_needs_a_kohakuriver_1_0_database() {
        for schema in [Schema::HakuRiver030, Schema::Kohaku04] {
            let (db, _) = kohaku::routing(schema, PORT, 1).unwrap();
            let directory = TaskDirectory::new(db.path());
            let denied = directory.authenticate_blocking(tokens::OWNER).unwrap_err();
            assert!(matches!(denied, Denied::AuthUnsupported(_)), "{denied:?}");
            let refusal = Refusal::from(denied);
            assert_eq!(refusal.to_string(), texts::AUTH_UNSUPPORTED);
            assert!(
                refusal
                    .detail()
                    .contains("auth mode needs a KohakuRiver 1.0 database")
                    && refusal.detail().contains(schema.label()),
                "{}",
                refusal.detail()
            );
            let user = User {
                id: 1,
                username: "x".into(),
                role: Role::Admin,
            };
            assert!(matches!(
                directory.list_for_blocking(Some(&user)),
                Err(Denied::AuthUnsupported(_))
            ));
            assert!(matches!(
                directory.lookup_for_blocking(
                    Some(&User {
                        role: Role::User,
                        ..user
                    }),
                    &id(TASK_OK)
                ),
                Err(Denied::AuthUnsupported(_))
            ));
        }
    }

    #[test]
    fn who_may_reach_which_vps() {
        let w = world();
        let owner = w.user(tokens::OWNER);
        let assigned = w.user(tokens::ASSIGNED);
        let operator = w.user(tokens::OPERATOR);
        let admin = w.user(tokens::ADMIN);
        let other = w.user(tokens::OTHER);
        let viewer = w.user(tokens::VIEWER);
        let hidden = |task: i64| Err(texts::not_found_or_forbidden(task));

        // Owner: its own, also paused; not another's, not an unowned one.
        assert_eq!(w.reach(Some(&owner), &id(TASK_OK)), Ok(PORT));
        assert_eq!(w.reach(Some(&owner), &id(TASK_PAUSED)), Ok(PORT));
        assert_eq!(w.reach(Some(&owner), &id(TASK_OTHERS)), hidden(TASK_OTHERS));
        assert_eq!(
            w.reach(Some(&owner), &id(TASK_UNOWNED)),
            hidden(TASK_UNOWNED)
        );
        // Assigned: the tasks assigned to it, nothing else of the owner's.
        assert_eq!(w.reach(Some(&assigned), &id(TASK_OK)), Ok(PORT));
        assert_eq!(w.reach(Some(&assigned), &id(TASK_OTHERS)), Ok(PORT));
        assert_eq!(
            w.reach(Some(&assigned), &id(TASK_PAUSED)),
            hidden(TASK_PAUSED)
        );
        // Another user: its own only.
        assert_eq!(w.reach(Some(&other), &id(TASK_OTHERS)), Ok(PORT));
        assert_eq!(w.reach(Some(&other), &id(TASK_OK)), hidden(TASK_OK));
        // Operators and admins: any VPS, owned or not.
        for boss in [&operator, &admin] {
            for task in [TASK_OK, TASK_OTHERS, TASK_UNOWNED, TASK_INACTIVE_OWNED] {
                assert_eq!(w.reach(Some(boss), &id(task)), Ok(PORT), "{boss:?} {task}");
            }
        }
        // Viewer: nothing, whatever the task (even a missing one).
        let too_low = Err(texts::role_too_low("viewer"));
        assert_eq!(w.reach(Some(&viewer), &id(TASK_OK)), too_low);
        assert_eq!(w.reach(Some(&viewer), &id(424_242)), too_low);
        assert_eq!(w.reach(Some(&viewer), &name(NAME_UNIQUE)), too_low);
        assert!(matches!(
            w.directory.list_for_blocking(Some(&viewer)),
            Err(Denied::RoleTooLow(Role::Viewer))
        ));
        // No user (auth off): HakuRiver's rules, HakuRiver's texts.
        assert_eq!(w.reach(None, &id(TASK_OTHERS)), Ok(PORT));
        assert_eq!(
            w.reach(None, &id(424_242)),
            Err("Task 424242 not found.".into())
        );
    }

    #[test]
    fn a_forbidden_task_looks_exactly_like_a_missing_one() {
        let w = world();
        let owner = w.user(tokens::OWNER);
        let operator = w.user(tokens::OPERATOR);
        let missing = w
            .directory
            .lookup_for_blocking(Some(&owner), &id(TASK_OTHERS + 1000))
            .unwrap_err();
        let forbidden = w
            .directory
            .lookup_for_blocking(Some(&owner), &id(TASK_OTHERS))
            .unwrap_err();
        assert!(matches!(
            missing,
            Denied::NotFoundOrForbidden { exists: false, .. }
        ));
        assert!(matches!(
            forbidden,
            Denied::NotFoundOrForbidden { exists: true, .. }
        ));
        // The same text but for the ID; and a forbidden completed or non-VPS task does
        // not say so either (the access check comes first).
        assert_eq!(
            wire(missing).replace(&(TASK_OTHERS + 1000).to_string(), "N"),
            wire(forbidden).replace(&TASK_OTHERS.to_string(), "N")
        );
        let other = w.user(tokens::OTHER);
        for task in [
            TASK_NOT_VPS,
            fixtures::TASK_COMPLETED,
            fixtures::TASK_NO_NODE,
        ] {
            assert_eq!(
                w.reach(Some(&other), &id(task)),
                Err(texts::not_found_or_forbidden(task))
            );
        }
        // An operator asking for a missing task gets the auth-mode text too.
        assert_eq!(
            w.reach(Some(&operator), &id(424_242)),
            Err(texts::not_found_or_forbidden(424_242))
        );
    }

    #[test]
    fn hakurivers_checks_after_access_with_the_same_texts() {
        let w = world();
        let owner = w.user(tokens::OWNER);
        let operator = w.user(tokens::OPERATOR);
        for (request, text) in fixtures::refusals() {
            let line = String::from_utf8(request).unwrap();
            let Some(task) = line
                .strip_prefix("REQUEST_TUNNEL ")
                .and_then(|t| t.trim().parse::<TaskId>().ok())
            else {
                continue;
            };
            if task.get() == fixtures::TASK_REFUSED {
                continue;
            }
            let want = if task.get() == 424_242 {
                texts::not_found_or_forbidden(424_242)
            } else {
                text
            };
            for who in [&owner, &operator] {
                let got = w.reach(Some(who), &TaskRef::Id(task));
                assert_eq!(got, Err(want.clone()), "{} task {task}", who.username);
            }
        }
    }

    #[test]
    fn names_resolve_among_reachable_live_vps_tasks() {
        let w = world();
        let owner = w.user(tokens::OWNER);
        let assigned = w.user(tokens::ASSIGNED);
        let operator = w.user(tokens::OPERATOR);
        let other = w.user(tokens::OTHER);
        // Unique (its completed namesake does not count).
        assert_eq!(w.reach(Some(&owner), &name(NAME_UNIQUE)), Ok(PORT));
        assert_eq!(w.reach(Some(&assigned), &name(NAME_UNIQUE)), Ok(PORT));
        assert_eq!(w.reach(Some(&operator), &name(NAME_UNIQUE)), Ok(PORT));
        // Ambiguous for the owner (2) and operators (3); unique for the other user.
        assert_eq!(
            w.reach(Some(&owner), &name(NAME_TWIN)),
            Err(texts::ambiguous_name(NAME_TWIN, 2))
        );
        assert_eq!(
            w.reach(Some(&operator), &name(NAME_TWIN)),
            Err(texts::ambiguous_name(NAME_TWIN, 3))
        );
        assert_eq!(w.reach(Some(&other), &name(NAME_TWIN)), Ok(PORT));
        // Unknown, and another user's: the same refusal.
        let none = |n: &str| Err(texts::no_such_name(n));
        assert_eq!(w.reach(Some(&owner), &name("nope")), none("nope"));
        assert_eq!(w.reach(Some(&owner), &name(NAME_OTHERS)), none(NAME_OTHERS));
        assert_eq!(w.reach(Some(&other), &name(NAME_UNIQUE)), none(NAME_UNIQUE));
        // A name resolving to a pending VPS gets HakuRiver's check on it.
        w.db.set_task_status(TASK_OK, "pending").unwrap();
        assert_eq!(
            w.reach(Some(&owner), &name(NAME_UNIQUE)),
            Err(format!(
                "VPS task {TASK_OK} is not active (status: pending)."
            ))
        );
        // Once it ends, the name is gone.
        w.db.set_task_status(TASK_OK, "killed").unwrap();
        assert_eq!(w.reach(Some(&owner), &name(NAME_UNIQUE)), none(NAME_UNIQUE));
        // No user: every live VPS counts.
        assert_eq!(
            w.reach(None, &name(NAME_TWIN)),
            Err(texts::ambiguous_name(NAME_TWIN, 3))
        );
        assert_eq!(w.reach(None, &name(NAME_OTHERS)), Ok(PORT));
        // Names with quotes and escapes come back quoted, one line.
        let odd = "we\"ird\nname";
        assert_eq!(w.reach(Some(&owner), &name(odd)), none(odd));
        assert!(!texts::no_such_name(odd).contains('\n'));
    }

    #[test]
    fn names_need_kohakuriver_1_0() {
        for schema in [Schema::HakuRiver030, Schema::Kohaku04] {
            let (db, _) = kohaku::routing(schema, PORT, 1).unwrap();
            let directory = TaskDirectory::new(db.path());
            let got = directory.lookup_for_blocking(None, &name(NAME_UNIQUE));
            assert_eq!(got.map_err(wire), Err(texts::NAMES_UNSUPPORTED.into()));
        }
    }

    #[test]
    fn lists_show_only_what_the_user_may_reach() {
        let w = world();
        let live_routing: Vec<i64> = {
            // Routing tasks that are VPS and live (all but completed and the command).
            let mut ids: Vec<i64> = (1..=10)
                .filter(|t| ![TASK_NOT_VPS, fixtures::TASK_COMPLETED].contains(t))
                .collect();
            ids.push(fixtures::TASK_SNOWFLAKE);
            ids
        };
        let mut owners = live_routing.clone();
        owners.extend([TASK_TWIN_A, TASK_TWIN_B]);
        owners.sort_unstable();
        assert_eq!(w.listed(Some(&w.user(tokens::OWNER))), owners);
        assert_eq!(
            w.listed(Some(&w.user(tokens::ASSIGNED))),
            vec![TASK_OK, TASK_OTHERS]
        );
        assert_eq!(
            w.listed(Some(&w.user(tokens::OTHER))),
            vec![TASK_OTHERS, TASK_OTHERS_TWIN]
        );
        let mut all = owners.clone();
        all.extend([
            TASK_OTHERS,
            TASK_OTHERS_TWIN,
            TASK_INACTIVE_OWNED,
            TASK_UNOWNED,
        ]);
        all.sort_unstable();
        assert_eq!(w.listed(Some(&w.user(tokens::OPERATOR))), all);
        assert_eq!(w.listed(Some(&w.user(tokens::ADMIN))), all);
        assert_eq!(w.listed(None), all);

        let assigned = w
            .directory
            .list_for_blocking(Some(&w.user(tokens::ASSIGNED)))
            .unwrap();
        assert_eq!(
            assigned[0],
            TaskSummary {
                task_id: tid(TASK_OK),
                name: Some(NAME_UNIQUE.into()),
                status: "running".into(),
                node: Some("n1".into()),
            }
        );
        // Pending and assigning count; ended ones do not.
        w.db.set_task_status(TASK_OTHERS, "assigning").unwrap();
        w.db.set_task_status(TASK_OK, "stopped").unwrap();
        let assigned = w
            .directory
            .list_for_blocking(Some(&w.user(tokens::ASSIGNED)))
            .unwrap();
        assert_eq!(assigned.len(), 1);
        assert_eq!(assigned[0].status, "assigning");
    }

    #[test]
    fn lists_without_a_user_on_every_schema() {
        for schema in Schema::ALL {
            let (db, _) = kohaku::routing(schema, PORT, 1).unwrap();
            let listed = TaskDirectory::new(db.path())
                .list_for_blocking(None)
                .unwrap();
            let ids: Vec<i64> = listed.iter().map(|t| t.task_id.get()).collect();
            assert!(ids.windows(2).all(|p| p[0] < p[1]), "{schema}: {ids:?}");
            assert!(
                ids.contains(&TASK_OK) && !ids.contains(&TASK_NOT_VPS),
                "{schema}"
            );
            let ok = listed.iter().find(|t| t.task_id.get() == TASK_OK).unwrap();
            assert_eq!(ok.name.is_some(), schema.has_users(), "{schema}");
            assert_eq!(ok.node.as_deref(), Some("n1"));
        }
    }

    #[test]
    fn a_0_4_file_migrated_in_place_to_1_0_serves_auth() {
        let db = SqlDb::create(Schema::Kohaku04).unwrap();
        db.add_node("n1", "http://127.0.0.1:8001", "online")
            .unwrap();
        db.add_vps(1, None, None, "running", Some("n1"), Some(22))
            .unwrap();
        let directory = TaskDirectory::new(db.path());
        assert_eq!(directory.schema().unwrap(), SchemaKind::Kohaku04);
        // KohakuRiver's Host adds the 1.0 columns and tables to the same file.
        let conn = Connection::open(db.path()).unwrap();
        conn.execute_batch(
            r#"ALTER TABLE tasks ADD COLUMN "name" VARCHAR(255);
               ALTER TABLE tasks ADD COLUMN "owner_id" INTEGER;
               CREATE TABLE "users" ("id" INTEGER NOT NULL PRIMARY KEY, "username" VARCHAR(50) NOT NULL, "display_name" VARCHAR(100), "password_hash" VARCHAR(255) NOT NULL, "is_active" INTEGER NOT NULL, "role" VARCHAR(20) NOT NULL, "created_at" DATETIME NOT NULL);
               CREATE TABLE "tokens" ("id" INTEGER NOT NULL PRIMARY KEY, "user_id" INTEGER NOT NULL, "token_hash" VARCHAR(128) NOT NULL, "name" VARCHAR(100) NOT NULL, "last_used" DATETIME, "created_at" DATETIME NOT NULL);
               CREATE TABLE "vps_assignments" ("id" INTEGER NOT NULL PRIMARY KEY, "vps_task_id" INTEGER NOT NULL, "user_id" INTEGER NOT NULL, "created_at" DATETIME NOT NULL);"#,
        )
        .unwrap();
        let uid = db.add_user("mia", "admin", true).unwrap();
        db.add_token(uid, "migrated-token").unwrap();
        let user = directory.authenticate_blocking("migrated-token").unwrap();
        assert_eq!(user.role, Role::Admin);
        assert_eq!(directory.schema().unwrap(), SchemaKind::Kohaku10);
    }

    #[tokio::test]
    async fn async_methods_answer_like_the_blocking_ones() {
        let w = world();
        let owner = w.directory.authenticate(tokens::OWNER).await.unwrap();
        assert_eq!(owner.username, users::OWNER);
        assert!(matches!(
            w.directory.authenticate(tokens::WRONG).await,
            Err(Denied::BadToken)
        ));
        let route = w
            .directory
            .lookup_for(Some(&owner), &id(TASK_OK))
            .await
            .unwrap();
        assert_eq!(route.port, PORT);
        let route = w
            .directory
            .lookup_for(None, &id(TASK_OTHERS))
            .await
            .unwrap();
        assert_eq!(route.port, PORT);
        assert!(matches!(
            w.directory.lookup_for(Some(&owner), &id(TASK_OTHERS)).await,
            Err(Denied::NotFoundOrForbidden { exists: true, .. })
        ));
        let listed = w.directory.list_for(Some(&owner)).await.unwrap();
        assert!(listed.iter().all(|t| t.task_id.get() != TASK_OTHERS));
    }
}
