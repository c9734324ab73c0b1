//! The `flowstate` command: `serve` (default) or `config`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: every request allocates (h2 frames, protobuf buffers,
/// futures) and glibc's malloc/free showed ~5 % of server CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use flowstate::{config::Config, server, telemetry};

/// gRPC service for shared state over Redis: sessions, cache, semantic cache, rate limits and
/// Envoy RLS, locks, events, job queues, usage metering.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; `FLOWSTATE_…` environment variables override it.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new API key: prints the key (once: flowstate keeps only its hash) and the line to
    /// add to the keys file (`auth.keys_file`) or to `auth.keys`.
    New {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// Its permissions, e.g. `sessions:read,sessions:write,cache:*` (`*`: all).
        #[arg(long)]
        allow: String,
    },
    /// Check a keys file before it is deployed (a running server keeps its keys when the file
    /// turns bad, but a starting one refuses to start): names each bad line, or lists how
    /// many keys each tenant has.
    Check {
        /// The keys file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Making a key needs no configuration.
    match &cli.command {
        Some(Command::Keys(KeysCommand::New { tenant, allow })) => return new_key(tenant, allow),
        Some(Command::Keys(KeysCommand::Check { file })) => return check_keys(file),
        _ => {}
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("flowstate: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Keys(_) => ExitCode::SUCCESS,
        Command::Serve => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flowstate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn new_key(tenant: &str, allow: &str) -> ExitCode {
    use flowstate::{
        auth::{keys, permission::Permissions},
        tenant::Tenant,
    };
    let Some(tenant) = Tenant::new(tenant) else {
        eprintln!(
            "flowstate: --tenant must be 1-64 characters of A-Z a-z 0-9 _ . -, not starting with _"
        );
        return ExitCode::from(2);
    };
    let permissions = match Permissions::parse(allow) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("flowstate: --allow: {e}");
            return ExitCode::from(2);
        }
    };
    let made = keys::generate(&tenant, permissions);
    println!("# API key for tenant {} ({permissions}).", tenant.as_str());
    println!("# Give it to the client once; flowstate keeps only its hash:");
    println!("{}", made.key);
    println!("# Add this line to the keys file (auth.keys_file) or to auth.keys:");
    println!("{}", made.line);
    ExitCode::SUCCESS
}

fn check_keys(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("flowstate: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match flowstate::auth::keys::KeySet::parse(&text, &file.display().to_string()) {
        Ok(keys) => {
            let mut tenants = std::collections::BTreeMap::<&str, usize>::new();
            for tenant in keys.tenants() {
                *tenants.entry(tenant.as_str()).or_default() += 1;
            }
            println!("{}: {} keys", file.display(), keys.len());
            for (tenant, n) in tenants {
                println!("  tenant {tenant}: {n}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("flowstate: {e}");
            }
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Inside the runtime: the span exporter (when tracing is on) sends its batches from a task.
    let telemetry = {
        let _runtime = runtime.enter();
        telemetry::init(&config.log, &config.tracing)?
    };
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        if config.metrics.enabled {
            let store = if config.redis.is_configured() {
                "redis"
            } else {
                "memory"
            };
            flowstate::observe::install(config.metrics.listen, store)?;
            tracing::info!(listen = %config.metrics.listen, "metrics on /metrics");
        }
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding server.listen {}: {e}", config.server.listen))?;
        server::run(config, listener, shutdown).await
    });
    // The last spans go out while the runtime still runs the exporter.
    telemetry.shutdown();
    served
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C); `ctrl_c` alone would miss SIGTERM.
/// The handlers are installed here, before the server starts, so a signal that arrives during
/// start-up is a graceful shutdown rather than the default "terminate at once".
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("SIGINT received");
        }
    })
}
