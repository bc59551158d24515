//! `hakuriver-ssh` (also installed as `hakuriver.ssh`); see the library for the layout.

fn main() {
    let code = hakuriver_ssh::run(std::env::args_os());
    // Exit here rather than returning: the async runtime may hold a blocking stdin read
    // that would otherwise delay shutdown until more input arrives.
    std::process::exit(i32::from(code));
}
