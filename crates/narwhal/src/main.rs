//! `narwhal`: the one binary. Every subcommand explains itself with `--help`.

mod admin;
mod bench;
mod bench_donations;
mod bench_email;
mod bench_turnout;
mod bench_turnout_conns;
mod blast;
mod config;
mod demo;
mod donations_cmd;
mod donations_setup;
mod donor_notices;
mod fake_cmd;
mod gameday;
mod import;
mod serve;
mod turnout;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "narwhal",
    version,
    about = "Narwhal: a campaign's people hub, email, donations and election day, on one API."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: config::GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API, the staff console and the background workers.
    Serve(serve::ServeArgs),
    /// Create a realistic synthetic campaign in the embedded database and serve it.
    Demo(demo::DemoArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Import records from a file.
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Run a benchmark and print one JSON line per backend.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// A blast's progress and controls: status [--watch], pause, resume, cancel.
    #[command(subcommand)]
    Blast(blast::BlastCommand),
    /// Election day setup: polling places, the GOTV universe, watcher logins and phones, the expected curve.
    #[command(subcommand)]
    Turnout(turnout::TurnoutCommand),
    /// Administration: users, tokens, backups, configuration.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Donations: reconcile [--since T] [--json] against the processors' records.
    #[command(subcommand)]
    Donations(donations_cmd::DonationsCommand),
    /// Game days: run SCENARIO.toml against a local multi-node deployment (or a target)
    /// under load and faults, and verify from the data that nothing was lost.
    #[command(subcommand)]
    Gameday(gameday::GamedayCommand),
    /// Run a fake outside service as a process: stripe, ses or smtp --listen ADDR.
    #[command(subcommand)]
    Fake(fake_cmd::FakeCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match config::Settings::load(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // A bench prints its progress and figures; the server inside it logging every
    // request at info would drown them and spend the CPU being measured.
    let default_log = match cli.command {
        Command::Bench(_) => "warn",
        _ => "info,sqlx=warn",
    };
    config::init_logging(&settings, default_log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(a) => serve::run(&settings, a).await,
            Command::Demo(a) => demo::run(&settings, a).await,
            Command::Migrate => {
                let store = narwhal_store::Store::open(&settings.database).await?;
                let n = store.migrate().await?;
                println!(
                    "applied {n} migration(s) to {}",
                    settings.database.redacted()
                );
                Ok(())
            }
            Command::Import(c) => import::run(&settings, c).await,
            Command::Bench(c) => bench::run(&settings, c).await,
            Command::Admin(c) => admin::run(&settings, c).await,
            Command::Turnout(c) => turnout::run(&settings, c).await,
            Command::Blast(c) => blast::run(&settings, c).await,
            Command::Donations(c) => donations_cmd::run(&settings, c).await,
            Command::Gameday(c) => gameday::run(&settings, c).await,
            Command::Fake(c) => fake_cmd::run(c).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
