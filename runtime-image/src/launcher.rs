//! The runtime launcher: the shim starts its runtime through its own binary,
//! which arms a parent-death signal and then becomes the runtime.
//!
//! The runtime runs in a process group of its own, so that the shim can
//! freeze and kill it whole. Nothing then stops it when the shim itself is
//! SIGKILLed: it would keep running an event whose caller was already told
//! it failed. Arming `PR_SET_PDEATHSIG` between fork and exec would need
//! `unsafe`; re-executing the shim's binary in a hidden mode does the same
//! in safe code: the launcher arms SIGKILL on its parent's death, checks that
//! the parent is still the shim that started it, and execs the runtime.
//! The signal stays armed across that exec.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The hidden first argument that selects the launcher:
/// `<binary> __porchlight-launch-runtime <shim pid> <program> [args...]`.
/// A binary that embeds the shim through [`crate::cli_main_from`] passes its
/// arguments to it unchanged when they start with this.
pub const LAUNCH_RUNTIME_ARG: &str = "__porchlight-launch-runtime";

/// Exit code of a launcher that could not become the runtime (a shell's
/// "command not found").
const EXIT_CANNOT_EXEC: u8 = 127;

/// How the shim runs its own binary as the launcher.
#[derive(Clone, Debug)]
pub struct RuntimeLauncher {
    /// The shim's binary. `/proc/self/exe` stays valid when the file was
    /// replaced or deleted since the shim started (a rebuild in local mode).
    pub program: PathBuf,
}

impl RuntimeLauncher {
    /// This process's own binary.
    pub fn this_binary() -> Self {
        RuntimeLauncher {
            program: PathBuf::from("/proc/self/exe"),
        }
    }

    /// The arguments that make the launcher exec `program` with `args`,
    /// as a child of the process with id `shim`.
    pub fn args(&self, shim: u32, program: &Path, args: &[String]) -> Vec<OsString> {
        let mut out = vec![
            OsString::from(LAUNCH_RUNTIME_ARG),
            OsString::from(shim.to_string()),
            program.as_os_str().to_owned(),
        ];
        out.extend(args.iter().map(OsString::from));
        out
    }
}

/// Whether `args` (program name first) run the launcher.
pub fn is_launch(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|a| a == LAUNCH_RUNTIME_ARG)
}

/// The launcher's `main`: `args` are what follows [`LAUNCH_RUNTIME_ARG`].
/// Returns only when the runtime could not be started.
pub fn launch(args: &[OsString]) -> ExitCode {
    let Some((shim, rest)) = args.split_first() else {
        return cannot("no shim pid");
    };
    let Some(shim) = shim.to_str().and_then(|p| p.parse::<i32>().ok()) else {
        return cannot("the shim pid is not a number");
    };
    let Some(program) = rest.first() else {
        return cannot("no runtime program");
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        return cannot(&format!("cannot arm the parent-death signal: {e}"));
    }
    if nix::unistd::getppid().as_raw() != shim {
        // The shim died before the signal was armed: nobody waits for
        // this runtime any more.
        return ExitCode::from(1);
    }
    let Some(argv) = rest.iter().map(|a| c_string(a)).collect::<Option<Vec<_>>>() else {
        return cannot("an argument contains a NUL byte");
    };
    let Some(path) = c_string(program) else {
        return cannot("the program contains a NUL byte");
    };
    let Err(e) = nix::unistd::execv(&path, &argv);
    cannot(&format!("cannot run {}: {e}", program.to_string_lossy()))
}

fn c_string(s: &OsStr) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

fn cannot(why: &str) -> ExitCode {
    eprintln!("porchlight-runtime: {why}");
    ExitCode::from(EXIT_CANNOT_EXEC)
}

/// The file `program` names, found the way `execvp` finds it: a name with a
/// `/` is a path (relative ones from `cwd`), a bare name is looked up in
/// `path` (the `PATH` variable). Errors are the ones spawning it directly
/// would give, so that a missing entrypoint is still reported at once.
pub fn resolve(program: &Path, cwd: &Path, path: Option<&OsStr>) -> std::io::Result<PathBuf> {
    use std::io::ErrorKind;
    if program.as_os_str().as_bytes().contains(&b'/') {
        let file = cwd.join(program);
        return executable(&file).map(|()| file);
    }
    let mut denied = None;
    for dir in std::env::split_paths(path.unwrap_or(OsStr::new("/usr/bin:/bin"))) {
        let file = cwd.join(dir).join(program);
        match executable(&file) {
            Ok(()) => return Ok(file),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => denied = Some(e),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or_else(|| os_error(nix::errno::Errno::ENOENT)))
}

fn executable(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(file)?;
    if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
        Ok(())
    } else {
        Err(os_error(nix::errno::Errno::EACCES))
    }
}

/// The error spawning the program directly would have given.
fn os_error(errno: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_like_execvp() {
        let sh = resolve(
            Path::new("sh"),
            Path::new("/"),
            Some(OsStr::new("/nowhere:/bin")),
        );
        assert_eq!(sh.expect("sh in /bin"), PathBuf::from("/bin/sh"));
        let missing = resolve(Path::new("no-such-program"), Path::new("/"), None);
        assert_eq!(
            missing.expect_err("missing").kind(),
            std::io::ErrorKind::NotFound
        );
        // A path is taken relative to the working directory, not PATH.
        let rel = resolve(Path::new("bin/sh"), Path::new("/"), Some(OsStr::new("")));
        assert_eq!(rel.expect("/bin/sh"), PathBuf::from("/bin/sh"));
        let file = std::env::temp_dir().join(format!("porchlight-plain-{}", std::process::id()));
        std::fs::write(&file, "not a program").expect("write");
        let not_executable = resolve(&file, Path::new("/"), None);
        let _ = std::fs::remove_file(&file);
        assert_eq!(
            not_executable.expect_err("not executable").kind(),
            std::io::ErrorKind::PermissionDenied
        );
    }

    #[test]
    fn launch_args_name_the_shim_and_the_program() {
        let l = RuntimeLauncher::this_binary();
        let args = l.args(42, Path::new("/bin/sh"), &["-c".into(), "true".into()]);
        let mut argv = vec![OsString::from("porchlight-runtime")];
        argv.extend(args.clone());
        assert!(is_launch(&argv));
        assert_eq!(
            args,
            ["__porchlight-launch-runtime", "42", "/bin/sh", "-c", "true"].map(OsString::from)
        );
    }
}
