//! Command-line flags with environment fallbacks, validated before anything
//! starts. `main` turns a [`ConfigError`] into one line on stderr and exit 64.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// `porchlight-controller` flags.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "porchlight-controller",
    version,
    about = "Reconciles Porchlight Functions into Deployments and scales them from gateway concurrency reports"
)]
pub struct Args {
    /// Kubeconfig file (default: in-cluster config, else $KUBECONFIG, else ~/.kube/config).
    #[arg(long, env = "PORCHLIGHT_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use.
    #[arg(long, env = "PORCHLIGHT_KUBE_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,

    /// Namespace the controller runs in: gateway discovery, the lease, the invoke URL.
    #[arg(long, env = "POD_NAMESPACE", default_value = "porchlight-system")]
    pub namespace: String,

    /// Image of the runtime shim for functions without an image of their own.
    #[arg(
        long,
        env = "PORCHLIGHT_RUNTIME_IMAGE",
        default_value = "porchlight/runtime-python:dev"
    )]
    pub runtime_image: String,

    /// Image of the runtime shim with Node.js, for `nodejs*` functions
    /// without an image of their own. It runs its own Node.js whichever of
    /// nodejs18.x, nodejs20.x and nodejs22.x a function declares.
    #[arg(
        long,
        env = "PORCHLIGHT_NODE_RUNTIME_IMAGE",
        default_value = "porchlight/runtime-node:dev"
    )]
    pub node_runtime_image: String,

    /// Gateway to poll, repeatable (e.g. http://127.0.0.1:8080). Without it,
    /// gateway pods are discovered by label in --namespace.
    #[arg(
        long = "gateway-url",
        env = "PORCHLIGHT_GATEWAY_URLS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub gateway_urls: Vec<String>,

    /// Base of the invoke URL in status (default http://porchlight-gateway.<namespace>.svc:8080).
    #[arg(long, env = "PORCHLIGHT_URL_BASE", value_name = "URL")]
    pub url_base: Option<String>,

    /// Address of /live, /ready and /metrics (port 0 picks a free port, logged at start).
    #[arg(
        long,
        env = "PORCHLIGHT_CONTROLLER_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub listen: SocketAddr,

    /// Elect a leader with a Lease, so several replicas are safe.
    #[arg(long, env = "PORCHLIGHT_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Name of the Lease in --namespace.
    #[arg(
        long,
        env = "PORCHLIGHT_LEASE_NAME",
        default_value = "porchlight-controller"
    )]
    pub lease_name: String,

    /// Seconds a leader's lease stays valid without renewal.
    #[arg(long, env = "PORCHLIGHT_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,

    /// Identity in the lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Reconciles running at once.
    #[arg(long, env = "PORCHLIGHT_RECONCILE_CONCURRENCY", default_value_t = 8)]
    pub reconcile_concurrency: u16,

    /// Log format: `json` or `text`. Filter with RUST_LOG.
    #[arg(long, env = "PORCHLIGHT_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Parsed flags.
    pub args: Args,
    /// Invoke URL base, resolved.
    pub url_base: String,
    /// Lease identity, resolved.
    pub identity: String,
    /// Whether logs are JSON.
    pub json_logs: bool,
}

/// Why the configuration was refused, or help/version was asked for.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `--version`: print and exit 0.
    #[error("{0}")]
    Display(String),
    /// Bad configuration: one line, exit 64.
    #[error("{0}")]
    Invalid(String),
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}

impl Config {
    /// Parses and validates flags (and their environment fallbacks).
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args = Args::try_parse_from(args).map_err(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ConfigError::Display(e.to_string())
            }
            _ => ConfigError::Invalid(
                e.to_string()
                    .lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: ")
                    .to_string(),
            ),
        })?;
        Config::validate(args)
    }

    /// Checks what clap can not.
    pub fn validate(args: Args) -> Result<Config, ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !is_dns_label(&args.namespace) {
            return bad(format!(
                "--namespace '{}' is not a valid namespace name",
                args.namespace
            ));
        }
        for (flag, image) in [
            ("--runtime-image", &args.runtime_image),
            ("--node-runtime-image", &args.node_runtime_image),
        ] {
            if image.trim().is_empty() || image.contains(char::is_whitespace) {
                return bad(format!("{flag} '{image}' is not an image reference"));
            }
        }
        if let Some(u) = args.gateway_urls.iter().find(|u| !is_http_url(u)) {
            return bad(format!(
                "--gateway-url '{u}' must start with http:// or https://"
            ));
        }
        if let Some(path) = &args.kubeconfig
            && !path.is_file()
        {
            return bad(format!(
                "--kubeconfig '{}' is not a readable file",
                path.display()
            ));
        }
        if !is_dns_label(&args.lease_name) {
            return bad(format!(
                "--lease-name '{}' is not a valid name",
                args.lease_name
            ));
        }
        if !(5..=300).contains(&args.lease_seconds) {
            return bad(format!(
                "--lease-seconds must be between 5 and 300, got {}",
                args.lease_seconds
            ));
        }
        if args.reconcile_concurrency == 0 {
            return bad("--reconcile-concurrency must be at least 1".to_string());
        }
        let json_logs = match args.log_format.as_str() {
            "json" => true,
            "text" => false,
            other => return bad(format!("--log-format must be json or text, got '{other}'")),
        };
        let url_base = match &args.url_base {
            Some(u) if is_http_url(u) => u.trim_end_matches('/').to_string(),
            Some(u) => {
                return bad(format!(
                    "--url-base '{u}' must start with http:// or https://"
                ));
            }
            None => format!("http://porchlight-gateway.{}.svc:8080", args.namespace),
        };
        let identity = args
            .identity
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| format!("porchlight-controller-{}", std::process::id()));
        Ok(Config {
            args,
            url_base,
            identity,
            json_logs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut args = vec!["porchlight-controller"];
        args.extend_from_slice(extra);
        Config::from_args(args)
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(
            c.url_base,
            "http://porchlight-gateway.porchlight-system.svc:8080"
        );
        assert_eq!(c.args.runtime_image, "porchlight/runtime-python:dev");
        assert_eq!(c.args.node_runtime_image, "porchlight/runtime-node:dev");
        assert!(c.args.leader_election);
    }

    #[test]
    fn plain_process_flags() {
        let c = parse(&[
            "--gateway-url",
            "http://127.0.0.1:8080",
            "--gateway-url",
            "http://127.0.0.1:8081",
            "--listen",
            "127.0.0.1:0",
            "--leader-election",
            "false",
        ])
        .expect("valid");
        assert_eq!(c.args.gateway_urls.len(), 2);
        assert_eq!(c.args.listen.port(), 0);
        assert!(!c.args.leader_election);
    }

    #[test]
    fn bad_values_give_one_line() {
        for bad in [
            &["--listen", "nope"][..],
            &["--gateway-url", "127.0.0.1:8080"],
            &["--namespace", "Not_A_Name"],
            &["--log-format", "xml"],
            &["--kubeconfig", "/does/not/exist"],
            &["--lease-seconds", "1"],
            &["--no-such-flag"],
        ] {
            match parse(bad) {
                Err(ConfigError::Invalid(msg)) => {
                    assert!(!msg.contains('\n'), "{bad:?}: {msg}");
                    assert!(!msg.is_empty());
                }
                other => panic!("{bad:?} should be invalid, got {other:?}"),
            }
        }
    }
}
