//! Command-line flags, validated into a [`RunConfig`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::charts::DEFAULT_FONT;
use crate::error::{Error, Result};
use crate::profile::{Profile, parse_duration};
use crate::progress::ProgressMode;
use crate::run::{Load, RunConfig};
use crate::scale::{GatewayObserver, KubernetesObserver, ScaleObserver};
use crate::simulate::SimulateArgs;
use crate::simulate::live::ReplayArgs;
use crate::workload::WeightedFunction;

const AFTER_HELP: &str = "\
LOAD PROFILES (for --concurrency and --rate):
  50                   a constant level for the whole --duration
  0:5s,50:20s,0:30s    stages LEVEL:DURATION in order (a burst 0 -> 50 -> 0)
  10..100:30s          a linear ramp from 10 to 100 over 30 s
  Durations take ms, s, m or h; a bare number is seconds. --duration cuts a
  longer profile short.

  --concurrency is a closed loop: N callers, each sending its next request
  when the previous one is answered. --rate is an open loop: requests go out
  at their scheduled times whether or not earlier ones were answered, and
  latency counts from the scheduled time, so a stalled gateway shows up as
  latency (not as a lower rate). Requests due while --max-in-flight are
  outstanding are not sent and are counted as dropped by the client.

REPORT (in --out):
  invocations.csv   one row per invocation: times, latency, status, outcome,
                    cold start, init duration, environment, request id
  scale.csv         one row per function per second: offered load, desired,
                    ready, in flight, queued environments
  summary.json      the numbers printed at the end
  latency.png       latency over time, cold starts marked
  environments.png  ready/desired environments against offered load

SIGNED INVOKES:
  With AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set (and AWS_REGION, else
  us-east-1), every invoke is signed with SigV4 as the AWS CLI signs it: what
  a gateway with --auth-keys (the deploy/ default) requires.
  --no-sign-request sends them unsigned.

SCALE SOURCES (--scale-source):
  gateway      GET --stats-url (default TARGET/v1/functions) once a second;
               with several gateway replicas each sample is the replica that
               answered
  kubernetes   LIST the Function objects in --namespace once a second and read
               status.desiredReplicas (the autoscaler's decision) and
               status.readyReplicas; the client comes from KUBECONFIG,
               ~/.kube/config or the in-cluster service account, and needs
               list on functions.porchlight.dev in that namespace
  none         no environment counts

EXAMPLES:
  porchlight-load --function hello --concurrency 0:5s,50:20s,0:5s --out report
  porchlight-load --function hello=3 --function users --rate 200 --duration 60s
  porchlight-load --function hello --rate 0:5s,100:60s,0:5s \\
      --scale-source kubernetes --namespace functions";

/// Drives invocations through a Porchlight gateway and reports latency, cold
/// starts and how the functions scaled.
#[derive(Debug, Parser)]
#[command(
    name = "porchlight-load",
    version,
    after_help = AFTER_HELP,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Instead of driving a gateway, replay a trace through keep-alive policies.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Gateway base URL (the Lambda Invoke API is under /2015-03-31/functions/).
    #[arg(
        long,
        env = "PORCHLIGHT_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub target: String,

    /// Function to invoke, optionally with a relative weight: NAME or NAME=WEIGHT. Repeat for several.
    #[arg(
        short,
        long = "function",
        value_name = "NAME[=WEIGHT]",
        required = true
    )]
    pub functions: Vec<String>,

    /// Closed loop: concurrent callers, as a level or a profile (see below).
    #[arg(
        short,
        long,
        value_name = "PROFILE",
        conflicts_with = "rate",
        required_unless_present = "rate"
    )]
    pub concurrency: Option<String>,

    /// Open loop: arrival rate in requests per second, as a level or a profile (see below).
    #[arg(short, long, value_name = "PROFILE")]
    pub rate: Option<String>,

    /// Length of the load for a constant level; upper bound for a profile.
    #[arg(short, long, value_parser = duration)]
    pub duration: Option<Duration>,

    /// Size of the JSON event sent with each invocation, in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,

    /// Per-request timeout (the whole response).
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub timeout: Duration,

    /// Open loop: most requests outstanding at once; requests due beyond it are dropped by the client and counted.
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,

    /// Folder for the report.
    #[arg(short, long, default_value = "porchlight-load-report")]
    pub out: PathBuf,

    /// Where environment counts come from (see below).
    #[arg(long, value_enum, default_value_t = ScaleSource::Gateway)]
    pub scale_source: ScaleSource,

    /// With --scale-source gateway: URL of the gateway's function list [default: TARGET/v1/functions].
    #[arg(long)]
    pub stats_url: Option<String>,

    /// With --scale-source kubernetes: namespace of the Function objects.
    #[arg(long, env = "PORCHLIGHT_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// After the load, keep watching environments until all are at zero, at most this long.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub observe_after: Duration,

    /// Ready environments that count as "scaled up" [default: the peak observed].
    #[arg(long)]
    pub scale_target: Option<u32>,

    /// TrueType font for chart text (charts have no text if it is missing).
    #[arg(long, default_value = DEFAULT_FONT)]
    pub font: PathBuf,

    /// No live progress.
    #[arg(short, long)]
    pub quiet: bool,

    /// Send invokes unsigned even when AWS credentials are set (by default
    /// they are signed with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and
    /// AWS_REGION, as every AWS client does).
    #[arg(long)]
    pub no_sign_request: bool,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Replay a production trace through fixed and adaptive keep-alive
    /// policies and report cold starts against wasted memory-time.
    Simulate(SimulateArgs),
    /// Replay a slice of a trace against a running gateway, time compressed,
    /// and compare its cold starts with the simulator's.
    Replay(ReplayArgs),
}

/// Where environment counts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScaleSource {
    /// Poll the gateway's GET /v1/functions every second.
    Gateway,
    /// List the Function objects every second and read their status.
    Kubernetes,
    /// Do not observe scale.
    None,
}

fn duration(text: &str) -> std::result::Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

impl Args {
    /// Validates the flags into a run configuration and a scale observer.
    pub fn into_config(self) -> Result<(RunConfig, Option<Arc<dyn ScaleObserver>>)> {
        let functions = self
            .functions
            .iter()
            .map(|f| WeightedFunction::parse(f))
            .collect::<Result<Vec<_>>>()?;
        let bound = |profile: Profile| match self.duration {
            Some(limit) => profile.truncated(limit),
            None => profile,
        };
        let load = match (&self.concurrency, &self.rate) {
            (Some(c), None) => Load::Concurrency(bound(Profile::parse(c, self.duration)?)),
            (None, Some(r)) => Load::Rate(bound(Profile::parse(r, self.duration)?)),
            _ => {
                return Err(Error::Config(
                    "give exactly one of --concurrency and --rate".into(),
                ));
            }
        };
        if load.profile().total().is_zero() {
            return Err(Error::Config("the load lasts zero seconds".into()));
        }
        if !(self.target.starts_with("http://") || self.target.starts_with("https://")) {
            return Err(Error::Config(format!(
                "--target `{}` must start with http://",
                self.target
            )));
        }
        let target = self.target.trim_end_matches('/').to_string();
        let observer: Option<Arc<dyn ScaleObserver>> = match self.scale_source {
            ScaleSource::Gateway => {
                let url = self
                    .stats_url
                    .clone()
                    .unwrap_or_else(|| format!("{target}/v1/functions"));
                Some(Arc::new(GatewayObserver::new(url)?))
            }
            ScaleSource::Kubernetes => {
                if self.namespace.is_empty() {
                    return Err(Error::Config("--namespace must not be empty".into()));
                }
                Some(Arc::new(KubernetesObserver::new(self.namespace.clone())))
            }
            ScaleSource::None => None,
        };
        let config = RunConfig {
            target,
            functions,
            load,
            payload_size: self.payload_size,
            timeout: self.timeout,
            max_in_flight: self.max_in_flight,
            out: self.out,
            observe_after: self.observe_after,
            scale_target: self.scale_target,
            font: self.font,
            progress: if self.quiet {
                ProgressMode::Quiet
            } else {
                ProgressMode::Auto
            },
            signer: if self.no_sign_request {
                None
            } else {
                crate::sign::Signer::from_env()
            },
        };
        Ok((config, observer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(RunConfig, Option<Arc<dyn ScaleObserver>>)> {
        let mut all = vec!["porchlight-load"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)
            .map_err(|e| Error::Config(e.to_string()))?
            .into_config()
    }

    #[test]
    fn burst_profile_with_bound() {
        let (config, observer) = parse(&[
            "-f",
            "hello",
            "--concurrency",
            "0:5s,50:20s,0:30s",
            "--duration",
            "10s",
        ])
        .unwrap();
        assert_eq!(config.load.mode(), "concurrency");
        assert_eq!(config.load.profile().total(), Duration::from_secs(10));
        assert_eq!(
            observer.unwrap().source(),
            "gateway http://127.0.0.1:8080/v1/functions"
        );
    }

    #[test]
    fn rejects_missing_or_conflicting_modes() {
        assert!(parse(&["-f", "hello"]).is_err());
        assert!(parse(&["-f", "hello", "-c", "5", "-r", "5", "-d", "1s"]).is_err());
        assert!(parse(&["-f", "hello", "-r", "5"]).is_err());
        assert!(
            parse(&[
                "-f",
                "hello",
                "-r",
                "5",
                "-d",
                "1s",
                "--target",
                "localhost"
            ])
            .is_err()
        );
        let (config, observer) = parse(&[
            "-f",
            "a=2",
            "-f",
            "b",
            "-r",
            "5",
            "-d",
            "1s",
            "--scale-source",
            "none",
        ])
        .unwrap();
        assert_eq!(config.functions.len(), 2);
        assert!(observer.is_none());
    }

    #[test]
    fn kubernetes_scale_source() {
        let with_namespace = |ns: &'static str| {
            parse(&[
                "-f",
                "hello",
                "-r",
                "5",
                "-d",
                "1s",
                "--scale-source",
                "kubernetes",
                "--namespace",
                ns,
            ])
        };
        let (_, observer) = with_namespace("x").unwrap();
        assert_eq!(observer.unwrap().source(), "Function status in namespace x");
        assert!(with_namespace("").is_err());
    }
}
