//! `signalgate-sidecar`: see `--help` and docs/reference.md.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use signalgate_sidecar::app::App;
use signalgate_sidecar::config::knobs::{ADMIN_LISTEN, LISTEN, SHUTDOWN_GRACE};
use signalgate_sidecar::config::{reference, Config, LogFormat};
use signalgate_sidecar::http;
use tokio::net::TcpListener;
use tokio::sync::watch;

// The request path allocates many small, short-lived objects; mimalloc
// spends far less time on them than glibc's allocator (the benchmark's
// profile had 30% of the sidecar's CPU in malloc/free).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        print!("{}", reference::help());
        return ExitCode::SUCCESS;
    }
    if std::env::args().any(|a| a == "--print-knobs-markdown") {
        print!("{}", reference::markdown_table());
        return ExitCode::SUCCESS;
    }
    if std::env::args().any(|a| a == "--print-crd") {
        print!("{}", signalgate_resource::crd_yaml());
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env_and_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("signalgate-sidecar: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    // kube and redis both use rustls; pick one crypto provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One thread by default: a sidecar shares its node (here, Envoy and
    // often Redis) and one thread serves tens of thousands of requests a
    // second; more threads on few cores mostly add wake-ups between them
    // (make bench: 1.3x the duplicate path's throughput with 1 thread rather
    // than 2 on 2 cores). Scale with replicas, or set WORKER_THREADS.
    let threads = config.worker_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads);
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("signalgate-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // A sink call stuck in the blocking pool (a directory sink on a hung
    // volume) must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("signalgate-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal (a log collector would store the escapes),
    // and never with NO_COLOR set.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Config) -> Result<(), String> {
    let listen = config.listen;
    let admin_listen = config.admin_listen;
    let grace = config.shutdown_grace;
    let delay = config.shutdown_delay;
    let flush_interval = config.flush_interval;
    let api = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("{}: cannot listen on {listen}: {e}", LISTEN.env()))?;
    let admin = TcpListener::bind(admin_listen).await.map_err(|e| {
        format!(
            "{}: cannot listen on {admin_listen}: {e}",
            ADMIN_LISTEN.env()
        )
    })?;
    let app = Arc::new(App::build(config).await?);
    tracing::info!(
        %listen,
        %admin_listen,
        store = if app.config.redis_url.is_some() { "redis" } else { "memory" },
        sink = ?app.config.sink,
        "signalgate-sidecar ready"
    );

    let flusher = tokio::spawn(app.coalescer.clone().run(flush_interval));
    let (stop_tx, stop_rx) = watch::channel(false);
    let api_app = app.clone();
    let api_server = tokio::spawn(http::serve(
        api,
        move |req, _peer| http::signal_api(api_app.clone(), req),
        stop_rx.clone(),
        grace,
    ));
    let admin_app = app.clone();
    let admin_server = tokio::spawn(http::serve(
        admin,
        move |req, _peer| http::admin_api(admin_app.clone(), req),
        stop_rx,
        grace,
    ));

    wait_for_signal().await;
    app.begin_drain();
    if !delay.is_zero() {
        // Envoy may still send (its own drain, endpoints being removed):
        // keep serving, unready, until it has stopped.
        tracing::info!(?delay, "shutting down: readiness false, still serving");
        tokio::time::sleep(delay).await;
    }
    tracing::info!("shutting down: listeners closed, finishing in-flight requests");
    app.begin_shutdown();
    let _ = stop_tx.send(true);
    let _ = api_server.await;
    app.coalescer.stop();
    // The last flush gets one more grace period: a slow or hung sink must
    // not hold the pod until it is killed. Counts it leaves unwritten stay in
    // Redis and reach the resource if the incident is seen again within its
    // dedup window (on the in-memory store they are lost with the process).
    let flushed = tokio::time::timeout(grace, flusher).await.is_ok();
    if !flushed {
        tracing::warn!(
            ?grace,
            "the final flush did not finish within {}; exiting with counts unwritten",
            SHUTDOWN_GRACE.env()
        );
    }
    let _ = admin_server.await;
    if flushed {
        tracing::info!(pending = app.coalescer.pending(), "stopped");
    } else {
        tracing::info!("stopped");
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
