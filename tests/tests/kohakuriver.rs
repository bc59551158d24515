//! End to end on KohakuRiver's databases: the built `hakuriver-ssh-proxy` (auth off,
//! HakuRiver's plain protocol) serving KohakuRiver 0.4 and 1.0 files made from their
//! DDL, with the refusal table HakuRiver 0.3.0's files are held to, a real ssh session
//! into a real sshd, the schema shown by `check`, and the file replaced by one of
//! another kind while the proxy runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hakuriver_ssh_tests::fixtures::{self, TASK_OK, TASK_PAUSED};
use hakuriver_ssh_tests::kohaku::{self, Schema, SqlDb, TASK_TWIN_A};
use hakuriver_ssh_tests::robust::ssh_via_client;
use hakuriver_ssh_tests::{
    exchange_until_eof, request_tunnel, run, run_proxy_cli, HakuDb, Proxy, RefusedPort, Sshd,
};

const SSH_TIMEOUT: Duration = Duration::from_secs(90);
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TIMEOUT: Duration = Duration::from_secs(20);

/// The KohakuRiver schemas, and HakuRiver 0.3.0's made by the same SQL path.
const SCHEMAS: [Schema; 3] = Schema::ALL;

struct World {
    sshd: Sshd,
    refused: RefusedPort,
    db: SqlDb,
    proxy: Proxy,
}

fn world(schema: Schema) -> World {
    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let (db, _) = kohaku::routing(schema, sshd.port(), refused.port()).unwrap();
    let proxy = Proxy::builder(db.path()).start().unwrap();
    World {
        sshd,
        refused,
        db,
        proxy,
    }
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn tunnel(id: i64) -> String {
    format!("REQUEST_TUNNEL {id}\n")
}

#[test]
fn every_refusal_of_the_table_on_every_schema() {
    for schema in SCHEMAS {
        let w = world(schema);
        w.proxy
            .wait_for_log(&format!("schema={schema}"), LOG_TIMEOUT)
            .unwrap_or_else(|e| panic!("{schema}: {e:#}\n{}", w.proxy.logs()));
        for (request, message) in fixtures::refusals() {
            let reply = exchange_until_eof(w.proxy.addr(), &request, false).unwrap();
            assert_eq!(
                utf8(&reply),
                format!("ERROR {message}\n"),
                "{schema}: request {:?}\nproxy log:\n{}",
                utf8(&request),
                w.proxy.logs()
            );
        }
        for task in [TASK_OK, TASK_PAUSED, fixtures::TASK_SNOWFLAKE] {
            assert_eq!(
                request_tunnel(w.proxy.addr(), &tunnel(task)).unwrap(),
                "SUCCESS\n",
                "{schema}: task {task}"
            );
        }
    }
}

#[test]
fn ssh_sessions_through_the_proxy_on_kohakuriver_files() {
    for schema in [Schema::Kohaku04, Schema::Kohaku10] {
        let w = world(schema);
        let home = tempfile::tempdir().unwrap();
        for task in [TASK_OK, TASK_PAUSED] {
            let out = run(
                ssh_via_client(&w.sshd, w.proxy.addr(), &task.to_string(), &[], home.path())
                    .arg("echo kohaku-$((40+2))"),
                b"",
                SSH_TIMEOUT,
            )
            .unwrap();
            assert!(
                out.status.success(),
                "{schema} task {task}: ssh {}: {}\nproxy log:\n{}",
                out.status,
                utf8(&out.stderr),
                w.proxy.logs()
            );
            assert_eq!(utf8(&out.stdout), "kohaku-42\n", "{schema} task {task}");
        }
        // A task only 1.0's fixture has (a named one) routes there too.
        if schema == Schema::Kohaku10 {
            let out = run(
                ssh_via_client(
                    &w.sshd,
                    w.proxy.addr(),
                    &TASK_TWIN_A.to_string(),
                    &[],
                    home.path(),
                )
                .arg("echo twin"),
                b"",
                SSH_TIMEOUT,
            )
            .unwrap();
            assert!(out.status.success(), "{}", utf8(&out.stderr));
            assert_eq!(utf8(&out.stdout), "twin\n");
        }
        w.proxy
            .wait_for_log("tunnel closed", LOG_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", w.proxy.logs()));
    }
}

/// Running + paused VPS tasks of the routing fixture: 9 everywhere, plus 6 on 1.0.
fn active_in_fixture(schema: Schema) -> u64 {
    if schema.has_users() {
        15
    } else {
        9
    }
}

#[test]
fn check_prints_the_schema_and_counts_active_vps() {
    for schema in SCHEMAS {
        let w = world(schema);
        let config = w.proxy.config_path().to_str().unwrap().to_owned();
        let db = w.db.path().to_str().unwrap().to_owned();
        let out = run_proxy_cli(["check", "-c", &config, "--db", &db], CLI_TIMEOUT).unwrap();
        let stdout = utf8(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", utf8(&out.stderr));
        assert!(
            stdout.contains(&format!("schema:    {schema}\n")),
            "{schema}: {stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "active VPS tasks: {}\n",
                active_in_fixture(schema)
            )),
            "{schema}: {stdout}"
        );
    }
}

#[test]
fn check_names_a_file_written_by_hakurivers_own_models() {
    let sshd = Sshd::start().unwrap();
    let refused = RefusedPort::new().unwrap();
    let db = HakuDb::create(&fixtures::routing_db(sshd.port(), refused.port())).unwrap();
    let path = db.path().to_str().unwrap().to_owned();
    let out = run_proxy_cli(["check", "--db", &path], CLI_TIMEOUT).unwrap();
    let stdout = utf8(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", utf8(&out.stderr));
    assert!(stdout.contains("schema:    HakuRiver 0.3.0\n"), "{stdout}");
    assert!(stdout.contains("active VPS tasks: 9\n"), "{stdout}");
}

#[test]
fn a_database_of_neither_kind_fails_check_and_lookups_in_one_line() {
    // SQLite, but neither Host's: KohakuRiver's user tables without tasks and nodes.
    let db = SqlDb::create(Schema::Kohaku10).unwrap();
    sql(&db, "DROP TABLE tasks; DROP TABLE nodes;");
    let path = db.path().to_str().unwrap().to_owned();
    let out = run_proxy_cli(["check", "--db", &path], CLI_TIMEOUT).unwrap();
    assert!(!out.status.success());
    let stderr = utf8(&out.stderr);
    assert!(
        stderr.contains("neither a HakuRiver 0.3.0 nor a KohakuRiver database")
            && stderr.contains("tables: tokens, users, vps_assignments"),
        "{stderr}"
    );

    // The daemon answers HakuRiver's internal error and logs the cause.
    let proxy = Proxy::builder(db.path()).start().unwrap();
    let reply = exchange_until_eof(proxy.addr(), tunnel(TASK_OK).as_bytes(), false).unwrap();
    assert_eq!(
        utf8(&reply),
        "ERROR Internal server error during task lookup.\n"
    );
    proxy
        .wait_for_log(
            "neither a HakuRiver 0.3.0 nor a KohakuRiver database",
            LOG_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", proxy.logs()));
}

/// Runs SQL on the fixture's file, as another writer would.
fn sql(db: &SqlDb, batch: &str) {
    rusqlite::Connection::open(db.path())
        .unwrap()
        .execute_batch(batch)
        .unwrap();
}

#[test]
fn the_file_replaced_by_another_kind_while_the_proxy_runs() {
    let mut w = world(Schema::HakuRiver030);
    let addr = w.proxy.addr();
    let twin = tunnel(TASK_TWIN_A);
    assert_eq!(request_tunnel(addr, &tunnel(TASK_OK)).unwrap(), "SUCCESS\n");
    assert_eq!(
        request_tunnel(addr, &twin).unwrap(),
        format!("ERROR Task {TASK_TWIN_A} not found.\n")
    );

    // Upgraded to KohakuRiver 1.0: its tasks are there on the very next request.
    w.db.replace_with(Schema::Kohaku10).unwrap();
    kohaku::seed_routing(&w.db, w.sshd.port(), w.refused.port()).unwrap();
    assert_eq!(request_tunnel(addr, &twin).unwrap(), "SUCCESS\n");
    assert_eq!(request_tunnel(addr, &tunnel(TASK_OK)).unwrap(), "SUCCESS\n");
    w.proxy
        .wait_for_log("database schema changed", LOG_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", w.proxy.logs()));

    // To 0.4, where the same task is now completed: the new file's rows count.
    w.db.replace_with(Schema::Kohaku04).unwrap();
    kohaku::seed_routing(&w.db, w.sshd.port(), w.refused.port()).unwrap();
    w.db.set_task_status(TASK_OK, "completed").unwrap();
    assert_eq!(
        request_tunnel(addr, &tunnel(TASK_OK)).unwrap(),
        format!("ERROR VPS task {TASK_OK} is not active (status: completed).\n")
    );
    assert_eq!(
        request_tunnel(addr, &twin).unwrap(),
        format!("ERROR Task {TASK_TWIN_A} not found.\n")
    );

    // Replaced by a file of neither kind: HakuRiver's internal error, not a stale route.
    w.db.replace_with(Schema::Kohaku04).unwrap();
    sql(&w.db, "DROP TABLE tasks;");
    assert_eq!(
        request_tunnel(addr, &tunnel(TASK_PAUSED)).unwrap(),
        "ERROR Internal server error during task lookup.\n"
    );

    // And back to a served kind.
    w.db.replace_with(Schema::Kohaku04).unwrap();
    kohaku::seed_routing(&w.db, w.sshd.port(), w.refused.port()).unwrap();
    assert_eq!(
        request_tunnel(addr, &tunnel(TASK_PAUSED)).unwrap(),
        "SUCCESS\n"
    );
}
