//! The runtime shim's settings, as one typed struct.
//!
//! The shim (`porchlight-runtime`) reads every setting from a flag or from an
//! environment variable of the same meaning. Pods get environment variables
//! (the controller renders [`ShimSettings::to_env`]); local environments get
//! flags (the local-mode gateway renders [`ShimSettings::to_args`]). The shim's
//! own command line is declared with the names in [`var`], so the three
//! cannot drift apart.

/// One setting: its long flag (without `--`) and its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShimVar {
    /// The long flag, without the leading `--`.
    pub flag: &'static str,
    /// The environment variable.
    pub env: &'static str,
}

/// Environment variables starting with this are the shim's; a function's own
/// variables may not use it.
pub const RESERVED_ENV_PREFIX: &str = "PORCHLIGHT_";

/// The log filter of the shim and of the gateway that embeds it (tracing's
/// `EnvFilter` syntax, e.g. `debug` or `porchlight_runtime=debug`).
pub const LOG_FILTER_ENV: &str = "PORCHLIGHT_LOG";

/// How much longer than the function's timeout a graceful stop of an
/// environment waits for its invocations in flight: enough for one that
/// started just before the stop to end, with its answer or its timeout.
pub const SHUTDOWN_GRACE_BEYOND_TIMEOUT_SECONDS: u32 = 2;

/// What the shim takes after its drain: stopping the runtime (SIGTERM, then
/// SIGKILL 2 s later) and letting the last answers reach their callers
/// (1 s). Whoever stops an environment (the kubelet through
/// `terminationGracePeriodSeconds`, the local gateway) waits at least the
/// shutdown grace plus this before it kills the shim.
pub const SHUTDOWN_STOP_SECONDS: u32 = 3;

/// The shutdown grace of an environment of a function with this timeout.
pub fn shutdown_grace_seconds(timeout_seconds: u32) -> u32 {
    timeout_seconds.saturating_add(SHUTDOWN_GRACE_BEYOND_TIMEOUT_SECONDS)
}

/// Every setting the gateway or the controller passes to the shim.
pub mod var {
    use super::ShimVar;

    const fn v(flag: &'static str, env: &'static str) -> ShimVar {
        ShimVar { flag, env }
    }

    /// Address of the invoke endpoint and the ops endpoints.
    pub const LISTEN: ShimVar = v("listen", "PORCHLIGHT_LISTEN");
    /// Loopback address of the Runtime API served to the runtime.
    pub const RUNTIME_API: ShimVar = v("runtime-api", "PORCHLIGHT_RUNTIME_API");
    /// Function name.
    pub const FUNCTION_NAME: ShimVar = v("function-name", "PORCHLIGHT_FUNCTION_NAME");
    /// Handler, e.g. `app.lambda_handler`.
    pub const HANDLER: ShimVar = v("handler", "PORCHLIGHT_HANDLER");
    /// Runtime: `python3.x`, `nodejs18.x` / `nodejs20.x` / `nodejs22.x`, or `provided`.
    pub const RUNTIME: ShimVar = v("runtime", "PORCHLIGHT_RUNTIME");
    /// Directory holding the function's code.
    pub const TASK_ROOT: ShimVar = v("task-root", "PORCHLIGHT_TASK_ROOT");
    /// Longest an invocation may run.
    pub const TIMEOUT_SECONDS: ShimVar = v("timeout-seconds", "PORCHLIGHT_TIMEOUT_SECONDS");
    /// Longest an init may take.
    pub const INIT_TIMEOUT_SECONDS: ShimVar =
        v("init-timeout-seconds", "PORCHLIGHT_INIT_TIMEOUT_SECONDS");
    /// Memory size reported to the function.
    pub const MEMORY_MIB: ShimVar = v("memory-mib", "PORCHLIGHT_MEMORY_MIB");
    /// Invocations one environment runs at once.
    pub const CONCURRENCY: ShimVar = v("concurrency", "PORCHLIGHT_CONCURRENCY");
    /// SIGSTOP the runtime while idle.
    pub const FREEZE: ShimVar = v("freeze", "PORCHLIGHT_FREEZE");
    /// Exit with the init error instead of retrying the init (pods).
    pub const EXIT_ON_INIT_ERROR: ShimVar =
        v("exit-on-init-error", "PORCHLIGHT_EXIT_ON_INIT_ERROR");
    /// Where that init error is written.
    pub const TERMINATION_LOG: ShimVar = v("termination-log", "PORCHLIGHT_TERMINATION_LOG");
    /// Identity of the environment in headers and logs.
    pub const ENVIRONMENT_ID: ShimVar = v("environment-id", "PORCHLIGHT_ENVIRONMENT_ID");
    /// Longest a graceful shutdown waits for invocations in flight.
    pub const SHUTDOWN_GRACE_SECONDS: ShimVar = v(
        "shutdown-grace-seconds",
        "PORCHLIGHT_SHUTDOWN_GRACE_SECONDS",
    );
    /// Python interpreter of the bundled Python bootstrap.
    pub const PYTHON: ShimVar = v("python", "PORCHLIGHT_PYTHON");
    /// The bundled Python bootstrap as a file.
    pub const PYTHON_BOOTSTRAP: ShimVar = v("python-bootstrap", "PORCHLIGHT_PYTHON_BOOTSTRAP");
    /// Node.js of the bundled Node bootstrap.
    pub const NODE: ShimVar = v("node", "PORCHLIGHT_NODE");
    /// The bundled Node bootstrap as a file.
    pub const NODE_BOOTSTRAP: ShimVar = v("node-bootstrap", "PORCHLIGHT_NODE_BOOTSTRAP");

    /// Output for a terminal (local mode): a log record's `\r`-joined lines
    /// as lines, and `START` / `END` / `REPORT` lines naming the function.
    pub const LOCAL_LOGS: ShimVar = v("local-logs", "PORCHLIGHT_LOCAL_LOGS");
    /// No `START` / `END` / `REPORT` lines on stdout.
    pub const QUIET: ShimVar = v("quiet", "PORCHLIGHT_QUIET");

    /// Every setting above, for checks that must cover them all.
    pub const ALL: [ShimVar; 21] = [
        LISTEN,
        RUNTIME_API,
        FUNCTION_NAME,
        HANDLER,
        RUNTIME,
        TASK_ROOT,
        TIMEOUT_SECONDS,
        INIT_TIMEOUT_SECONDS,
        MEMORY_MIB,
        CONCURRENCY,
        FREEZE,
        EXIT_ON_INIT_ERROR,
        TERMINATION_LOG,
        ENVIRONMENT_ID,
        SHUTDOWN_GRACE_SECONDS,
        PYTHON,
        PYTHON_BOOTSTRAP,
        NODE,
        NODE_BOOTSTRAP,
        LOCAL_LOGS,
        QUIET,
    ];
}

/// The settings one environment is started with. `None` (or `false`) leaves
/// the shim's default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShimSettings {
    /// [`var::LISTEN`].
    pub listen: Option<String>,
    /// [`var::FUNCTION_NAME`].
    pub function_name: Option<String>,
    /// [`var::HANDLER`].
    pub handler: Option<String>,
    /// [`var::RUNTIME`].
    pub runtime: Option<String>,
    /// [`var::TASK_ROOT`].
    pub task_root: Option<String>,
    /// [`var::TIMEOUT_SECONDS`].
    pub timeout_seconds: Option<u32>,
    /// [`var::MEMORY_MIB`].
    pub memory_mib: Option<u32>,
    /// [`var::CONCURRENCY`].
    pub concurrency: Option<u32>,
    /// [`var::FREEZE`].
    pub freeze: bool,
    /// [`var::EXIT_ON_INIT_ERROR`].
    pub exit_on_init_error: bool,
    /// [`var::ENVIRONMENT_ID`].
    pub environment_id: Option<String>,
    /// [`var::SHUTDOWN_GRACE_SECONDS`].
    pub shutdown_grace_seconds: Option<u32>,
    /// [`var::LOCAL_LOGS`].
    pub local_logs: bool,
    /// [`var::QUIET`].
    pub quiet: bool,
}

impl ShimSettings {
    /// The settings that are switches: a flag without a value.
    pub const SWITCHES: [ShimVar; 4] = [
        var::FREEZE,
        var::EXIT_ON_INIT_ERROR,
        var::LOCAL_LOGS,
        var::QUIET,
    ];

    /// Every setting that is set, with its value as text (`true` for flags).
    pub fn pairs(&self) -> Vec<(ShimVar, String)> {
        let mut out = Vec::new();
        let mut text = |var: ShimVar, value: &Option<String>| {
            if let Some(value) = value {
                out.push((var, value.clone()));
            }
        };
        text(var::LISTEN, &self.listen);
        text(var::FUNCTION_NAME, &self.function_name);
        text(var::HANDLER, &self.handler);
        text(var::RUNTIME, &self.runtime);
        text(var::TASK_ROOT, &self.task_root);
        let numbers = [
            (var::TIMEOUT_SECONDS, self.timeout_seconds),
            (var::MEMORY_MIB, self.memory_mib),
            (var::CONCURRENCY, self.concurrency),
            (var::SHUTDOWN_GRACE_SECONDS, self.shutdown_grace_seconds),
        ];
        out.extend(
            numbers
                .into_iter()
                .filter_map(|(var, n)| n.map(|n| (var, n.to_string()))),
        );
        for (var, on) in [
            (var::FREEZE, self.freeze),
            (var::EXIT_ON_INIT_ERROR, self.exit_on_init_error),
            (var::LOCAL_LOGS, self.local_logs),
            (var::QUIET, self.quiet),
        ] {
            if on {
                out.push((var, "true".to_string()));
            }
        }
        if let Some(id) = &self.environment_id {
            out.push((var::ENVIRONMENT_ID, id.clone()));
        }
        out
    }

    /// As environment variables (pods).
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        self.pairs()
            .into_iter()
            .map(|(v, value)| (v.env, value))
            .collect()
    }

    /// As command-line flags (local mode); switches take no value.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (v, value) in self.pairs() {
            out.push(format!("--{}", v.flag));
            if !Self::SWITCHES.contains(&v) {
                out.push(value);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_same_settings_as_env_and_flags() {
        let s = ShimSettings {
            listen: Some("127.0.0.1:9000".into()),
            function_name: Some("hello".into()),
            handler: Some("app.handler".into()),
            timeout_seconds: Some(3),
            shutdown_grace_seconds: Some(5),
            exit_on_init_error: true,
            ..ShimSettings::default()
        };
        assert_eq!(
            s.to_env(),
            [
                ("PORCHLIGHT_LISTEN", "127.0.0.1:9000".to_string()),
                ("PORCHLIGHT_FUNCTION_NAME", "hello".to_string()),
                ("PORCHLIGHT_HANDLER", "app.handler".to_string()),
                ("PORCHLIGHT_TIMEOUT_SECONDS", "3".to_string()),
                ("PORCHLIGHT_SHUTDOWN_GRACE_SECONDS", "5".to_string()),
                ("PORCHLIGHT_EXIT_ON_INIT_ERROR", "true".to_string()),
            ]
        );
        assert_eq!(
            s.to_args(),
            [
                "--listen",
                "127.0.0.1:9000",
                "--function-name",
                "hello",
                "--handler",
                "app.handler",
                "--timeout-seconds",
                "3",
                "--shutdown-grace-seconds",
                "5",
                "--exit-on-init-error"
            ]
        );
    }

    #[test]
    fn every_variable_is_reserved() {
        for v in var::ALL {
            assert!(v.env.starts_with(RESERVED_ENV_PREFIX), "{}", v.env);
            assert_eq!(
                v.env,
                format!("PORCHLIGHT_{}", v.flag.replace('-', "_").to_uppercase())
            );
        }
    }
}
