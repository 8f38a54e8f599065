//! The `weft-cni` binary: a CNI plugin. The runtime passes the verb and container in `CNI_*`
//! variables and the network config on stdin; the result or error JSON goes to stdout.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    // VERSION may come without stdin; everything else reads the config.
    if command != "VERSION" || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let outcome = weft_cni::run(|name| std::env::var(name).ok(), &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
