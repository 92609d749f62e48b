//! Durable async invocations, end to end with the gateway binary: events
//! accepted before a kill -9 run after the next start (embedded store and
//! JetStream), two gateways on one JetStream run each event once, a
//! gateway killed mid-run repeats only what it was running, and a stop
//! leaves events in retry backoff stored without waiting for them.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    LocalGateway, NatsServer, free_port, nats_server_binary, poll, python_function, temp_dir,
    wait_ready,
};

/// A function that records each run: `start-<request id>-<tag>` when it
/// begins and `done-<request id>-<tag>` when it ends, each holding the pid
/// of the gateway that runs its environment. With `GATE` set it waits (at
/// most 60 s) for that file to exist before it ends; with `FAIL` it raises.
fn recorder(name: &str, markers: &Path, extra_env: &str, max_scale: u32) -> String {
    let code = r#"import os, time, uuid
def gateway_pid():
    shim = os.getppid()
    with open("/proc/%d/stat" % shim) as f:
        return f.read().rsplit(")", 1)[1].split()[1]
def handler(event, context):
    d = os.environ["MARKER_DIR"]
    name = context.aws_request_id + "-" + uuid.uuid4().hex
    pid = gateway_pid()
    with open(os.path.join(d, "start-" + name), "w") as f:
        f.write(pid)
    gate = os.environ.get("GATE")
    if gate:
        for _ in range(600):
            if os.path.exists(gate):
                break
            time.sleep(0.1)
    if os.environ.get("FAIL"):
        raise RuntimeError("failing on purpose")
    with open(os.path.join(d, "done-" + name), "w") as f:
        f.write(pid)
    return {}"#;
    python_function(
        name,
        code,
        &format!(
            "  env:\n    MARKER_DIR: {}\n{extra_env}  scaling: {{maxScale: {max_scale}}}\n",
            markers.display()
        ),
    )
}

/// What the recorder wrote: per request id, its runs (tag, gateway pid)
/// and the tags that finished.
#[derive(Default, Debug)]
struct Runs {
    starts: HashMap<String, Vec<(String, String)>>,
    done: HashSet<(String, String)>,
}

impl Runs {
    fn read(dir: &Path) -> Runs {
        let mut runs = Runs::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return runs;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
            let (kind, rest) = match name.split_once('-') {
                Some(p) => p,
                None => continue,
            };
            let Some((rid, tag)) = rest.rsplit_once('-') else {
                continue;
            };
            match kind {
                "start" => runs
                    .starts
                    .entry(rid.to_string())
                    .or_default()
                    .push((tag.to_string(), pid)),
                "done" => {
                    runs.done.insert((rid.to_string(), tag.to_string()));
                }
                _ => {}
            }
        }
        runs
    }

    fn finished(&self, rid: &str) -> bool {
        self.starts.get(rid).is_some_and(|s| {
            s.iter()
                .any(|(tag, _)| self.done.contains(&(rid.to_string(), tag.clone())))
        })
    }

    fn duplicated(&self) -> Vec<&String> {
        self.starts
            .iter()
            .filter(|(_, s)| s.len() > 1)
            .map(|(rid, _)| rid)
            .collect()
    }
}

/// Waits (bounded) until every id in `ids` finished at least once.
async fn wait_all_finished(markers: &Path, ids: &[String], seconds: u32) -> Runs {
    let found = poll(seconds * 5, Duration::from_millis(200), || {
        let runs = Runs::read(markers);
        let all = ids.iter().all(|id| runs.finished(id));
        async move { all.then_some(runs) }
    })
    .await;
    match found {
        Some(runs) => runs,
        None => {
            let runs = Runs::read(markers);
            let missing = ids.iter().filter(|id| !runs.finished(id)).count();
            panic!("{missing} of {} events never finished", ids.len());
        }
    }
}

/// Sends `n` `Event` invokes to `function` over `parallel` connections;
/// every one must be answered 202. Returns the request ids and the rate.
async fn send_events(base: &str, function: &str, n: usize, parallel: usize) -> (Vec<String>, f64) {
    let http = reqwest::Client::new();
    let url = format!("{base}/2015-03-31/functions/{function}/invocations");
    // The function is registered once the gateway has read its folder.
    let ready = poll(100, Duration::from_millis(100), || {
        let http = http.clone();
        let url = format!("{base}/v1/functions");
        let function = function.to_string();
        async move {
            let text = http.get(&url).send().await.ok()?.text().await.ok()?;
            text.contains(&format!("\"{function}\"")).then_some(())
        }
    })
    .await;
    assert!(ready.is_some(), "{function} was not registered within 10 s");
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch: Vec<_> = (next..(next + parallel).min(n))
            .map(|i| {
                let http = http.clone();
                let url = url.clone();
                async move {
                    let r = http
                        .post(&url)
                        .header("x-amz-invocation-type", "Event")
                        .body(format!("{{\"n\":{i}}}"))
                        .send()
                        .await
                        .expect("send");
                    let status = r.status().as_u16();
                    let id = r
                        .headers()
                        .get("x-amzn-requestid")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = r.text().await.unwrap_or_default();
                    assert_eq!(status, 202, "event {i} not accepted: {body}");
                    id.expect("a request id")
                }
            })
            .collect();
        next += batch.len();
        ids.extend(futures::future::join_all(batch).await);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    (ids, rate)
}

fn kill9(gw: &mut LocalGateway) {
    gw.child.kill().expect("kill -9");
    gw.child.wait().expect("reaped");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Accepts 300 events for a function blocked at a gate (one environment,
/// so one event runs and the rest wait), kill -9s the gateway, opens the
/// gate and starts a new gateway on the same store: every event runs, and
/// only the one that was running runs twice.
async fn kill9_and_restart(tag: &str, backend: Vec<String>) {
    let work = temp_dir(tag);
    let markers = work.join("markers");
    std::fs::create_dir_all(&markers).expect("markers");
    let gate = work.join("gate");
    let manifest = recorder(
        "slow",
        &markers,
        &format!("    GATE: {}\n", gate.display()),
        1,
    );
    let extra: Vec<&str> = backend.iter().map(String::as_str).collect();
    let mut gw = LocalGateway::start(tag, &[("slow.yaml", manifest.clone())], &extra);
    let (ids, rate) = send_events(&gw.base, "slow", 300, 8).await;
    let running = poll(150, Duration::from_millis(200), || {
        let runs = Runs::read(&markers);
        async move { (!runs.starts.is_empty()).then_some(runs) }
    })
    .await
    .expect("the first event started within 30 s");
    let started_before: HashSet<String> = running.starts.keys().cloned().collect();
    kill9(&mut gw);
    assert!(
        Runs::read(&markers).done.is_empty(),
        "nothing got past the gate before the kill"
    );
    std::fs::write(&gate, "open").expect("gate");
    let gw2 = LocalGateway::start(tag, &[("slow.yaml", manifest)], &extra);
    let runs = wait_all_finished(&markers, &ids, 120).await;
    let duplicated = runs.duplicated();
    for rid in &duplicated {
        assert!(
            started_before.contains(*rid),
            "{rid} ran twice but had not started before the kill"
        );
    }
    let total_runs: usize = runs.starts.values().map(Vec::len).sum();
    eprintln!(
        "{tag}: accepted {} ({rate:.0}/s), running at the kill {}, ran after restart: all {}, runs {total_runs}, ran twice {} (of those not started before the kill: 0)",
        ids.len(),
        started_before.len(),
        ids.len(),
        duplicated.len()
    );
    assert!(gw2.log().contains("async events are kept here"));
    drop(gw2);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_the_embedded_store_runs_every_accepted_event_after_restart() {
    let data = temp_dir("kill9-data");
    kill9_and_restart(
        "kill9-file",
        args(&["--data-dir", data.to_str().expect("utf-8")]),
    )
    .await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_jetstream_runs_every_accepted_event_after_restart() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "kill9");
    kill9_and_restart(
        "kill9-nats",
        args(&["--queue", &nats.url, "--queue-ack-wait", "2s"]),
    )
    .await;
}

/// Two gateways on one JetStream, each with its own environments.
fn two_gateways(tag: &str, nats: &NatsServer, manifest: &str) -> (LocalGateway, LocalGateway) {
    let extra = ["--queue", nats.url.as_str(), "--queue-ack-wait", "2s"];
    let a = LocalGateway::start(
        &format!("{tag}-a"),
        &[("f.yaml", manifest.to_string())],
        &extra,
    );
    let b = LocalGateway::start(
        &format!("{tag}-b"),
        &[("f.yaml", manifest.to_string())],
        &extra,
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_jetstream_run_each_event_once() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "two");
    let markers = temp_dir("two-markers");
    // The first events wait at a gate until both gateways run one: on a
    // loaded machine one gateway could otherwise run all 1,000 before the
    // other's environments have started, and the test would show nothing
    // about sharing the stream.
    let gate = markers.with_extension("gate");
    let _ = std::fs::remove_file(&gate);
    let manifest = recorder(
        "rec",
        &markers,
        &format!("    GATE: {}\n", gate.display()),
        3,
    );
    let (a, b) = two_gateways("two", &nats, &manifest);
    let (mut ids, rate_a) = send_events(&a.base, "rec", 500, 8).await;
    let (more, rate_b) = send_events(&b.base, "rec", 500, 8).await;
    ids.extend(more);
    let both = poll(300, Duration::from_millis(200), || {
        let gateways: HashSet<String> = Runs::read(&markers)
            .starts
            .into_values()
            .flatten()
            .map(|(_, pid)| pid)
            .collect();
        async move { (gateways.len() == 2).then_some(()) }
    })
    .await;
    std::fs::write(&gate, "open").expect("gate");
    assert!(
        both.is_some(),
        "both gateways took events from the stream\n{}\n{}",
        a.log(),
        b.log()
    );
    let runs = wait_all_finished(&markers, &ids, 180).await;
    let by_gateway = runs
        .starts
        .values()
        .flatten()
        .fold(HashMap::new(), |mut m, (_, pid)| {
            *m.entry(pid.clone()).or_insert(0usize) += 1;
            m
        });
    eprintln!(
        "two gateways: accepted {} ({rate_a:.0}/s and {rate_b:.0}/s), runs per gateway {:?}, ran twice {}",
        ids.len(),
        by_gateway.values().collect::<Vec<_>>(),
        runs.duplicated().len()
    );
    assert_eq!(runs.starts.len(), 1000, "every event ran");
    assert!(runs.duplicated().is_empty(), "no event ran twice");
    assert_eq!(by_gateway.len(), 2, "both gateways took events");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&markers);
    let _ = std::fs::remove_file(&gate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_run_loses_nothing_and_repeats_only_what_it_ran() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "midrun");
    let markers = temp_dir("midrun-markers");
    // Slow enough that the kill lands while both gateways run events.
    let manifest = recorder("rec", &markers, "    GATE: /nonexistent/never\n", 3)
        .replace("range(600)", "range(2)");
    let (mut a, b) = two_gateways("midrun", &nats, &manifest);
    let (mut ids, _) = send_events(&a.base, "rec", 500, 8).await;
    let (more, _) = send_events(&b.base, "rec", 500, 8).await;
    ids.extend(more);
    let a_pid = a.child.id().to_string();
    let a_ran = poll(300, Duration::from_millis(100), || {
        let runs = Runs::read(&markers);
        let a_done = runs
            .starts
            .values()
            .flatten()
            .filter(|(_, pid)| *pid == a_pid)
            .count();
        async move { (a_done >= 50 && runs.done.len() < 900).then_some(a_done) }
    })
    .await
    .expect("gateway A ran events before the end");
    kill9(&mut a);
    let at_kill = Runs::read(&markers);
    let runs = wait_all_finished(&markers, &ids, 180).await;
    let duplicated = runs.duplicated();
    for rid in &duplicated {
        let starts = &runs.starts[*rid];
        assert!(
            starts.iter().any(|(_, pid)| *pid == a_pid),
            "{rid} ran twice but the killed gateway never ran it"
        );
    }
    let interrupted = at_kill
        .starts
        .iter()
        .filter(|(rid, s)| s.iter().any(|(_, pid)| *pid == a_pid) && !at_kill.finished(rid))
        .count();
    eprintln!(
        "killed mid-run: {} events, A had started {a_ran} and was running {interrupted} at the kill, all finished, ran twice {}",
        ids.len(),
        duplicated.len()
    );
    assert_eq!(runs.starts.len(), 1000, "nothing lost");
    drop(b);
    let _ = std::fs::remove_dir_all(&markers);
}

/// Issue 16 item 7: a stop after async events neither waits nor reports
/// events as abandoned, and an event in retry backoff stays stored (no
/// dead letter) and runs its next attempt after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_events_in_backoff_stored_and_they_resume_after_restart() {
    let data = temp_dir("ctrlc-data");
    let markers = temp_dir("ctrlc-markers");
    let ok = recorder("ok", &markers, "", 1);
    let failing = recorder("failing", &markers, "    FAIL: \"1\"\n", 1);
    let manifests = [("ok.yaml", ok), ("failing.yaml", failing)];
    let extra = [
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--async-retry-base",
        "6s",
    ];
    let mut gw = LocalGateway::start("ctrlc", &manifests, &extra);
    let (ok_ids, _) = send_events(&gw.base, "ok", 1, 1).await;
    let (failing_ids, _) = send_events(&gw.base, "failing", 1, 1).await;
    wait_all_finished(&markers, &ok_ids, 30).await;
    let first = poll(150, Duration::from_millis(100), || {
        let runs = Runs::read(&markers);
        let n = runs.starts.get(&failing_ids[0]).map_or(0, Vec::len);
        async move { (n >= 1).then_some(n) }
    })
    .await
    .expect("the failing event ran once");
    assert_eq!(first, 1);
    // Ctrl-C while the failing event waits for its retry.
    let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let mut exited = None;
    for _ in 0..200 {
        if let Ok(Some(status)) = gw.child.try_wait() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = gw.log();
    let status =
        exited.unwrap_or_else(|| panic!("the gateway did not stop within 10 s; log: {log}"));
    assert!(status.success(), "clean exit: {status:?}; log: {log}");
    assert!(
        !log.contains("abandoned"),
        "no false abandoned warning: {log}"
    );
    assert!(!log.contains("were stopped"), "nothing was running: {log}");
    assert!(
        !log.contains("dead letter"),
        "the event in backoff is not dead-lettered: {log}"
    );
    assert_eq!(
        Runs::read(&markers)
            .starts
            .get(&failing_ids[0])
            .map_or(0, Vec::len),
        1,
        "no attempt during the stop"
    );
    drop(gw);
    // The next start resumes it: its second attempt, same request id.
    let gw = LocalGateway::start("ctrlc", &manifests, &extra);
    let second = poll(300, Duration::from_millis(100), || {
        let runs = Runs::read(&markers);
        let n = runs.starts.get(&failing_ids[0]).map_or(0, Vec::len);
        async move { (n >= 2).then_some(n) }
    })
    .await;
    assert!(
        second.is_some(),
        "the retry ran after the restart; log: {}",
        gw.log()
    );
    let letters: serde_json::Value = reqwest::get(gw.url("/v1/dead-letters"))
        .await
        .expect("dead letters")
        .json()
        .await
        .expect("json");
    assert_eq!(letters["deadLetters"].as_array().map(Vec::len), Some(0));
    drop(gw);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&markers);
}

/// An event the store cannot take is refused with a Lambda-shaped 503,
/// never answered 202 and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_store_cannot_take_is_refused_with_503() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let mut nats = NatsServer::start(&bin, "down");
    let markers = temp_dir("down-markers");
    let manifest = recorder("rec", &markers, "", 1);
    let gw = LocalGateway::start(
        "down",
        &[("f.yaml", manifest)],
        &["--queue", nats.url.as_str()],
    );
    let (ids, _) = send_events(&gw.base, "rec", 1, 1).await;
    wait_all_finished(&markers, &ids, 30).await;
    nats.stop();
    let r = reqwest::Client::new()
        .post(gw.url("/2015-03-31/functions/rec/invocations"))
        .header("x-amz-invocation-type", "Event")
        .body("{}")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["errorType"], "ServiceUnavailableException");
    assert!(
        body["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("not accepted")),
        "{body}"
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(&markers);
}

/// A gateway started before its NATS server (a fresh install starts both at
/// once) waits for it, serving nothing meanwhile, then keeps events there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_nats_waits_for_it() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let markers = temp_dir("early-markers");
    let manifest = recorder("rec", &markers, "", 1);
    let gw = LocalGateway::spawn("early", &[("f.yaml", manifest)], &["--queue", url.as_str()]);
    let waiting = poll(200, Duration::from_millis(50), || async {
        gw.log().contains("NATS is not reachable yet").then_some(())
    })
    .await;
    assert!(waiting.is_some(), "no retry logged: {}", gw.log());
    let early = reqwest::Client::new()
        .get(gw.url("/ready"))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(
        early.is_err(),
        "serves before its queue is reachable: {early:?}"
    );
    let _nats = NatsServer::start_on(&bin, "early", port);
    assert!(wait_ready(&gw).await, "not ready after NATS: {}", gw.log());
    let (ids, _) = send_events(&gw.base, "rec", 3, 1).await;
    wait_all_finished(&markers, &ids, 30).await;
    assert!(gw.log().contains("reached NATS"), "{}", gw.log());
    drop(gw);
    let _ = std::fs::remove_dir_all(&markers);
}

/// Without NATS for --queue-connect-timeout, the gateway exits with the
/// configuration error code and says what it tried.
#[test]
fn a_gateway_gives_up_on_an_unreachable_nats_after_the_connect_timeout() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let mut gw = LocalGateway::spawn(
        "giveup",
        &[],
        &["--queue", url.as_str(), "--queue-connect-timeout", "2s"],
    );
    let code = gw.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(64), "log: {}", gw.log());
    let log = gw.log();
    assert!(
        log.contains(&url) && log.contains("--queue-connect-timeout"),
        "{log}"
    );
}
