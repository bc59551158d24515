//! Benchmark of `hakuriver-ssh-proxy` beside its peers; run it through `bench/run.sh`.

fn main() {}
