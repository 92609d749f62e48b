//! The live replay: a slice of the Azure Functions 2019 trace, time
//! compressed, through a real gateway in local mode, must show the cold
//! starts the keep-alive simulator predicts for the same arrivals, within
//! 10 %. Needs the workspace's binaries (`cargo build --workspace --bins`)
//! and python3; takes about 90 s.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use porchlight_load::simulate::live::{Plan, ReplayArgs, drive};
use porchlight_load::simulate::trace::Trace;
use porchlight_load::simulate::{SpreadKind, TraceArrivals};

fn slice() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/azure-2019-slice")
}

/// The gateway binary next to this test's folder (target/debug).
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let dir = exe.parent().and_then(Path::parent).expect("target/debug");
    let bin = dir.join("porchlight-gateway");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

struct Gateway(Child, PathBuf);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}

fn start_gateway(dir: &Path, manifests: &Path) -> (Gateway, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(gateway_binary())
        .arg("--local")
        .arg(manifests)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--quiet"])
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("PORCHLIGHT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log")).expect("log"))
        .spawn()
        .expect("start the gateway");
    let gateway = Gateway(child, dir.to_path_buf());
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (gateway, format!("http://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the gateway did not listen; its log: {}",
        std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replay_shows_the_cold_starts_the_simulator_predicts() {
    let dir = std::env::temp_dir().join(format!("porchlight-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = ReplayArgs {
        arrivals: TraceArrivals {
            trace: slice(),
            spread: SpreadKind::Uniform,
            seed: 2019,
        },
        start_minute: 0,
        minutes: 30,
        functions: 20,
        max_per_minute: 10,
        compress: 20.0,
        keep_alive: Duration::from_secs(5 * 60),
        write_manifests: None,
        target: String::new(),
        tolerance: 0.10,
        check: true,
        out: dir.join("report"),
        no_sign_request: true,
        quiet: true,
    };
    let trace = Trace::load(&args.arrivals.trace).expect("the slice");
    let plan = Plan::new(&trace, &args).expect("a plan");
    assert_eq!(plan.functions.len(), 20);
    let simulated: u64 = plan.simulated_cold_starts().iter().sum();
    assert!(
        simulated > 20 + 5,
        "the slice must cold-start functions after their first call too: {simulated}"
    );

    let manifests = dir.join("functions");
    plan.write_manifests(&manifests).expect("manifests");
    let (gateway, url) = start_gateway(&dir, &manifests);
    let (comparison, records) = drive(&plan, &url, None, args.tolerance, true)
        .await
        .expect("the replay");
    eprint!("{}", comparison.render());
    comparison.write(&args.out).expect("report");

    let failed: Vec<_> = records.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.is_empty(),
        "every invocation is answered: {failed:?}"
    );
    assert_eq!(comparison.simulated_cold_starts, simulated);
    assert!(
        comparison.agrees,
        "live {} against simulated {} cold starts ({:+.1} %), more than 10 % apart",
        comparison.live_cold_starts,
        comparison.simulated_cold_starts,
        comparison.relative_difference * 100.0
    );
    drop(gateway);
}
