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
use porchlight_core::shim::{SHUTDOWN_GRACE_BEYOND_TIMEOUT_SECONDS, var};

use crate::launcher::RuntimeLauncher;

/// Longest function timeout Lambda allows.
const MAX_TIMEOUT_SECONDS: f64 = 900.0;
/// Longest shutdown grace: the one of the longest timeout.
const MAX_SHUTDOWN_GRACE_SECONDS: f64 =
    MAX_TIMEOUT_SECONDS + SHUTDOWN_GRACE_BEYOND_TIMEOUT_SECONDS as f64;

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
    #[arg(long = var::LISTEN.flag, env = var::LISTEN.env, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Loopback address of the Lambda Runtime API served to the runtime
    /// (port 0 = an ephemeral port).
    #[arg(long = var::RUNTIME_API.flag, env = var::RUNTIME_API.env, default_value = "127.0.0.1:0")]
    pub runtime_api: SocketAddr,

    /// Function name, exported as AWS_LAMBDA_FUNCTION_NAME and used in the ARN.
    #[arg(long = var::FUNCTION_NAME.flag, env = var::FUNCTION_NAME.env, default_value = "function")]
    pub function_name: String,

    /// Handler, e.g. `app.lambda_handler`; exported as `_HANDLER`.
    #[arg(long = var::HANDLER.flag, env = var::HANDLER.env)]
    pub handler: Option<String>,

    /// Runtime: `python3.12` (any `python3.x`), `nodejs18.x`, `nodejs20.x`,
    /// `nodejs22.x` or `provided`.
    #[arg(long = var::RUNTIME.flag, env = var::RUNTIME.env)]
    pub runtime: Option<String>,

    /// Directory holding the function's code; the runtime's working directory.
    #[arg(long = var::TASK_ROOT.flag, env = var::TASK_ROOT.env, default_value = "/var/task")]
    pub task_root: PathBuf,

    /// Longest an invocation may run.
    #[arg(long = var::TIMEOUT_SECONDS.flag, env = var::TIMEOUT_SECONDS.env, default_value_t = 3.0)]
    pub timeout_seconds: f64,

    /// Longest the runtime may take from start to its first request for an event.
    #[arg(
        long = var::INIT_TIMEOUT_SECONDS.flag,
        env = var::INIT_TIMEOUT_SECONDS.env,
        default_value_t = 10.0
    )]
    pub init_timeout_seconds: f64,

    /// Memory size reported to the function (AWS_LAMBDA_FUNCTION_MEMORY_SIZE).
    #[arg(long = var::MEMORY_MIB.flag, env = var::MEMORY_MIB.env, default_value_t = 128)]
    pub memory_mib: u32,

    /// Invocations this environment handles at once (Lambda: 1).
    #[arg(long = var::CONCURRENCY.flag, env = var::CONCURRENCY.env, default_value_t = 1)]
    pub concurrency: u32,

    /// Stop (SIGSTOP) the runtime's process group while it is idle, as
    /// Lambda freezes an environment between invocations; it is resumed
    /// before the next event and before a stop. Pods and local environments
    /// get it from the Function's `spec.freeze` (default true).
    #[arg(long = var::FREEZE.flag, env = var::FREEZE.env)]
    pub freeze: bool,

    /// After a failed init, write the init error to --termination-log and exit
    /// with status 1 instead of waiting for an invocation to retry the init
    /// (for pods: the kubelet restarts the container, and the error becomes
    /// the container's termination message).
    #[arg(long = var::EXIT_ON_INIT_ERROR.flag, env = var::EXIT_ON_INIT_ERROR.env)]
    pub exit_on_init_error: bool,

    /// Where --exit-on-init-error writes the init error (Kubernetes'
    /// terminationMessagePath).
    #[arg(
        long = var::TERMINATION_LOG.flag,
        env = var::TERMINATION_LOG.env,
        default_value = "/dev/termination-log",
        value_name = "PATH"
    )]
    pub termination_log: PathBuf,

    /// Identity of this environment in headers and logs (default: the host name).
    #[arg(long = var::ENVIRONMENT_ID.flag, env = var::ENVIRONMENT_ID.env)]
    pub environment_id: Option<String>,

    /// Longest a graceful shutdown waits for in-flight invocations
    /// (default: the timeout plus 2 s, so that they can finish).
    #[arg(
        long = var::SHUTDOWN_GRACE_SECONDS.flag,
        env = var::SHUTDOWN_GRACE_SECONDS.env,
        value_name = "SECONDS"
    )]
    pub shutdown_grace_seconds: Option<f64>,

    /// Python interpreter for the bundled Python bootstrap.
    #[arg(long = var::PYTHON.flag, env = var::PYTHON.env, default_value = "python3")]
    pub python: String,

    /// The bundled Python bootstrap as a file (runtime images ship it at
    /// /var/runtime/bootstrap.py); when the file is missing, the copy built
    /// into this binary runs with `python3 -c`.
    #[arg(
        long = var::PYTHON_BOOTSTRAP.flag,
        env = var::PYTHON_BOOTSTRAP.env,
        default_value = "/var/runtime/bootstrap.py",
        value_name = "PATH"
    )]
    pub python_bootstrap: PathBuf,

    /// Node.js for the bundled Node bootstrap.
    #[arg(long = var::NODE.flag, env = var::NODE.env, default_value = "node")]
    pub node: String,

    /// The bundled Node bootstrap as a file (runtime images ship it at
    /// /var/runtime/bootstrap.js); when the file is missing, the copy built
    /// into this binary runs with `node -e`.
    #[arg(
        long = var::NODE_BOOTSTRAP.flag,
        env = var::NODE_BOOTSTRAP.env,
        default_value = "/var/runtime/bootstrap.js",
        value_name = "PATH"
    )]
    pub node_bootstrap: PathBuf,

    /// Write logs for a terminal (local mode): a log record's lines joined
    /// with `\r` (Lambda's way for CloudWatch) as separate lines, and
    /// START/END/REPORT lines prefixed with the function's name.
    #[arg(long = var::LOCAL_LOGS.flag, env = var::LOCAL_LOGS.env)]
    pub local_logs: bool,

    /// No START/END/REPORT lines on stdout (a log tail asked for by the
    /// caller still has them).
    #[arg(long = var::QUIET.flag, env = var::QUIET.env)]
    pub quiet: bool,

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

/// The Node.js runtimes, as Lambda names them.
pub const NODE_RUNTIMES: [&str; 3] = ["nodejs18.x", "nodejs20.x", "nodejs22.x"];

/// Which language runtime the environment runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `python3.x`: the bundled Python bootstrap unless a command is given.
    Python(String),
    /// `nodejs18.x`, `nodejs20.x`, `nodejs22.x`: the bundled Node bootstrap
    /// unless a command is given.
    Node(String),
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
    /// Starts the runtime through this binary so that it dies with the shim
    /// (see `launcher.rs`); `None` spawns it directly, for a shim run inside
    /// a process whose binary does not know the launcher (tests).
    pub runtime_launcher: Option<RuntimeLauncher>,
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
                var::FUNCTION_NAME.flag,
                "1 to 64 characters from [A-Za-z0-9_-]",
            ));
        }
        if !self.runtime_api.ip().is_loopback() {
            return Err(invalid(var::RUNTIME_API.flag, "must be a loopback address"));
        }
        let timeout = seconds(var::TIMEOUT_SECONDS.flag, self.timeout_seconds)?;
        let init_timeout = seconds(var::INIT_TIMEOUT_SECONDS.flag, self.init_timeout_seconds)?;
        let shutdown_grace = match self.shutdown_grace_seconds {
            None => timeout + Duration::from_secs(u64::from(SHUTDOWN_GRACE_BEYOND_TIMEOUT_SECONDS)),
            Some(grace)
                if grace.is_finite() && (0.0..=MAX_SHUTDOWN_GRACE_SECONDS).contains(&grace) =>
            {
                Duration::from_secs_f64(grace)
            }
            Some(_) => {
                return Err(invalid(
                    var::SHUTDOWN_GRACE_SECONDS.flag,
                    "must be within 0..=902",
                ));
            }
        };
        if !(128..=10_240).contains(&self.memory_mib) {
            return Err(invalid(var::MEMORY_MIB.flag, "must be within 128..=10240"));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(invalid(var::CONCURRENCY.flag, "must be within 1..=1024"));
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
                    var::RUNTIME.flag,
                    "required (python3.x, nodejs18.x, nodejs20.x, nodejs22.x or provided) \
                     unless a command follows `--`",
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
            Some(r) if NODE_RUNTIMES.contains(&r) => RuntimeKind::Node(r.to_owned()),
            Some(r) => {
                return Err(invalid(
                    var::RUNTIME.flag,
                    format!(
                        "unknown runtime {r:?}; expected python3.x, nodejs18.x, nodejs20.x, \
                         nodejs22.x or provided"
                    ),
                ));
            }
        };
        if let Some(handler) = &self.handler
            && (handler.is_empty() || handler.len() > 128 || handler.contains(char::is_whitespace))
        {
            return Err(invalid(
                var::HANDLER.flag,
                "1 to 128 characters without whitespace",
            ));
        }
        if self.command.is_empty() {
            let needs = match runtime {
                RuntimeKind::Python(_) => {
                    Some("the Python bootstrap needs a handler like module.function")
                }
                RuntimeKind::Node(_) => {
                    Some("the Node bootstrap needs a handler like index.handler")
                }
                RuntimeKind::Provided | RuntimeKind::Image => None,
            };
            if let Some(why) = needs
                && !self.handler.as_deref().is_some_and(|h| h.contains('.'))
            {
                return Err(invalid(var::HANDLER.flag, why));
            }
        }
        if self.command.first().is_some_and(String::is_empty) {
            return Err(invalid("command", "the program after `--` is empty"));
        }
        if self.python.is_empty() {
            return Err(invalid(var::PYTHON.flag, "must not be empty"));
        }
        if self.node.is_empty() {
            return Err(invalid(var::NODE.flag, "must not be empty"));
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
                var::ENVIRONMENT_ID.flag,
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
            runtime_launcher: None,
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
            RuntimeKind::Python(version) | RuntimeKind::Node(version) => {
                format!("AWS_Lambda_{version}")
            }
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
    use std::ffi::OsStr;

    use clap::CommandFactory as _;
    use porchlight_core::ShimSettings;
    use porchlight_core::shim::RESERVED_ENV_PREFIX;

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
    fn node_runtimes_need_a_handler() {
        for runtime in NODE_RUNTIMES {
            let err = parse(&["--runtime", runtime]).unwrap_err();
            assert!(err.contains("--handler"), "{err}");
            let ok = parse(&["--runtime", runtime, "--handler", "src/app.handler"]).unwrap();
            assert_eq!(ok.runtime, RuntimeKind::Node(runtime.into()));
            assert_eq!(ok.execution_env(), format!("AWS_Lambda_{runtime}"));
        }
        // A command replaces the bootstrap, and with it the need of a handler.
        let ok = parse(&["--runtime", "nodejs20.x", "--", "node", "my-ric.js"]).unwrap();
        assert_eq!(ok.runtime, RuntimeKind::Node("nodejs20.x".into()));
        for unknown in ["nodejs16.x", "nodejs24.x", "nodejs20", "node20"] {
            let err = parse(&["--runtime", unknown, "--handler", "a.b"]).unwrap_err();
            assert!(
                err.contains("unknown runtime") && err.contains("nodejs22.x"),
                "{err}"
            );
        }
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
        assert_eq!(s.shutdown_grace, Duration::from_secs(5));
        assert_eq!(s.config.memory_mib, 128);
        assert_eq!(s.timeout_message(), "Task timed out after 3.00 seconds");
        assert!(s.function_arn.ends_with(":000000000000:function:function"));
    }

    #[test]
    fn every_shim_setting_is_declared_with_core_s_names() {
        let command = Config::command();
        for v in var::ALL {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(v.flag));
            let arg = arg.unwrap_or_else(|| panic!("--{} is not declared", v.flag));
            assert_eq!(arg.get_env(), Some(OsStr::new(v.env)), "--{}", v.flag);
        }
        // No shim variable outside core's table.
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env().and_then(OsStr::to_str)
                && env.starts_with(RESERVED_ENV_PREFIX)
            {
                assert!(
                    var::ALL
                        .iter()
                        .any(|v| v.env == env && arg.get_long() == Some(v.flag)),
                    "{env} is not in porchlight_core::shim::var"
                );
            }
        }
    }

    /// A value for every setting the shim declares, none of them a default.
    fn every_setting() -> ShimSettings {
        ShimSettings {
            listen: Some("127.0.0.1:9123".into()),
            function_name: Some("hello-fn".into()),
            handler: Some("app.handler".into()),
            runtime: Some("python3.12".into()),
            task_root: Some("/srv/task".into()),
            timeout_seconds: Some(7),
            memory_mib: Some(256),
            concurrency: Some(4),
            freeze: true,
            exit_on_init_error: true,
            environment_id: Some("env-42".into()),
            shutdown_grace_seconds: Some(11),
            local_logs: true,
            quiet: true,
        }
    }

    #[test]
    fn shim_settings_as_flags_parse_to_their_values() {
        // Naming every field makes a new setting in core fail to compile here.
        let ShimSettings {
            listen,
            function_name,
            handler,
            runtime,
            task_root,
            timeout_seconds,
            memory_mib,
            concurrency,
            freeze,
            exit_on_init_error,
            environment_id,
            shutdown_grace_seconds,
            local_logs,
            quiet,
        } = every_setting();
        let argv =
            std::iter::once("porchlight-runtime".to_owned()).chain(every_setting().to_args());
        let config = Config::try_parse_from(argv).expect("to_args parses");
        assert_eq!(Some(config.listen.to_string()), listen);
        assert_eq!(Some(config.function_name), function_name);
        assert_eq!(config.handler, handler);
        assert_eq!(config.runtime, runtime);
        assert_eq!(Some(config.task_root), task_root.map(PathBuf::from));
        assert_eq!(Some(config.timeout_seconds), timeout_seconds.map(f64::from));
        assert_eq!(Some(config.memory_mib), memory_mib);
        assert_eq!(Some(config.concurrency), concurrency);
        assert_eq!(config.freeze, freeze);
        assert_eq!(config.exit_on_init_error, exit_on_init_error);
        assert_eq!(config.environment_id, environment_id);
        assert_eq!(
            config.shutdown_grace_seconds,
            shutdown_grace_seconds.map(f64::from)
        );
        assert_eq!(config.local_logs, local_logs);
        assert_eq!(config.quiet, quiet);
    }

    #[test]
    fn the_shutdown_grace_follows_the_timeout_unless_set() {
        let s = parse(&["--runtime", "provided", "--timeout-seconds", "60"]).unwrap();
        assert_eq!(s.shutdown_grace, Duration::from_secs(62));
        let s = parse(&[
            "--runtime",
            "provided",
            "--timeout-seconds",
            "60",
            "--shutdown-grace-seconds",
            "0",
        ])
        .unwrap();
        assert_eq!(s.shutdown_grace, Duration::ZERO);
        assert!(parse(&["--runtime", "provided", "--shutdown-grace-seconds", "-1"]).is_err());
    }

    /// Marks the run of [`parse_in_child`] in a child test process.
    const CHILD_CASE: &str = "SHIM_CONFIG_TEST_CASE";

    /// The `Config` (as `Debug`) that a fresh process with only `env` parses
    /// from `args`. The environment is the child's own, so the test's does
    /// not leak in and no variable is set in this process.
    fn config_in_child(args: &[String], env: &[(&str, String)]) -> String {
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "config::tests::parse_in_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env(CHILD_CASE, args.join("\n"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        stdout
            .lines()
            .find_map(|l| l.split_once("CONFIG ").map(|(_, config)| config))
            .unwrap_or_else(|| panic!("no config in {stdout}"))
            .to_owned()
    }

    #[test]
    #[ignore = "run by config_in_child in a process of its own"]
    fn parse_in_child() {
        let Ok(args) = std::env::var(CHILD_CASE) else {
            return;
        };
        let argv =
            std::iter::once("porchlight-runtime").chain(args.split('\n').filter(|a| !a.is_empty()));
        let config = Config::try_parse_from(argv).expect("parses");
        println!("CONFIG {config:?}");
    }

    #[test]
    fn shim_settings_parse_the_same_as_flags_and_as_environment() {
        let settings = every_setting();
        let from_args = config_in_child(&settings.to_args(), &[]);
        let from_env = config_in_child(&[], &settings.to_env());
        assert_eq!(from_args, from_env);
        let defaults = config_in_child(&[], &[]);
        assert_ne!(from_env, defaults, "the environment was not read");
        assert!(
            from_env.contains(r#"function_name: "hello-fn""#),
            "{from_env}"
        );
    }
}
