//! Command line and environment configuration of the shim.
//!
//! Every flag can also be set through an environment variable (clap's `env`),
//! so that a pod spec or the local-mode gateway can configure the shim either
//! way. [`Config::validate`] checks the whole configuration before any port is
//! bound; a bad configuration ends the process with exit code 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Longest function timeout Lambda allows.
const MAX_TIMEOUT_SECONDS: f64 = 900.0;

/// Configuration of one execution environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "porchlight-runtime",
    version,
    about = "Turns a process into a Lambda execution environment: init once, then invocations.",
    after_help = "Anything after `--` replaces the runtime command, e.g. \
                  `-- python3 -m awslambdaric app.handler` or `-- ./bootstrap`."
)]
pub struct Config {
    /// Address of the invoke endpoint and of /live, /ready, /metrics.
    #[arg(long, env = "PORCHLIGHT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Loopback address of the Lambda Runtime API served to the runtime
    /// (port 0 = an ephemeral port).
    #[arg(long, env = "PORCHLIGHT_RUNTIME_API", default_value = "127.0.0.1:0")]
    pub runtime_api: SocketAddr,

    /// Function name, exported as AWS_LAMBDA_FUNCTION_NAME and used in the ARN.
    #[arg(long, env = "PORCHLIGHT_FUNCTION_NAME", default_value = "function")]
    pub function_name: String,

    /// Handler, e.g. `app.lambda_handler`; exported as `_HANDLER`.
    #[arg(long, env = "PORCHLIGHT_HANDLER")]
    pub handler: Option<String>,

    /// Runtime: `python3.12` (any `python3.x`) or `provided`.
    #[arg(long, env = "PORCHLIGHT_RUNTIME")]
    pub runtime: Option<String>,

    /// Directory holding the function's code; the runtime's working directory.
    #[arg(long, env = "PORCHLIGHT_TASK_ROOT", default_value = "/var/task")]
    pub task_root: PathBuf,

    /// Longest an invocation may run.
    #[arg(long, env = "PORCHLIGHT_TIMEOUT_SECONDS", default_value_t = 3.0)]
    pub timeout_seconds: f64,

    /// Longest the runtime may take from start to its first request for an event.
    #[arg(long, env = "PORCHLIGHT_INIT_TIMEOUT_SECONDS", default_value_t = 10.0)]
    pub init_timeout_seconds: f64,

    /// Memory size reported to the function (AWS_LAMBDA_FUNCTION_MEMORY_SIZE).
    #[arg(long, env = "PORCHLIGHT_MEMORY_MIB", default_value_t = 128)]
    pub memory_mib: u32,

    /// Invocations this environment handles at once (Lambda: 1).
    #[arg(long, env = "PORCHLIGHT_CONCURRENCY", default_value_t = 1)]
    pub concurrency: u32,

    /// Stop (SIGSTOP) the runtime's process group while it is idle.
    #[arg(long, env = "PORCHLIGHT_FREEZE")]
    pub freeze: bool,

    /// After a failed init, write the init error to --termination-log and exit
    /// with status 1 instead of waiting for an invocation to retry the init
    /// (for pods: the kubelet restarts the container, and the error becomes
    /// the container's termination message).
    #[arg(long, env = "PORCHLIGHT_EXIT_ON_INIT_ERROR")]
    pub exit_on_init_error: bool,

    /// Where --exit-on-init-error writes the init error (Kubernetes'
    /// terminationMessagePath).
    #[arg(
        long,
        env = "PORCHLIGHT_TERMINATION_LOG",
        default_value = "/dev/termination-log",
        value_name = "PATH"
    )]
    pub termination_log: PathBuf,

    /// Identity of this environment in headers and logs (default: the host name).
    #[arg(long, env = "PORCHLIGHT_ENVIRONMENT_ID")]
    pub environment_id: Option<String>,

    /// Longest a graceful shutdown waits for in-flight invocations.
    #[arg(
        long,
        env = "PORCHLIGHT_SHUTDOWN_GRACE_SECONDS",
        default_value_t = 10.0
    )]
    pub shutdown_grace_seconds: f64,

    /// Python interpreter for the bundled Python bootstrap.
    #[arg(long, env = "PORCHLIGHT_PYTHON", default_value = "python3")]
    pub python: String,

    /// The bundled Python bootstrap as a file (runtime images ship it at
    /// /var/runtime/bootstrap.py); when the file is missing, the copy built
    /// into this binary runs with `python3 -c`.
    #[arg(
        long,
        env = "PORCHLIGHT_PYTHON_BOOTSTRAP",
        default_value = "/var/runtime/bootstrap.py",
        value_name = "PATH"
    )]
    pub python_bootstrap: PathBuf,

    /// Region exported as AWS_REGION / AWS_DEFAULT_REGION and used in the ARN.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,

    /// Runtime command that replaces the default one for `--runtime`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Why a configuration cannot run. Displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// Which language runtime the environment runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `python3.x`: the bundled Python bootstrap unless a command is given.
    Python(String),
    /// `provided*`: `<task-root>/bootstrap` unless a command is given.
    Provided,
    /// No `--runtime`, only a command.
    Image,
}

/// The validated configuration, with derived values computed once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    pub runtime: RuntimeKind,
    pub environment_id: String,
    pub timeout: Duration,
    pub init_timeout: Duration,
    pub shutdown_grace: Duration,
    pub concurrency: usize,
    pub function_arn: String,
}

impl Config {
    /// Checks everything that can be checked before binding a port.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let name = &self.function_name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "function-name",
                "1 to 64 characters from [A-Za-z0-9_-]",
            ));
        }
        if !self.runtime_api.ip().is_loopback() {
            return Err(invalid("runtime-api", "must be a loopback address"));
        }
        let timeout = seconds("timeout-seconds", self.timeout_seconds)?;
        let init_timeout = seconds("init-timeout-seconds", self.init_timeout_seconds)?;
        let shutdown_grace = if self.shutdown_grace_seconds.is_finite()
            && (0.0..=MAX_TIMEOUT_SECONDS).contains(&self.shutdown_grace_seconds)
        {
            Duration::from_secs_f64(self.shutdown_grace_seconds)
        } else {
            return Err(invalid("shutdown-grace-seconds", "must be within 0..=900"));
        };
        if !(128..=10_240).contains(&self.memory_mib) {
            return Err(invalid("memory-mib", "must be within 128..=10240"));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(invalid("concurrency", "must be within 1..=1024"));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid("region", "must look like us-east-1"));
        }
        let runtime = match self.runtime.as_deref() {
            None | Some("") if !self.command.is_empty() => RuntimeKind::Image,
            None | Some("") => {
                return Err(invalid(
                    "runtime",
                    "required (python3.x or provided) unless a command follows `--`",
                ));
            }
            Some(r) if r == "provided" || r.starts_with("provided.") => RuntimeKind::Provided,
            Some(r)
                if r.strip_prefix("python3.").is_some_and(|minor| {
                    !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit())
                }) =>
            {
                RuntimeKind::Python(r.to_owned())
            }
            Some(r) => {
                return Err(invalid(
                    "runtime",
                    format!("unknown runtime {r:?}; expected python3.x or provided"),
                ));
            }
        };
        if let Some(handler) = &self.handler
            && (handler.is_empty() || handler.len() > 128 || handler.contains(char::is_whitespace))
        {
            return Err(invalid("handler", "1 to 128 characters without whitespace"));
        }
        if matches!(runtime, RuntimeKind::Python(_)) && self.command.is_empty() {
            match &self.handler {
                Some(h) if h.contains('.') => {}
                _ => {
                    return Err(invalid(
                        "handler",
                        "the Python bootstrap needs a handler like module.function",
                    ));
                }
            }
        }
        if self.command.first().is_some_and(String::is_empty) {
            return Err(invalid("command", "the program after `--` is empty"));
        }
        if self.python.is_empty() {
            return Err(invalid("python", "must not be empty"));
        }
        let environment_id = match &self.environment_id {
            Some(id) => id.clone(),
            None => default_environment_id(),
        };
        if environment_id.is_empty()
            || environment_id.len() > 128
            || !environment_id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "environment-id",
                "1 to 128 visible ASCII characters",
            ));
        }
        let function_arn = format!(
            "arn:aws:lambda:{}:000000000000:function:{}",
            self.region, self.function_name
        );
        Ok(Settings {
            runtime,
            environment_id,
            timeout,
            init_timeout,
            shutdown_grace,
            concurrency: self.concurrency as usize,
            function_arn,
            config: self,
        })
    }
}

fn seconds(flag: &'static str, value: f64) -> Result<Duration, ConfigError> {
    if value.is_finite() && value > 0.0 && value <= MAX_TIMEOUT_SECONDS {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(invalid(flag, "must be more than 0 and at most 900"))
    }
}

/// The host name (a pod's name in Kubernetes), else a generated id.
fn default_environment_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("env-{}", &id[..12])
        })
}

impl Settings {
    /// `AWS_EXECUTION_ENV` for the runtime.
    pub fn execution_env(&self) -> String {
        match &self.runtime {
            RuntimeKind::Python(version) => format!("AWS_Lambda_{version}"),
            RuntimeKind::Provided | RuntimeKind::Image => "AWS_Lambda_Image".to_owned(),
        }
    }

    /// The Lambda-style message of a timed-out invocation.
    pub fn timeout_message(&self) -> String {
        format!(
            "Task timed out after {:.2} seconds",
            self.timeout.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["porchlight-runtime"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn python_runtime_needs_a_handler() {
        let err = parse(&["--runtime", "python3.12"]).unwrap_err();
        assert!(err.contains("--handler"), "{err}");
        let ok = parse(&["--runtime", "python3.12", "--handler", "app.handler"]).unwrap();
        assert_eq!(ok.runtime, RuntimeKind::Python("python3.12".into()));
        assert_eq!(ok.execution_env(), "AWS_Lambda_python3.12");
    }

    #[test]
    fn a_trailing_command_replaces_the_runtime() {
        let ok = parse(&["--", "./bootstrap", "arg"]).unwrap();
        assert_eq!(ok.runtime, RuntimeKind::Image);
        assert_eq!(ok.config.command, vec!["./bootstrap", "arg"]);
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--runtime", "node20"][..],
            &["--runtime", "provided", "--timeout-seconds", "0"],
            &["--runtime", "provided", "--concurrency", "0"],
            &["--runtime", "provided", "--memory-mib", "64"],
            &["--runtime", "provided", "--runtime-api", "0.0.0.0:9001"],
            &["--runtime", "provided", "--function-name", "a b"],
            &[],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }

    #[test]
    fn defaults_follow_lambda() {
        let s = parse(&["--runtime", "provided", "--environment-id", "env-1"]).unwrap();
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(s.init_timeout, Duration::from_secs(10));
        assert_eq!(s.concurrency, 1);
        assert_eq!(s.config.memory_mib, 128);
        assert_eq!(s.timeout_message(), "Task timed out after 3.00 seconds");
        assert!(s.function_arn.ends_with(":000000000000:function:function"));
    }
}
