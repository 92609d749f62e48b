//! Local mode with Node.js functions: the gateway's embedded shim runs the
//! host's `node` (env `PORCHLIGHT_NODE`, else `node` on PATH) with the
//! bundled Node bootstrap, as Python functions run the host's python.

mod common;

use common::{LocalGateway, invoke};
use serde_json::{Value, json};

/// Whether Node.js is installed: skips without it, fails under CI.
fn node_available() -> bool {
    let node = std::env::var("PORCHLIGHT_NODE").unwrap_or_else(|_| "node".into());
    let ok = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("Node.js ({node}) is required when CI is set: apt-get install nodejs");
        }
        eprintln!("SKIPPED: Node.js ({node}) not available");
    }
    ok
}

fn node_function(name: &str, runtime: &str, handler: &str, body: &str) -> String {
    let code: String = body.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  runtime: {runtime}\n  handler: {handler}\n  code:\n    inline: |\n{code}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_functions_answer_through_the_gateway() {
    if !node_available() {
        return;
    }
    let manifests = [
        (
            "hello-node.yaml",
            include_str!("../../examples/hello-node.yaml").to_string(),
        ),
        (
            "esm.yaml",
            node_function(
                "esm",
                "nodejs22.x",
                "src/app.handler",
                "import { platform } from 'node:os';\nexport const handler = async (event, context) => ({ os: platform(), env: process.env.AWS_EXECUTION_ENV, event });",
            ),
        ),
        (
            "node-fail.yaml",
            node_function(
                "node-fail",
                "nodejs20.x",
                "index.handler",
                "exports.handler = (event, context, callback) => {\n  callback(new TypeError(`no ${event.what}`));\n};",
            ),
        ),
    ];
    let gw = LocalGateway::start("node", &manifests, &[]);

    let reply = invoke(&gw, "hello-node", r#"{"name":"Ada"}"#).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, gw.log());
    let body: Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(body["greeting"], "hello Ada", "{body}");
    assert_eq!(body["invocations"], 1);
    assert!(
        body["leftMs"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 3000)
    );
    let again: Value =
        serde_json::from_str(&invoke(&gw, "hello-node", "{}").await.body).expect("json");
    assert_eq!(again["invocations"], 2, "init runs once: {again}");
    let request = body["request"].as_str().expect("request id").to_owned();
    assert!(
        gw.stdout_has(|l| l.contains(&format!("{request}\tINFO\tgreeting Ada"))),
        "{}",
        gw.stdout()
    );

    let reply = invoke(&gw, "esm", r#"{"x":1}"#).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, gw.log());
    let body: Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(body["env"], "AWS_Lambda_nodejs22.x");
    assert_eq!(body["event"], json!({"x": 1}));

    let reply = invoke(&gw, "node-fail", r#"{"what":"luck"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("x-amz-function-error").as_deref(),
        Some("Unhandled")
    );
    let body: Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(body["errorType"], "TypeError", "{body}");
    assert_eq!(body["errorMessage"], "no luck");
    assert_eq!(body["trace"][0], "TypeError: no luck", "{body}");
}
