//! `hakuriver-ssh list [--json]`: the VPS tasks the proxy says this user may reach, as a
//! table for people or JSON for scripts. Every cell came from the network and is shown
//! through [`crate::display`].

use hakuriver_tunnel::protocol::ListReply;

use crate::cli::Cli;
use crate::display;
use crate::error::ClientError;
use crate::token;

/// `list [--json]`: the VPS tasks the proxy says we may reach.
pub fn command(cli: &Cli, json: bool) -> Result<u8, ClientError> {
    let (_, connector) = crate::connector(cli, token::find(cli.conn.token_file.as_deref())?)?;
    let runtime = crate::runtime()?;
    let listed = runtime.block_on(connector.list());
    runtime.shutdown_background();
    let reply = listed?;
    let text = if json {
        // serde_json escapes control characters, so this is safe on a terminal too.
        let mut text = serde_json::to_string_pretty(&reply.tasks).map_err(ClientError::ListJson)?;
        text.push('\n');
        text
    } else {
        list_table(&reply)
    };
    Ok(crate::write_stdout(text.as_bytes()))
}

/// The list as an aligned table; every cell came from the network, so each is made
/// safe and cut.
fn list_table(reply: &ListReply) -> String {
    let rows: Vec<[String; 4]> = reply
        .tasks
        .iter()
        .map(|t| {
            [
                display::safe_cut(&t.task_id, 20),
                display::safe_cut(t.name.as_deref().unwrap_or("-"), 40),
                display::safe_cut(&t.status, 16),
                display::safe_cut(t.node.as_deref().unwrap_or("-"), 32),
            ]
        })
        .collect();
    let header = ["TASK ID", "NAME", "STATUS", "NODE"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no VPS tasks you may reach)\n");
    }
    out
}
