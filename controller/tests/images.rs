//! The platform's images: deploy/images.txt names each once, and deploy/,
//! the controller's default runtime image, the kind script and the
//! Dockerfiles' own build lines use exactly those names; deploy/images.sh
//! builds and pushes them all (checked with a fake `docker` that records
//! its arguments).

mod manifests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use manifests::{kustomize, root};
use porchlight_controller::config::Config;

/// (name, Dockerfile) from deploy/images.txt.
fn listed() -> Vec<(String, String)> {
    std::fs::read_to_string(root().join("deploy/images.txt"))
        .expect("deploy/images.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut fields = l.split_whitespace();
            let name = fields.next().expect("a name").to_string();
            let dockerfile = fields.next().expect("a Dockerfile").to_string();
            assert_eq!(fields.next(), None, "two fields: {l}");
            (name, dockerfile)
        })
        .collect()
}

/// NAME from `porchlight/NAME:dev`, the form every local name has.
fn local_name(image: &str) -> String {
    image
        .strip_prefix("porchlight/")
        .and_then(|r| r.strip_suffix(":dev"))
        .unwrap_or_else(|| panic!("{image} is not porchlight/NAME:dev"))
        .to_string()
}

/// Every `porchlight/NAME:dev` in a text.
fn names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .filter(|w| w.starts_with("porchlight/") && w.ends_with(":dev"))
        .map(local_name)
        .collect()
}

#[test]
fn every_image_name_is_the_listed_one() {
    let listed = listed();
    let names: BTreeSet<String> = listed.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), listed.len(), "a name listed twice");

    // Each Dockerfile exists and its build line tags the listed name.
    for (name, dockerfile) in &listed {
        let text = std::fs::read_to_string(root().join(dockerfile))
            .unwrap_or_else(|e| panic!("{dockerfile}: {e}"));
        let tagged = names_in(&text);
        assert_eq!(
            tagged,
            BTreeSet::from([name.clone()]),
            "{dockerfile}'s build line should tag porchlight/{name}:dev"
        );
    }

    // What deploy/ runs, and the runtime image it gives the controller.
    let mut used = BTreeSet::new();
    for o in kustomize("deploy", None)
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
    {
        for c in o["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers")
        {
            used.insert(local_name(c["image"].as_str().expect("image")));
            for e in c["env"].as_sequence().into_iter().flatten() {
                if e["name"] == "PORCHLIGHT_RUNTIME_IMAGE"
                    || e["name"] == "PORCHLIGHT_NODE_RUNTIME_IMAGE"
                {
                    used.insert(local_name(e["value"].as_str().expect("value")));
                }
            }
        }
    }
    assert_eq!(
        used,
        BTreeSet::from([
            "controller".into(),
            "gateway".into(),
            "nats".into(),
            "runtime-node".into(),
            "runtime-python".into()
        ])
    );

    // The controller's own defaults, when PORCHLIGHT_RUNTIME_IMAGE and
    // PORCHLIGHT_NODE_RUNTIME_IMAGE are unset.
    let config = Config::from_args(["porchlight-controller"]).expect("defaults");
    used.insert(local_name(&config.args.runtime_image));
    used.insert(local_name(&config.args.node_runtime_image));

    // The kind script and the end-to-end image build name the same images.
    for script in ["deploy/kind/up.sh", "tests/e2e/images.sh"] {
        let text = std::fs::read_to_string(root().join(script)).expect("script");
        let found = names_in(&text.replace("docker.io/", ""));
        assert!(!found.is_empty(), "{script} names no image");
        used.extend(found);
    }
    assert_eq!(used, names, "images used versus deploy/images.txt");
}

/// A directory with a `TOOL` that appends its arguments to `calls.log`
/// and fails on `build` when `FAIL_BUILD` is set.
fn fake_tool(tag: &str, tool: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("porchlight-images-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}/calls.log'\n[ \"$1\" = build ] && [ -n \"${{FAIL_BUILD:-}}\" ] && exit 7\nexit 0\n",
        dir.display()
    );
    let path = dir.join(tool);
    std::fs::write(&path, script).expect("write the fake tool");
    let mut perms = std::fs::metadata(&path).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).expect("chmod");
    dir
}

fn run_images(fake: &Path, env: &[(&str, &str)]) -> Output {
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("deploy/images.sh"))
        .env("PATH", path)
        .env_remove("REGISTRY")
        .env_remove("TAG")
        .env_remove("CONTAINER_TOOL")
        .env_remove("FAIL_BUILD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run deploy/images.sh")
}

fn calls(fake: &Path) -> Vec<String> {
    std::fs::read_to_string(fake.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn images_sh_builds_and_pushes_every_image_to_the_registry() {
    let fake = fake_tool("push", "docker");
    let out = run_images(
        &fake,
        &[
            ("REGISTRY", "registry.example.com/team/"),
            ("TAG", "v0.1.0"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = std::fs::canonicalize(root()).expect("root");
    let mut want = Vec::new();
    for (name, dockerfile) in listed() {
        let image = format!("registry.example.com/team/{name}:v0.1.0");
        want.push(format!(
            "build -f {}/{dockerfile} -t {image} {}",
            root.display(),
            root.display()
        ));
        want.push(format!("push {image}"));
        assert!(
            stdout.contains(&format!("push {image}")),
            "no progress line for {image}: {stdout}"
        );
    }
    assert_eq!(calls(&fake), want);
    assert!(
        stdout.contains("--set image.registry=registry.example.com/team --set image.tag=v0.1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kustomize edit set image porchlight/controller=registry.example.com/team/controller:v0.1.0 porchlight/gateway=registry.example.com/team/gateway:v0.1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""name":"PORCHLIGHT_RUNTIME_IMAGE","value":"registry.example.com/team/runtime-python:v0.1.0"},{"name":"PORCHLIGHT_NODE_RUNTIME_IMAGE","value":"registry.example.com/team/runtime-node:v0.1.0""#),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&fake);
}

#[test]
fn images_sh_uses_the_container_tool_asked_for() {
    let fake = fake_tool("podman", "podman");
    let docker = fake_tool("podman-docker", "docker");
    let path = format!("{}:{}", docker.display(), fake.display());
    let out = run_images(
        Path::new(&path),
        &[("REGISTRY", "localhost:5000"), ("CONTAINER_TOOL", "podman")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        calls(&docker).is_empty(),
        "docker was run: {:?}",
        calls(&docker)
    );
    let made = calls(&fake);
    assert_eq!(made.len(), 2 * listed().len());
    assert_eq!(
        made[1], "push localhost:5000/controller:dev",
        "TAG defaults to dev"
    );
    let _ = std::fs::remove_dir_all(&fake);
    let _ = std::fs::remove_dir_all(&docker);
}

#[test]
fn images_sh_refuses_without_a_registry_and_stops_at_a_failed_build() {
    let fake = fake_tool("refuse", "docker");
    let out = run_images(&fake, &[("TAG", "v1")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("set REGISTRY"), "{stderr}");
    assert!(calls(&fake).is_empty(), "{:?}", calls(&fake));

    let out = run_images(&fake, &[("REGISTRY", "r.example"), ("FAIL_BUILD", "1")]);
    assert!(!out.status.success());
    let made = calls(&fake);
    assert_eq!(made.len(), 1, "nothing after the failed build: {made:?}");
    assert!(made[0].starts_with("build "), "{made:?}");
    let _ = std::fs::remove_dir_all(&fake);
}
