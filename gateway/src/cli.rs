//! Command line, startup and shutdown of the gateway process.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::gateway::{Gateway, GatewayConfig};
use crate::listener::ListenerLimits;
use crate::local::manifests::{LoadedFunction, load_dir};
use crate::local::process::{Launcher, run_embedded_shim};
use crate::local::{FolderSettings, LocalConfig, LocalSource};
use crate::queue::EventQueue;
use crate::queue::local::LocalQueue;
use crate::queue::nats::{NatsQueue, NatsSettings};
use crate::registry::DispatchConfig;
use crate::sigv4::KeyFile;

/// Exit code for bad configuration (sysexits EX_USAGE).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Porchlight gateway: Lambda-style functions on one machine or in a cluster.
///
/// Local mode (`--local DIR`) reads Function manifests (the same YAML as
/// `kubectl apply -f DIR`), runs each function's execution environments as
/// local processes, scales them with demand and back to zero when idle.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "porchlight-gateway",
    version,
    after_help = "Examples:\n  porchlight-gateway --local examples/\n  curl -s -X POST http://127.0.0.1:8080/2015-03-31/functions/hello/invocations -d '{}'\n  aws lambda invoke --endpoint-url http://127.0.0.1:8080 --no-sign-request --region us-east-1 --function-name hello out.json\n\nEndpoints: /2015-03-31/functions/{name}/invocations (Lambda Invoke API), /http/{name}/... (HTTP trigger),\n/events/s3 (S3 notifications), /events/cloudevents (CloudEvents 1.0), /v1/functions, /v1/concurrency,\n/v1/dead-letters, /metrics, /live, /ready."
)]
pub struct Cli {
    /// Run functions from the manifests in this directory as local processes.
    #[arg(
        long,
        value_name = "DIR",
        env = "PORCHLIGHT_LOCAL",
        conflicts_with = "kubernetes"
    )]
    pub local: Option<PathBuf>,
    /// Serve the Functions of a Kubernetes namespace: watch them and their
    /// pods, route to ready pods; the controller scales them.
    #[arg(long, env = "PORCHLIGHT_KUBERNETES")]
    pub kubernetes: bool,
    /// Namespace whose Functions are served (Kubernetes mode); callers name
    /// them by their bare name.
    #[arg(long, default_value = "default", env = "PORCHLIGHT_NAMESPACE")]
    pub namespace: String,
    /// More namespaces to serve (Kubernetes mode), comma-separated, or `*`
    /// for every namespace; callers name their functions NAMESPACE.NAME.
    /// The gateway needs a Role in each (or a ClusterRole for `*`).
    #[arg(
        long,
        value_name = "NS,...",
        value_delimiter = ',',
        env = "PORCHLIGHT_NAMESPACES"
    )]
    pub namespaces: Vec<String>,
    /// Kubeconfig to use (Kubernetes mode); default: in-cluster config or $KUBECONFIG.
    #[arg(long, value_name = "PATH", env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Port of the runtime shim's invoke endpoint in function pods (Kubernetes mode).
    #[arg(long, default_value_t = 8080)]
    pub environment_port: u16,
    /// Address to serve on: everything, or with --internal-listen only
    /// what end users call (Invoke API, HTTP triggers, S3, CloudEvents).
    #[arg(long, default_value = "127.0.0.1:8080", env = "PORCHLIGHT_LISTEN")]
    pub listen: SocketAddr,
    /// Serve the platform's own endpoints (/v1/*: concurrency reports,
    /// functions, dead letters; /metrics, /live, /ready) on this address
    /// instead, and not on --listen.
    #[arg(long, value_name = "ADDR", env = "PORCHLIGHT_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// Serve --listen over TLS (HTTPS) with this PEM certificate chain
    /// (with --tls-key). The files are read again when they change, so a
    /// renewed certificate applies without a restart. The internal listener
    /// stays plain HTTP.
    #[arg(
        long,
        value_name = "PATH",
        env = "PORCHLIGHT_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        value_name = "PATH",
        env = "PORCHLIGHT_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Open connections at most; more wait in the kernel's accept queue.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest a client may take to send a request's body.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// A kept-alive connection with no request for this long is closed.
    #[arg(long, default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Invocations that may wait for an environment, per function.
    #[arg(long, default_value_t = 1000)]
    pub queue_depth: usize,
    /// Async events accepted and not finished, per function.
    #[arg(long, default_value_t = 1000)]
    pub async_queue_depth: usize,
    /// Added to a function's timeout to bound how long an invocation waits for an environment.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub cold_start_allowance: Duration,
    /// Delay before the first retry of a failed async invocation (doubled for the second).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub async_retry_base: Duration,
    /// Async events older than this are given up (dead-lettered), unless
    /// the function's `spec.async.maximumEventAgeSeconds` says otherwise.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub async_max_age: Duration,
    /// Dead letters kept (the oldest are evicted and counted).
    #[arg(long, default_value_t = 1000)]
    pub dead_letters: usize,
    /// Keep async events and dead letters in NATS JetStream at this address
    /// (`nats://HOST:PORT`), shared by every gateway that names it.
    #[arg(long, value_name = "URL", env = "PORCHLIGHT_QUEUE")]
    pub queue: Option<String>,
    /// Keep async events and dead letters in a file in this folder, so they
    /// survive a restart (one gateway per folder). Local mode's default:
    /// $XDG_DATA_HOME/porchlight, or ~/.local/share/porchlight. Kubernetes
    /// mode without it or --queue keeps them in memory.
    #[arg(
        long,
        value_name = "DIR",
        env = "PORCHLIGHT_DATA_DIR",
        conflicts_with = "queue"
    )]
    pub data_dir: Option<PathBuf>,
    /// For tests only: schedule triggers read a clock this many times faster
    /// than real time, from 2026-01-01T00:00Z (60: a schedule minute lasts
    /// a second). Every gateway sharing a store must use the same value.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub schedule_clock_scale: Option<u32>,
    /// With --queue: how long a taken event may go without a sign of life
    /// before JetStream hands it to another gateway (running events send
    /// one every third of it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub queue_ack_wait: Duration,
    /// With --queue: how long to keep trying to reach NATS at startup (it
    /// may start after the gateway, as in a fresh install) before giving up.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub queue_connect_timeout: Duration,
    /// MiB the gateway may hold for payloads, queued and retried events and
    /// dead letters (a quarter at most); past it, invocations get 429. The
    /// default suits the gateway pod's 512 MiB limit.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = crate::budget::DEFAULT_MEMORY_BUDGET_MIB as u64,
        value_parser = clap::value_parser!(u64).range(1..=1024 * 1024),
        env = "PORCHLIGHT_MEMORY_BUDGET_MIB"
    )]
    pub memory_budget_mib: u64,
    /// Local mode: where the Secrets and ConfigMaps that functions'
    /// `envValueFrom` and `envFrom` read are, as files DIR/NAME/KEY (the
    /// layout of a mounted Secret). Without it, an `envValueFrom` variable
    /// must be set in the gateway's own environment.
    #[arg(long, value_name = "DIR", env = "PORCHLIGHT_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Run environments with this porchlight-runtime binary instead of the embedded shim.
    #[arg(long, value_name = "PATH")]
    pub runtime_bin: Option<PathBuf>,
    /// Longest environment init before it is killed and replaced.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub init_timeout: Duration,
    /// Name of this gateway in concurrency reports.
    #[arg(long, env = "POD_NAME", default_value = "local")]
    pub gateway_name: String,
    /// Require AWS Signature Version 4 on the Lambda API (Invoke,
    /// GetFunction, ListFunctions), with the access keys in this YAML file:
    /// `keys: [{accessKeyId, secretAccessKey, functions: [NAME|*]}]` and
    /// optionally `regions: [us-east-1]`. Unset: unsigned calls are accepted.
    /// The file is read again when it changes (keys rotate without a
    /// restart); until it exists, every Lambda API call is refused.
    #[arg(long, value_name = "PATH", env = "PORCHLIGHT_AUTH_KEYS")]
    pub auth_keys: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Export OpenTelemetry spans of invocations (receive, queue wait, cold
    /// start, invoke) over OTLP http/protobuf to this endpoint, e.g.
    /// http://127.0.0.1:4318 (a Jaeger or an OpenTelemetry Collector);
    /// `/v1/traces` is added. Unset: no spans are made.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Local mode: no START/END/REPORT line per invocation (functions'
    /// own output is still printed; `--log-type Tail` still has them).
    #[arg(long, short = 'q', env = "PORCHLIGHT_QUIET")]
    pub quiet: bool,
    /// Local mode: do not watch the folder. By default a new, changed or
    /// deleted manifest, or a changed file under a function's `code.path`,
    /// applies at once; with this flag the functions stay as they were at
    /// start (for CI-like runs).
    #[arg(long, env = "PORCHLIGHT_NO_WATCH")]
    pub no_watch: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    porchlight_api::duration::parse_duration(s)
}

impl Cli {
    /// The gateway core settings, with the access keys read from
    /// `--auth-keys` (an unreadable or invalid file is an error).
    pub fn gateway_config(&self) -> Result<GatewayConfig, String> {
        let credentials = match &self.auth_keys {
            Some(path) => Some(Arc::new(KeyFile::open(path)?)),
            None => None,
        };
        Ok(GatewayConfig {
            dispatch: DispatchConfig {
                queue_depth: self.queue_depth,
                cold_start_allowance: self.cold_start_allowance,
                async_queue_depth: self.async_queue_depth,
            },
            async_retry_base: self.async_retry_base,
            async_max_attempts: 3,
            async_max_age: self.async_max_age,
            dead_letter_capacity: self.dead_letters,
            memory_budget: (self.memory_budget_mib as usize).saturating_mul(1024 * 1024),
            gateway_name: self.gateway_name.clone(),
            credentials,
            home_namespace: self.namespace.clone(),
            async_progress_every: (self.queue_ack_wait / 3).max(Duration::from_millis(100)),
        })
    }

    /// Where async events are kept: JetStream with `--queue`, a file with
    /// `--data-dir` (or by default in local mode), else memory.
    pub fn queue_choice(&self) -> Result<QueueChoice, String> {
        if let Some(url) = &self.queue {
            if !url.starts_with("nats://") {
                return Err(format!("--queue {url}: expected nats://HOST:PORT"));
            }
            return Ok(QueueChoice::Nats(url.clone()));
        }
        if let Some(dir) = &self.data_dir {
            return Ok(QueueChoice::File(dir.clone()));
        }
        if self.kubernetes {
            return Ok(QueueChoice::Memory);
        }
        default_data_dir(|name| std::env::var_os(name))
            .map(QueueChoice::File)
            .ok_or_else(|| "no data folder: set --data-dir, XDG_DATA_HOME or HOME".to_string())
    }
}

/// Where async events are kept.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueChoice {
    /// In the gateway's memory (lost with the process).
    Memory,
    /// In `queue.redb` in this folder.
    File(PathBuf),
    /// In NATS JetStream at this URL.
    Nats(String),
}

/// Local mode's data folder: `$XDG_DATA_HOME/porchlight`, else
/// `$HOME/.local/share/porchlight`.
pub fn default_data_dir(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(xdg) = var("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        let xdg = PathBuf::from(xdg);
        if xdg.is_absolute() {
            return Some(xdg.join("porchlight"));
        }
    }
    let home = var("HOME").filter(|v| !v.is_empty())?;
    Some(PathBuf::from(home).join(".local/share/porchlight"))
}

async fn open_queue(cli: &Cli, config: &GatewayConfig) -> Result<Arc<dyn EventQueue>, String> {
    Ok(match cli.queue_choice()? {
        QueueChoice::Memory => Arc::new(LocalQueue::in_memory(config.local_queue_settings())),
        QueueChoice::File(dir) => Arc::new(LocalQueue::open(&dir, config.local_queue_settings())?),
        QueueChoice::Nats(url) => Arc::new(
            connect_nats(
                NatsSettings {
                    url,
                    depth: config.dispatch.async_queue_depth,
                    ack_wait: cli.queue_ack_wait,
                    dead_letter_capacity: config.dead_letter_capacity,
                    dead_letter_bytes: config.memory_budget / 4,
                },
                cli.queue_connect_timeout,
            )
            .await?,
        ),
    })
}

/// Connects to JetStream, trying again every second for `patience`: the
/// server may still be starting (a fresh install starts both at once). The
/// gateway serves nothing meanwhile, so its readiness probe fails.
async fn connect_nats(settings: NatsSettings, patience: Duration) -> Result<NatsQueue, String> {
    let start = tokio::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match NatsQueue::connect(settings.clone()).await {
            Ok(queue) => {
                if attempts > 1 {
                    tracing::info!(url = %settings.url, attempts, "reached NATS");
                }
                return Ok(queue);
            }
            Err(e) if start.elapsed() < patience => {
                tracing::warn!(error = %e, attempts, "NATS is not reachable yet; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(format!(
                    "{e} (tried {attempts} times over {} s; --queue-connect-timeout)",
                    start.elapsed().as_secs()
                ));
            }
        }
    }
}

/// The binary's `main`: the hidden `runtime` subcommand runs the embedded
/// shim, the embedded shim's runtime launcher goes back to the shim library;
/// anything else runs the gateway.
pub fn main_from_args(args: Vec<OsString>) -> ExitCode {
    if args
        .get(1)
        .is_some_and(|a| a == porchlight_runtime::LAUNCH_RUNTIME_ARG)
    {
        return porchlight_runtime::cli_main_from(args);
    }
    if args.get(1).is_some_and(|a| a == "runtime") {
        return run_embedded_shim(args[2..].to_vec());
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => return porchlight_runtime::exit_for_cli_error("porchlight-gateway", &e),
    };
    let endpoint = cli
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty());
    let exporter = match crate::telemetry::init(cli.log_json, endpoint) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("porchlight-gateway: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(endpoint) = endpoint {
        tracing::info!(
            endpoint = %crate::telemetry::traces_url(endpoint),
            "invocation spans are exported over OTLP"
        );
    }
    let code = run(cli);
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    code
}

/// Runs the gateway the command line asks for, until it stops.
fn run(cli: Cli) -> ExitCode {
    if cli.kubernetes {
        return match new_runtime() {
            Ok(runtime) => runtime.block_on(run_kubernetes(cli)),
            Err(code) => code,
        };
    }
    let Some(dir) = cli.local.clone() else {
        eprintln!(
            "porchlight-gateway: no environment source: pass --local DIR (e.g. --local examples/) or --kubernetes"
        );
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    let code_dir = std::env::temp_dir().join(format!("porchlight-{}", std::process::id()));
    let functions = match load_dir(&dir, &code_dir, cli.secrets_dir.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&code_dir);
            eprintln!("porchlight-gateway: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let launcher = match &cli.runtime_bin {
        Some(p) => Launcher::binary(p.clone()),
        None => match Launcher::embedded() {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "porchlight-gateway: cannot find this executable to run environments: {e}"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let runtime = match new_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let local = LocalConfig {
        launcher,
        init_timeout: cli.init_timeout,
        stop_grace: Duration::from_secs(2),
        quiet: cli.quiet,
    };
    let folder = (!cli.no_watch).then(|| FolderSettings {
        dir: dir.clone(),
        code_dir: code_dir.clone(),
        secrets_dir: cli.secrets_dir.clone(),
    });
    let code = runtime.block_on(run_local(cli, dir, functions, local, folder));
    let _ = std::fs::remove_dir_all(&code_dir);
    code
}

fn new_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("porchlight-gateway: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// The AWS CLI's flags for this gateway that work on a machine with no AWS
/// configuration: a region, and no signature unless the gateway wants one
/// (then the caller's configured keys sign).
fn aws_cli_flags(signed: bool) -> &'static str {
    if signed {
        "--region us-east-1"
    } else {
        "--no-sign-request --region us-east-1"
    }
}

fn banner(
    addr: SocketAddr,
    dir: &std::path::Path,
    functions: &[LoadedFunction],
    signed: bool,
) -> String {
    let base = format!("http://{addr}");
    let mut out = format!(
        "porchlight-gateway: local mode, {} function(s) from {} on {base}\n",
        functions.len(),
        dir.display()
    );
    for f in functions {
        let name = &f.key.name;
        out.push_str(&format!(
            "\n  {name} ({}, {}, max {} environments)\n    curl -s {base}/2015-03-31/functions/{name}/invocations -d '{{}}'\n    aws lambda invoke --endpoint-url {base} {} --function-name {name} out.json\n",
            f.spec.runtime,
            f.spec.handler.as_deref().unwrap_or("bootstrap"),
            f.settings.max_scale,
            aws_cli_flags(signed),
        ));
        for t in &f.spec.triggers {
            if t.http.is_some() {
                out.push_str(&format!("    curl -s {base}/http/{name}/\n"));
            }
            if let Some(s3) = &t.s3 {
                out.push_str(&format!(
                    "    curl -s {base}/events/s3 -d '{{\"Records\":[{{\"eventName\":\"ObjectCreated:Put\",\"s3\":{{\"bucket\":{{\"name\":\"{}\"}},\"object\":{{\"key\":\"{}example.txt\",\"size\":5}}}}}}]}}'\n",
                    s3.bucket,
                    s3.prefix.as_deref().unwrap_or("")
                ));
            }
            if let Some(ce) = &t.cloudevents {
                out.push_str(&format!(
                    "    curl -s {base}/events/cloudevents -H 'ce-specversion: 1.0' -H 'ce-id: 1' -H 'ce-type: {}' -H 'ce-source: {}' -H 'content-type: application/json' -d '{{}}'\n",
                    ce.event_type,
                    ce.source.as_deref().unwrap_or("/example")
                ));
            }
            if let Some(q) = &t.queue {
                match (&q.subject, &q.stream) {
                    (Some(subject), _) => out.push_str(&format!(
                        "    nats pub {subject} '{{}}'   (queue trigger: needs --queue nats://HOST:PORT)
"
                    )),
                    (None, Some(stream)) => out.push_str(&format!(
                        "    queue trigger on the stream {stream} (needs --queue nats://HOST:PORT)
"
                    )),
                    (None, None) => {}
                }
            }
        }
    }
    out.push_str(&format!(
        "\n  status: curl -s {base}/v1/functions   metrics: {base}/metrics\n"
    ));
    out
}

/// The banner's line about reloading.
fn watch_line(dir: &std::path::Path, watching: bool) -> String {
    if watching {
        format!(
            "  reload: watching {} (manifests and code.path folders); changes apply on the next invocation (--no-watch to turn off)\n",
            dir.display()
        )
    } else {
        "  reload: off (--no-watch); restart to apply changes\n".to_string()
    }
}

async fn run_local(
    cli: Cli,
    dir: PathBuf,
    functions: Vec<LoadedFunction>,
    local: LocalConfig,
    folder: Option<FolderSettings>,
) -> ExitCode {
    let signed = cli.auth_keys.is_some();
    serve(cli, move |gateway, addr, stop, _shutdown| {
        let mut text = banner(addr, &dir, &functions, signed);
        text.push_str(&format!("  async events: {}\n", gateway.describe_queue()));
        text.push_str(&watch_line(&dir, folder.is_some()));
        let mut source = LocalSource::new(local, functions);
        if let Some(folder) = folder {
            source = source.watching(folder);
        }
        // Before the listener serves its first request.
        source.register(&gateway);
        let source = tokio::spawn(source.run(gateway, stop));
        println!("{text}");
        source
    })
    .await
}

/// Kubernetes mode: environments are the pods of each Function, found by
/// watching the API; the controller scales them from this gateway's reports.
async fn run_kubernetes(cli: Cli) -> ExitCode {
    let client = match kube_client(cli.kubeconfig.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("porchlight-gateway: cannot reach the Kubernetes API: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let config = crate::kubernetes::KubernetesConfig {
        namespaces: crate::kubernetes::Namespaces::new(&cli.namespace, &cli.namespaces),
        environment_port: cli.environment_port,
    };
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed_flag = failed.clone();
    let code = serve(cli, move |gateway, addr, stop, shutdown| {
        gateway.set_ready(false);
        println!(
            "porchlight-gateway: Kubernetes mode, Functions of {} on http://{addr}",
            config.namespaces
        );
        tokio::spawn(async move {
            if let Err(e) = crate::kubernetes::run(client, config, gateway, stop).await {
                // A dead watch must not leave a gateway that routes on stale data.
                tracing::error!(error = %e, "Kubernetes source failed; exiting");
                failed_flag.store(true, std::sync::atomic::Ordering::SeqCst);
                shutdown.cancel();
            }
        })
    })
    .await;
    if failed.load(std::sync::atomic::Ordering::SeqCst) {
        ExitCode::FAILURE
    } else {
        code
    }
}

async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// Serves the gateway with an environment source until SIGTERM/SIGINT,
/// then drains: stop accepting, finish open requests, stop the source.
async fn serve<F>(cli: Cli, start_source: F) -> ExitCode
where
    F: FnOnce(
        Arc<Gateway>,
        SocketAddr,
        CancellationToken,
        CancellationToken,
    ) -> tokio::task::JoinHandle<()>,
{
    let Some(listener) = bind(cli.listen).await else {
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    let internal = match cli.internal_listen {
        Some(at) => match bind(at).await {
            Some(l) => Some(l),
            None => return ExitCode::from(EXIT_BAD_CONFIG),
        },
        None => None,
    };
    let addr = listener.local_addr().unwrap_or(cli.listen);
    let config = match cli.gateway_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("porchlight-gateway: --auth-keys: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let certificate = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => match crate::tls::CertFiles::open(cert, key) {
            Ok(files) => Some(Arc::new(files)),
            Err(e) => {
                eprintln!("porchlight-gateway: --tls-cert/--tls-key: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        _ => None,
    };
    let tls = match certificate.as_ref().map(|c| c.acceptor()).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("porchlight-gateway: TLS: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let keys = config.credentials.clone();
    let queue = match open_queue(&cli, &config).await {
        Ok(q) => q,
        Err(e) => {
            eprintln!("porchlight-gateway: async events: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let gateway = Gateway::with_queue(config, queue);
    tracing::info!(queue = %gateway.describe_queue(), "async events are kept here");
    let shutdown = CancellationToken::new();
    let source_stop = CancellationToken::new();
    // The first SIGTERM or SIGINT drains; a second one exits at once.
    if let Err(e) = porchlight_core::signal::cancel_on_signal(shutdown.clone(), true) {
        eprintln!("porchlight-gateway: cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let reports = tokio::spawn(gateway.run_reports(source_stop.clone()));
    if let Some(certificate) = certificate {
        tokio::spawn(certificate.watch(shutdown.clone()));
    }
    if let Some(keys) = keys {
        if keys.credentials().is_empty() {
            tracing::warn!(path = ?cli.auth_keys, "no access key file yet: every Lambda API call is refused until it appears");
        } else {
            tracing::info!(credentials = ?keys.credentials(), "the Lambda API requires SigV4 signatures");
        }
        tokio::spawn(keys.watch(shutdown.clone()));
    }
    let workers = tokio::spawn(gateway.run_async_workers(shutdown.clone()));
    let clock: Arc<dyn crate::schedule::Clock> = match cli.schedule_clock_scale {
        Some(scale) => {
            tracing::warn!(scale, "schedules read a faster clock (a test setting)");
            Arc::new(crate::schedule::ScaledClock::new(scale))
        }
        None => Arc::new(crate::schedule::SystemClock),
    };
    let schedules = tokio::spawn(crate::schedule::run(
        gateway.clone(),
        clock,
        shutdown.clone(),
    ));
    let queue_triggers = tokio::spawn(crate::queue_source::run(gateway.clone(), shutdown.clone()));
    let source = start_source(gateway.clone(), addr, source_stop.clone(), shutdown.clone());
    let limits = ListenerLimits {
        max_connections: cli.max_connections,
        header_read_timeout: cli.header_read_timeout,
        body_read_timeout: cli.body_read_timeout,
        idle_timeout: cli.idle_timeout,
    };
    // Finish the requests being answered, within a bound.
    let drain = Duration::from_secs(30);
    let (public, internal_server) = match internal {
        Some(internal) => {
            let at = internal.local_addr().unwrap_or(addr);
            tracing::info!(public = %addr, tls = tls.is_some(), internal = %at, "serving");
            let server = crate::listener::serve(
                internal,
                crate::routes::internal_app(gateway.clone()),
                limits,
                None,
                shutdown.clone(),
                drain,
            );
            (
                crate::routes::public_app(gateway.clone()),
                Some(tokio::spawn(server)),
            )
        }
        None => {
            tracing::info!(%addr, tls = tls.is_some(), "serving");
            (crate::routes::app(gateway.clone()), None)
        }
    };
    let server = crate::listener::serve(listener, public, limits, tls, shutdown.clone(), drain);
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => {}
        _ = shutdown.cancelled() => {
            gateway.set_ready(false);
            server.await;
        }
    }
    if let Some(internal) = internal_server {
        let _ = internal.await;
    }
    gateway.begin_shutdown();
    let _ = workers.await;
    let _ = schedules.await;
    let _ = queue_triggers.await;
    let stopped = gateway.finish_async(Duration::from_secs(5)).await;
    match stopped.stored {
        Some(n) if n > 0 && !stopped.durable => tracing::warn!(
            events = n,
            "async events not finished are lost with this process (keep them with --data-dir or --queue)"
        ),
        Some(n) if n > 0 => tracing::info!(
            events = n,
            "async events not finished stay stored and run after the next start"
        ),
        _ => {}
    }
    if stopped.interrupted > 0 {
        if stopped.durable {
            tracing::warn!(
                events = stopped.interrupted,
                "async invocations still running at shutdown were stopped; they stay stored and run again"
            );
        } else {
            tracing::warn!(
                events = stopped.interrupted,
                "async invocations still running at shutdown were abandoned"
            );
        }
    }
    source_stop.cancel();
    let _ = source.await;
    let _ = reports.await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn bind(at: SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(at).await {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("porchlight-gateway: cannot listen on {at}: {e}");
            None
        }
    }
}

/// Builds a gateway with functions registered but no environments, for
/// tests and benchmarks that bring their own.
pub fn gateway_with(functions: &[LoadedFunction], config: GatewayConfig) -> Arc<Gateway> {
    let gw = Gateway::new(config);
    for f in functions {
        gw.registry()
            .upsert(f.key.clone(), f.spec.clone(), f.settings.clone());
    }
    gw.set_ready(true);
    gw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_data_folder_follows_xdg_then_home() {
        assert_eq!(
            default_data_dir(vars(&[("XDG_DATA_HOME", "/x/data"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/x/data/porchlight"))
        );
        // A relative XDG_DATA_HOME is ignored, as the XDG spec says.
        assert_eq!(
            default_data_dir(vars(&[("XDG_DATA_HOME", "rel"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.local/share/porchlight"))
        );
        assert_eq!(default_data_dir(vars(&[])), None);
    }

    #[test]
    fn the_queue_is_chosen_by_flag_then_mode() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("porchlight-gateway").chain(args.iter().copied()))
                .expect("parses")
                .queue_choice()
        };
        assert_eq!(
            parse(&["--kubernetes"]),
            Ok(QueueChoice::Memory),
            "Kubernetes mode keeps its events in memory unless told otherwise"
        );
        assert_eq!(
            parse(&["--kubernetes", "--data-dir", "/d"]),
            Ok(QueueChoice::File("/d".into()))
        );
        assert_eq!(
            parse(&["--local", "x", "--queue", "nats://127.0.0.1:4222"]),
            Ok(QueueChoice::Nats("nats://127.0.0.1:4222".into()))
        );
        assert!(parse(&["--local", "x", "--queue", "http://h"]).is_err());
        assert!(
            Cli::try_parse_from([
                "porchlight-gateway",
                "--queue",
                "nats://h:1",
                "--data-dir",
                "/d"
            ])
            .is_err(),
            "one store at a time"
        );
    }
}
