//! `natter`: parse the arguments, run the client.

use clap::Parser;

fn main() -> std::process::ExitCode {
    natter_client::run(natter_client::cli::Args::parse())
}
