//! `warren-load`: bounded load runs against Warren (fan-out, idle sockets,
//! connect storms, drains, many rooms, a crowd joining one room). Progress
//! goes to stderr once a second; the JSON summary is the only thing on
//! stdout. `warren-load report` renders the summaries `scripts/bench` kept
//! into `docs/benchmarks.md`. See `warren-load --help` and
//! `docs/benchmarks.md`.

use clap::Parser;
use loadgen::load::cli::{self, Args, Scenario};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Scenario::Report(report) = &args.scenario {
        return report.write();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init();
    let summary = cli::run(args).await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
