//! `xvs`: the eXpress Virtual Server agent and CLI. The only place errors become `anyhow`.
mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    cli::Cli::parse().run()
}
