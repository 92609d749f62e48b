//! The public and internal listeners: with `--internal-listen`, what end
//! users call and the platform's own endpoints are on separate ports, and
//! neither serves the other's routes. A real gateway process on loopback.

mod common;

use common::{LocalGateway, free_port, python_function};
use serde_json::Value;

const PLATFORM_ROUTES: [&str; 7] = [
    "/v1/functions",
    "/v1/usage",
    "/v1/dead-letters",
    "/v1/concurrency",
    "/metrics",
    "/ready",
    "/live",
];

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn platform_endpoints_are_only_on_the_internal_listener() {
    let internal_port = free_port();
    let internal_at = format!("127.0.0.1:{internal_port}");
    let gw = LocalGateway::start(
        "listeners",
        &[(
            "echo.yaml",
            python_function("echo", "def handler(e, c):\n    return e\n", ""),
        )],
        &["--internal-listen", &internal_at],
    );
    let internal = format!("http://{internal_at}");
    for path in PLATFORM_ROUTES {
        let (status, body) = get(&gw.url(path)).await;
        assert_eq!(status, 404, "{path} on the public listener: {body}");
        assert_eq!(body["errorType"], "ResourceNotFoundException", "{path}");
        let (status, _) = get(&format!("{internal}{path}")).await;
        assert_eq!(status, 200, "{path} on the internal listener");
    }
    let (status, body) = get(&gw.url("/2015-03-31/functions/")).await;
    assert_eq!(status, 200, "ListFunctions on the public listener");
    assert_eq!(body["Functions"][0]["FunctionName"], "echo");
    let (status, _) = get(&format!("{internal}/2015-03-31/functions/")).await;
    assert_eq!(
        status, 404,
        "the Lambda API is not on the internal listener"
    );
    let (status, _) = get(&format!("{internal}/http/echo")).await;
    assert_eq!(
        status, 404,
        "HTTP triggers are not on the internal listener"
    );
}

#[tokio::test]
async fn one_listener_serves_everything_by_default() {
    let gw = LocalGateway::start(
        "one-listener",
        &[(
            "echo.yaml",
            python_function("echo", "def handler(e, c):\n    return e\n", ""),
        )],
        &[],
    );
    for path in PLATFORM_ROUTES {
        let (status, _) = get(&gw.url(path)).await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _) = get(&gw.url("/2015-03-31/functions/")).await;
    assert_eq!(status, 200);
}
