//! Entry point of `hakuriver-ssh-proxy`; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    hakuriver_ssh_proxy::cli::main(hakuriver_ssh_proxy::cli::Cli::parse())
}
