//! Reconcile against a fake API server (tower-test mock service).

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use kube::runtime::controller::Action;
use porchlight_controller::reconcile::{error_policy, reconcile};
use porchlight_core::FunctionKey;
use porchlight_core::scaling::ScaleRecord;
use serde_json::{Value, json};

fn env_value(deployment: &Value, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

fn assert_owned(object: &Value) {
    let owner = &object["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Function", "{object}");
    assert_eq!(owner["apiVersion"], "porchlight.dev/v1alpha1");
    assert_eq!(owner["name"], "hello");
    assert_eq!(owner["uid"], "0b5e-uid");
    assert_eq!(owner["controller"], true);
    let labels = &object["metadata"]["labels"];
    assert_eq!(labels["porchlight.dev/function"], "hello");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "porchlight");
    assert_eq!(labels["app.kubernetes.io/name"], "hello");
}

#[tokio::test]
async fn create_applies_configmap_deployment_service_and_status() {
    let api = FakeApi::default();
    let (ctx, metrics, _) = context(&api);
    let f = function(&api, HELLO);

    let action = reconcile(f, ctx).await.expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(metrics.reconciles.get(), 1);

    // ConfigMap: server-side apply under the controller's field manager.
    let cm = &api.requests(Method::PATCH, "/configmaps/fn-hello-code")[0];
    assert!(
        cm.query.contains("fieldManager=porchlight-controller"),
        "{}",
        cm.query
    );
    assert!(cm.query.contains("force=true"));
    let cm_body = cm.body.clone().expect("body");
    assert_owned(&cm_body);
    assert!(
        cm_body["data"]["app.py"]
            .as_str()
            .is_some_and(|c| c.contains("def lambda_handler"))
    );

    // Deployment: created by the autoscaler's apply with the initial replicas,
    // then ours without replicas, then the autoscaler's with replicas only.
    assert!(api.requests(Method::POST, "/deployments").is_empty());
    let applies = api.requests(Method::PATCH, "/deployments/fn-hello");
    assert_eq!(applies.len(), 3, "{applies:?}");
    let managers: Vec<bool> = applies
        .iter()
        .map(|a| a.query.contains("fieldManager=porchlight-autoscaler"))
        .collect();
    assert_eq!(managers, [true, false, true], "{applies:?}");
    assert!(
        applies[1]
            .query
            .contains("fieldManager=porchlight-controller")
    );
    assert!(applies.iter().all(|a| a.query.contains("force=true")));
    assert!(
        applies[1].body.as_ref().expect("body")["spec"]
            .get("replicas")
            .is_none(),
        "the reconciler's apply never carries replicas"
    );
    assert_eq!(
        applies[2].body.as_ref().expect("body")["spec"],
        json!({"replicas": 0}),
        "the autoscaler's applied configuration is its replicas alone"
    );
    let created = &applies[0..1];
    let d = created[0].body.clone().expect("body");
    assert_owned(&d);
    assert_eq!(d["metadata"]["name"], "fn-hello");
    assert_eq!(
        d["spec"]["replicas"], 0,
        "scale-to-zero function starts at zero"
    );
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({"porchlight.dev/function": "hello"})
    );
    let pod = &d["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["porchlight.dev/function"],
        "hello"
    );
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "porchlight"
    );
    assert!(pod["metadata"]["annotations"]["porchlight.dev/code-hash"].is_string());
    assert_eq!(pod["spec"]["containers"][0]["name"], "runtime");
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        "porchlight/runtime-python:dev"
    );
    assert_eq!(pod["spec"]["enableServiceLinks"], false);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 16);
    assert_eq!(
        env_value(&d, "PORCHLIGHT_FUNCTION_NAME").as_deref(),
        Some("hello")
    );
    assert_eq!(
        env_value(&d, "PORCHLIGHT_HANDLER").as_deref(),
        Some("app.lambda_handler")
    );
    assert_eq!(
        env_value(&d, "PORCHLIGHT_TIMEOUT_SECONDS").as_deref(),
        Some("10")
    );
    assert_eq!(
        env_value(&d, "PORCHLIGHT_EXIT_ON_INIT_ERROR").as_deref(),
        Some("true"),
        "a failed init ends the container, so the kubelet retries and the reconciler sees it"
    );
    assert_eq!(
        env_value(&d, "PORCHLIGHT_TASK_ROOT").as_deref(),
        Some("/var/task")
    );
    assert_eq!(
        env_value(&d, "PORCHLIGHT_FREEZE").as_deref(),
        Some("true"),
        "environments freeze between invocations by default, as in Lambda"
    );
    assert_eq!(env_value(&d, "GREETING").as_deref(), Some("hello"));
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/ready"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "256Mi"
    );
    let sc = &pod["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));

    // Service: headless, port 8080 `invoke`.
    let svc = api.requests(Method::PATCH, "/services/fn-hello")[0]
        .body
        .clone()
        .expect("body");
    assert_owned(&svc);
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert_eq!(svc["spec"]["ports"][0]["name"], "invoke");

    // Nothing ever adds a finalizer: deletion cascades through owner references.
    assert!(api.seen().iter().all(|s| {
        s.body
            .as_ref()
            .is_none_or(|b| b["metadata"]["finalizers"].is_null())
    }));
    assert!(
        api.requests(Method::PATCH, "/functions/hello").is_empty(),
        "the Function itself is never patched"
    );
}

#[tokio::test]
async fn resync_of_an_unchanged_function_makes_no_api_call() {
    let api = FakeApi::default();
    let (ctx, _, _) = context(&api);
    let f = function(&api, HELLO);
    reconcile(f, ctx.clone()).await.expect("create");
    let written: porchlight_api::Function =
        serde_json::from_value(api.get(&format!("{FUNCTIONS}/hello")).expect("function"))
            .expect("function with status");
    assert!(written.status.is_some());

    api.clear_seen();
    reconcile(std::sync::Arc::new(written.clone()), ctx.clone())
        .await
        .expect("resync");
    assert!(api.seen().is_empty(), "{:?}", api.seen());

    // A deleted Service is put back, and only the Service.
    api.delete(&format!("{SERVICES}/fn-hello"));
    reconcile(std::sync::Arc::new(written), ctx)
        .await
        .expect("repair");
    let seen: Vec<String> = api
        .seen()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(seen, [format!("PATCH {SERVICES}/fn-hello")]);
}

#[tokio::test]
async fn status_is_applied_with_one_field_manager() {
    let api = FakeApi::default();
    let (ctx, _, book) = context(&api);
    let f = function(&api, HELLO);
    api.put(
        &format!("{DEPLOYMENTS}/fn-hello"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "fn-hello", "namespace": "demo"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"porchlight.dev/function": "hello"}},
                        "template": {}},
               "status": {"replicas": 2, "readyReplicas": 1}}),
    );
    book.set(
        FunctionKey::new("demo", "hello"),
        ScaleRecord {
            desired: 2,
            observed_concurrency: 1.4,
            last_scale_time: Some("2026-11-27T10:00:00Z".into()),
            keep_alive: None,
        },
    );
    reconcile(f, ctx).await.expect("reconcile succeeds");

    let patches = api.requests(Method::PATCH, "/functions/hello/status");
    assert_eq!(patches.len(), 1);
    assert!(
        patches[0]
            .query
            .contains("fieldManager=porchlight-controller")
    );
    assert!(patches[0].query.contains("force=true"));
    let body = patches[0].body.clone().expect("body");
    assert_eq!(body["apiVersion"], "porchlight.dev/v1alpha1");
    assert_eq!(body["kind"], "Function");
    assert!(
        body.get("spec").is_none(),
        "a status apply carries only status"
    );
    let s = &body["status"];
    assert_eq!(s["replicas"], 2);
    assert_eq!(s["readyReplicas"], 1);
    assert_eq!(s["desiredReplicas"], 2);
    assert_eq!(s["observedConcurrency"], 1);
    assert_eq!(s["lastScaleTime"], "2026-11-27T10:00:00Z");
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(s["selector"], "porchlight.dev/function=hello");
    assert_eq!(
        s["url"],
        "http://porchlight-gateway.porchlight-system.svc:8080/2015-03-31/functions/hello/invocations"
    );
    assert_eq!(s["conditions"][0]["type"], "Ready");
    assert_eq!(s["conditions"][0]["status"], "True");
    assert_eq!(s["conditions"][0]["reason"], "Ready");
    assert!(s["conditions"][0]["lastTransitionTime"].is_string());

    // The Deployment existed: applied without replicas, which the autoscaler owns.
    assert!(api.requests(Method::POST, "/deployments").is_empty());
    let applied = api.requests(Method::PATCH, "/deployments/fn-hello")[0]
        .body
        .clone()
        .expect("body");
    assert!(
        applied["spec"].get("replicas").is_none(),
        "{}",
        applied["spec"]
    );
    assert_eq!(
        api.get(&format!("{DEPLOYMENTS}/fn-hello")).expect("kept")["spec"]["replicas"],
        2
    );
}

#[tokio::test]
async fn spec_change_rolls_a_new_pod_template() {
    let api = FakeApi::default();
    let (ctx, _, _) = context(&api);
    let f = function(&api, HELLO);
    reconcile(f.clone(), ctx.clone()).await.expect("create");
    let first = api
        .get(&format!("{DEPLOYMENTS}/fn-hello"))
        .expect("created");
    let first_hash =
        first["spec"]["template"]["metadata"]["annotations"]["porchlight.dev/code-hash"].clone();

    let mut changed = (*f).clone();
    changed.spec.code.inline = Some("def lambda_handler(event, context):\n    return 2\n".into());
    changed.spec.env.insert("GREETING".into(), "bonjour".into());
    changed.metadata.generation = Some(2);
    api.clear_seen();
    reconcile(std::sync::Arc::new(changed), ctx)
        .await
        .expect("update");

    let applied = api.requests(Method::PATCH, "/deployments/fn-hello");
    assert_eq!(
        applied.len(),
        1,
        "existing deployment is applied, not created"
    );
    let d = applied[0].body.clone().expect("body");
    let hash = &d["spec"]["template"]["metadata"]["annotations"]["porchlight.dev/code-hash"];
    assert_ne!(hash, &first_hash, "new code, new template hash");
    assert_eq!(env_value(&d, "GREETING").as_deref(), Some("bonjour"));
    let cm = api.requests(Method::PATCH, "/configmaps/fn-hello-code")[0]
        .body
        .clone()
        .expect("body");
    assert!(
        cm["data"]["app.py"]
            .as_str()
            .is_some_and(|c| c.contains("return 2"))
    );
    let status = &api.requests(Method::PATCH, "/functions/hello/status")[0]
        .body
        .clone()
        .expect("body")["status"];
    assert_eq!(status["observedGeneration"], 2);
}

#[tokio::test]
async fn invalid_spec_sets_condition_and_warns_once_without_error_loop() {
    let api = FakeApi::default();
    let (ctx, metrics, _) = context(&api);
    let bad = HELLO.replace(
        "memoryMiB: 256",
        "memoryMiB: 256\n  scaling: {minScale: 5, maxScale: 2}",
    );
    let f = function(&api, &bad);

    let action = reconcile(f, ctx.clone())
        .await
        .expect("an invalid spec is not a reconcile error");
    assert_eq!(action, Action::await_change());
    assert_eq!(metrics.invalid_specs.get(), 1);
    assert!(api.requests(Method::POST, "/deployments").is_empty());
    assert!(
        api.requests(Method::PATCH, "/deployments/fn-hello")
            .is_empty()
    );
    let status = api.requests(Method::PATCH, "/functions/hello/status")[0]
        .body
        .clone()
        .expect("body");
    let cond = &status["status"]["conditions"][0];
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "InvalidSpec");
    assert!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.contains("maxScale")),
        "{cond}"
    );
    let events = api.requests(Method::POST, "/events");
    assert_eq!(events.len(), 1);
    let ev = events[0].body.clone().expect("event");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "InvalidSpec");
    assert_eq!(ev["regarding"]["kind"], "Function");
    assert_eq!(ev["regarding"]["name"], "hello");

    // Reconciled again with that status stored: no second Event.
    let stored: porchlight_api::Function =
        serde_json::from_value(api.get(&format!("{FUNCTIONS}/hello")).expect("stored"))
            .expect("function");
    reconcile(std::sync::Arc::new(stored), ctx)
        .await
        .expect("still fine");
    assert_eq!(api.requests(Method::POST, "/events").len(), 1);
    assert_eq!(
        metrics.reconcile_errors.with_label_values(&["api"]).get(),
        0
    );
}

#[tokio::test]
async fn local_only_code_path_is_invalid_on_a_cluster() {
    let api = FakeApi::default();
    let (ctx, _, _) = context(&api);
    let yaml = HELLO.replace(
        "  code:\n    inline: |",
        "  code:\n    path: ./src\n  x-ignored: |",
    );
    let mut f: porchlight_api::Function = serde_yaml::from_str(&yaml).expect("yaml");
    f.metadata.uid = Some("0b5e-uid".into());
    api.put(
        &format!("{FUNCTIONS}/hello"),
        serde_json::to_value(&f).expect("json"),
    );
    reconcile(std::sync::Arc::new(f), ctx)
        .await
        .expect("no error");
    let status = api.requests(Method::PATCH, "/functions/hello/status")[0]
        .body
        .clone()
        .expect("body");
    assert_eq!(status["status"]["conditions"][0]["reason"], "InvalidSpec");
}

#[tokio::test]
async fn init_failure_in_a_pod_is_reported() {
    let api = FakeApi::default();
    let (ctx, _, _) = context(&api);
    let f = function(&api, HELLO);
    api.put(
        &format!("{DEPLOYMENTS}/fn-hello"),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "fn-hello", "namespace": "demo"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"porchlight.dev/function": "hello"}}, "template": {}},
               "status": {"replicas": 1}}),
    );
    api.put(
        &format!("{PODS}/fn-hello-abc"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "fn-hello-abc", "namespace": "demo", "labels": {"porchlight.dev/function": "hello"}},
               "status": {"containerStatuses": [{
                   "name": "runtime", "ready": false, "restartCount": 2, "image": "x", "imageID": "",
                   "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                   "lastState": {"terminated": {"exitCode": 1,
                        "message": "{\"errorType\":\"Runtime.ImportModuleError\",\"errorMessage\":\"Unable to import module 'app': No module named 'requests'\"}"}}}]}}),
    );
    reconcile(f, ctx).await.expect("reconcile");
    let pods = api.requests(Method::GET, "/pods");
    assert_eq!(pods.len(), 1);
    assert!(
        pods[0]
            .query
            .contains("labelSelector=porchlight.dev%2Ffunction%3Dhello"),
        "{}",
        pods[0].query
    );
    let status = api.requests(Method::PATCH, "/functions/hello/status")[0]
        .body
        .clone()
        .expect("body");
    let cond = &status["status"]["conditions"][0];
    assert_eq!(cond["reason"], "InitFailed");
    assert_eq!(
        cond["message"],
        "Runtime.ImportModuleError: Unable to import module 'app': No module named 'requests'",
        "the shim's termination message, as errorType: errorMessage"
    );
    let events = api.requests(Method::POST, "/events");
    assert_eq!(
        events[0].body.as_ref().expect("event")["reason"],
        "InitFailed"
    );
}

#[tokio::test]
async fn api_errors_requeue_with_growing_backoff() {
    let api = FakeApi::default();
    let (ctx, metrics, _) = context(&api);
    let f = function(&api, HELLO);
    api.fail_once(&format!("{CONFIGMAPS}/fn-hello-code"));
    let err = reconcile(f.clone(), ctx.clone())
        .await
        .expect_err("500 from the API");
    assert_eq!(
        error_policy(f.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        error_policy(f.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(
        error_policy(f.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(4))
    );
    assert_eq!(
        metrics.reconcile_errors.with_label_values(&["api"]).get(),
        3
    );
    // Success resets the backoff.
    reconcile(f.clone(), ctx.clone()).await.expect("recovers");
    assert_eq!(
        error_policy(f, &err, ctx),
        Action::requeue(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn code_from_a_users_configmap_is_mounted_and_hashed() {
    let api = FakeApi::default();
    let (ctx, _, _) = context(&api);
    let yaml = HELLO.replace(
        "  code:\n    inline: |\n      def lambda_handler(event, context):\n          return {\"statusCode\": 200, \"body\": \"Hello from Lambda!\"}\n",
        "  code:\n    configMap: {name: my-code}\n",
    );
    let f = function(&api, &yaml);
    api.put(
        &format!("{CONFIGMAPS}/my-code"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "my-code", "namespace": "demo"}, "data": {"app.py": "v1"}}),
    );
    reconcile(f.clone(), ctx.clone()).await.expect("create");
    assert!(
        api.requests(Method::PATCH, "/configmaps/fn-hello-code")
            .is_empty(),
        "no inline code, no generated ConfigMap"
    );
    let d = api
        .get(&format!("{DEPLOYMENTS}/fn-hello"))
        .expect("created");
    let volumes = d["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .clone();
    assert!(volumes.iter().any(|v| v["configMap"]["name"] == "my-code"));
    let h1 = d["spec"]["template"]["metadata"]["annotations"]["porchlight.dev/code-hash"].clone();

    api.put(
        &format!("{CONFIGMAPS}/my-code"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "my-code", "namespace": "demo"}, "data": {"app.py": "v2"}}),
    );
    reconcile(f, ctx).await.expect("update");
    let d = api.get(&format!("{DEPLOYMENTS}/fn-hello")).expect("kept");
    assert_ne!(
        d["spec"]["template"]["metadata"]["annotations"]["porchlight.dev/code-hash"],
        h1
    );
}
