//! The command line, defined once for parsing, `--help`, completions and the man page.

use std::ffi::OsString;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};

use crate::config::Overrides;

const ABOUT: &str = "Reach a HakuRiver VPS task by its ID through the Host SSH proxy";

const LONG_ABOUT: &str = "\
Reach a HakuRiver VPS task by its ID through the Host SSH proxy.

hakuriver-ssh asks the Host's SSH proxy (host_reachable_address:host_ssh_proxy_port from \
~/.hakuriver/config.toml) for a tunnel to the VPS, then runs your OpenSSH client through it. \
ssh authenticates end to end with the sshd inside the container; the proxy only relays bytes.

Two ways to use it:
  hakuriver-ssh 7323718749301768192             interactive shell (runs ssh for you)
  hakuriver-ssh 7323718749301768192 -v uptime   arguments after the ID go to ssh
  hakuriver-ssh ssh-config >> ~/.ssh/config    then: ssh/scp/rsync/sftp hakuriver-<ID>
  hakuriver-ssh --tls trust                     remember a TLS proxy's certificate

Also installed as `hakuriver.ssh`, the name HakuRiver's own client has; both behave the same.";

const AFTER_LONG_HELP: &str = "\
Config file: --config, else $HAKURIVER_CONFIG, else ~/.hakuriver/config.toml (HakuRiver's \
own file, read unchanged). Keys used: [network] host_reachable_address, host_ssh_proxy_port \
(default 8002). Optional section [ssh_client]: user, ssh_program, connect_timeout_secs \
(default 15), response_timeout_secs (default 30); [ssh_client.tls]: enable, ca_file, \
fingerprints, server_name, known_proxies_file.

Exit status: ssh's own (a remote `exit 7` gives 7; a signal n gives 128+n); 255 when the \
proxy cannot be reached, refuses the tunnel (\"Proxy Error: ...\") or the configuration is \
wrong, in which case ssh is never started; 2 for command-line mistakes.

Nothing but ssh's output is written to stdout; messages from hakuriver-ssh go to stderr \
(quiet by default, -v for progress, -vv for details).";

/// `hakuriver-ssh [OPTIONS] <TASK_ID> [SSH_ARGS]...` and its helper commands.
#[derive(Debug, Parser)]
#[command(
    name = "hakuriver-ssh",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    override_usage = "hakuriver-ssh [OPTIONS] <TASK_ID> [SSH_ARGS]...\n       \
                      hakuriver-ssh [OPTIONS] --stdio <TASK_ID|hakuriver-TASK_ID>\n       \
                      hakuriver-ssh [OPTIONS] <COMMAND>",
    disable_help_subcommand = true,
    subcommand_value_name = "COMMAND",
    subcommand_help_heading = "Commands",
    max_term_width = 100
)]
pub struct Cli {
    /// How to reach the proxy.
    #[command(flatten)]
    pub conn: Overrides,

    /// Local port ssh connects to (0 = the OS picks a free one)
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub local_port: u16,

    /// Relay stdin/stdout through the tunnel instead of running ssh (for ProxyCommand);
    /// the ID may be given as `hakuriver-<ID>`
    #[arg(long)]
    pub stdio: bool,

    /// More messages on stderr (-v progress, -vv details)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The VPS task ID (digits, as `hakuriver.vps status` lists them), or on a
    /// KohakuRiver 1.0 Host the task's name
    #[arg(value_name = "TASK_ID")]
    pub task_id: Option<String>,

    /// Everything after the task ID is passed to ssh: options (-v, -i KEY, -L ...) and
    /// a remote command
    #[arg(
        value_name = "SSH_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub ssh_args: Vec<String>,

    /// Helper commands.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Helper commands; none of them is a number, so they never clash with a task ID.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a ~/.ssh/config block so `ssh hakuriver-<ID>`, scp, rsync, sftp and
    /// VS Code Remote-SSH work through the proxy
    SshConfig,
    /// Fetch the TLS proxy's certificate fingerprint and remember it in
    /// ~/.hakuriver/known_proxies (asks first on a terminal)
    Trust {
        /// Only trust the certificate if it has this fingerprint (as printed by
        /// `hakuriver-ssh-proxy fingerprint` on the Host)
        #[arg(value_name = "FINGERPRINT")]
        expected: Option<String>,
    },
    /// List the VPS tasks you may reach (KohakuRiver Hosts with auth, or with
    /// listing allowed): ID, name, status, node
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) on stdout
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout
    Man,
}

impl Cli {
    /// Parses argv (`argv[0]` included); everything after the task ID is left for ssh,
    /// even options we also have (`-v`).
    pub fn parse_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(mark_ssh_args(args))
    }
}

/// Inserts `--` right after the task ID, so clap hands every later argument to ssh.
///
/// clap alone would still match our own flags after the ID (`hakuriver-ssh 42 -v` would
/// make *us* verbose); ssh users expect `-v` there to reach ssh. Which of our options take
/// a value is read from the clap definition, so this cannot drift from it.
fn mark_ssh_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let cmd = Cli::command();
    let takes_value = |arg: &clap::Arg| arg.get_action().takes_values();
    let long_takes_value = |name: &str| {
        cmd.get_arguments()
            .any(|a| a.get_long() == Some(name) && takes_value(a))
    };
    let short_takes_value = |c: char| {
        cmd.get_arguments()
            .any(|a| a.get_short() == Some(c) && takes_value(a))
    };
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        if arg == "--" {
            // The user marked the ID position already; clap puts the rest in SSH_ARGS.
            return args;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let skip_value = !long.contains('=') && long_takes_value(long);
            i += if skip_value { 2 } else { 1 };
            continue;
        }
        if let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) {
            // In `-xVALUE` the value is attached; a value-taking last letter takes the next arg.
            let mut skip = 1;
            for (pos, c) in cluster.char_indices() {
                if short_takes_value(c) {
                    if pos + c.len_utf8() == cluster.len() {
                        skip = 2;
                    }
                    break;
                }
            }
            i += skip;
            continue;
        }
        if cmd.get_subcommands().any(|s| s.get_name() == arg) {
            return args;
        }
        args.insert(i + 1, OsString::from("--"));
        return args;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("hakuriver-ssh")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        Cli::parse_args(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_after_the_id_go_to_ssh() {
        let cli = parse(&[
            "-v",
            "--host",
            "h",
            "42",
            "-v",
            "-i",
            "key",
            "-L",
            "8888:localhost:8888",
        ]);
        assert_eq!(cli.verbose, 1);
        assert_eq!(cli.conn.host.as_deref(), Some("h"));
        assert_eq!(cli.task_id.as_deref(), Some("42"));
        assert_eq!(
            cli.ssh_args,
            ["-v", "-i", "key", "-L", "8888:localhost:8888"]
        );

        let cli = parse(&["42", "--host", "x", "--", "ls", "-la"]);
        assert_eq!(cli.conn.host, None);
        assert_eq!(cli.ssh_args, ["--host", "x", "--", "ls", "-la"]);

        let cli = parse(&[
            "--config=/c",
            "--user",
            "u",
            "-vv",
            "42",
            "-h",
            "--help",
            "-V",
        ]);
        assert_eq!((cli.verbose, cli.conn.user.as_deref()), (2, Some("u")));
        assert_eq!(cli.ssh_args, ["-h", "--help", "-V"]);

        let cli = parse(&["42"]);
        assert!(cli.ssh_args.is_empty());

        let cli = parse(&["--", "42", "-v"]);
        assert_eq!(cli.task_id.as_deref(), Some("42"));
        assert_eq!(cli.ssh_args, ["-v"]);

        let cli = parse(&["42", "echo", "hi", "&&", "exit", "7"]);
        assert_eq!(cli.ssh_args, ["echo", "hi", "&&", "exit", "7"]);
    }

    #[test]
    fn subcommands_and_stdio() {
        let cli = parse(&["ssh-config", "--config", "/c.toml", "--user", "u"]);
        assert!(matches!(cli.command, Some(Command::SshConfig)));
        assert_eq!(
            cli.conn.config.as_deref(),
            Some(std::path::Path::new("/c.toml"))
        );
        assert_eq!(cli.conn.user.as_deref(), Some("u"));

        let cli = parse(&["--stdio", "hakuriver-42"]);
        assert!(cli.stdio);
        assert_eq!(cli.task_id.as_deref(), Some("hakuriver-42"));

        let cli = parse(&["trust", "sha256:00"]);
        assert!(matches!(
            cli.command,
            Some(Command::Trust { expected: Some(_) })
        ));

        let cli = parse(&["completions", "zsh"]);
        assert!(matches!(cli.command, Some(Command::Completions { .. })));
        assert!(matches!(parse(&["man"]).command, Some(Command::Man)));
        // Numbers are task IDs, never commands.
        assert!(parse(&["1"]).command.is_none());
    }

    #[test]
    fn tls_flags_override_each_other() {
        assert_eq!(parse(&["--tls", "1"]).conn.tls_enable(), Some(true));
        assert_eq!(
            parse(&["--tls", "--no-tls", "1"]).conn.tls_enable(),
            Some(false)
        );
        assert_eq!(
            parse(&["--no-tls", "--tls", "1"]).conn.tls_enable(),
            Some(true)
        );
        assert_eq!(parse(&["1"]).conn.tls_enable(), None);
    }
}
