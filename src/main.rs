//! `headwater`: one binary, one image. Parses arguments, sets up logging and hands
//! over to the component that was asked for.

mod client;
mod up;

use clap::{Parser, Subcommand};

/// mimalloc: the router's small-object path spent ~11 % of its CPU in glibc
/// malloc and free (`perf`, playlists through the router); see ARCHITECTURE.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "headwater", version, about = "Origin streaming provisioning platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine: admin, origin nodes and router.
    Up(up::UpConfig),
    /// Run the admin service: REST API, store and operation worker.
    Admin(Box<headwater_admin::server::AdminConfig>),
    /// Run a router: stable locators in front of the origin nodes.
    Router(headwater_router::RouterConfig),
    /// Run an origin node: serve VOD content at an enforced bandwidth.
    Origin(headwater_origin::OriginConfig),
    /// Run a load-test scenario: players per account, faults, SLA checks (exit 1 when one is missed).
    Loadtest(headwater_loadtest::LoadtestArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEADWATER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Logging for the load-test tool: warnings only unless HEADWATER_LOG says more,
/// so the progress bar and the table stay readable.
fn init_tracing_quiet() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HEADWATER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// Cancels the token on Ctrl-C or SIGTERM, so servers drain and exit cleanly.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One crypto provider for every TLS user in the process (sqlx, reqwest).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Admin(cfg) => {
            init_tracing();
            headwater_admin::server::run(*cfg, shutdown_on_signals()).await
        }
        Command::Up(cfg) => {
            init_tracing();
            up::run(cfg, shutdown_on_signals()).await
        }
        Command::Router(cfg) => {
            init_tracing();
            headwater_router::run(cfg, shutdown_on_signals()).await
        }
        Command::Origin(cfg) => {
            init_tracing();
            headwater_origin::run(cfg, shutdown_on_signals()).await
        }
        Command::Client(cmd) => return client::run(cmd).await,
        Command::Loadtest(args) => {
            init_tracing_quiet();
            let demo = headwater_admin::probe_content::demo_files();
            return match headwater_loadtest::run(&args, &demo).await {
                Ok(report) => {
                    println!("{}", report.table());
                    if report.passed { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    std::process::ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
