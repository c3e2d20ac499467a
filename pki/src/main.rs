//! `opencluster-pki`: flags -> library call -> one-line error and exit status
//! (0 success, 1 failure, 2 usage).

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    opencluster_pki::install_crypto_provider();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors already name their cause; add only what a context hides.
            let mut message = e.to_string();
            for cause in e.chain().skip(1).map(|c| c.to_string()) {
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("opencluster-pki: {message}");
            ExitCode::from(1)
        }
    }
}
