//! Reads Function manifests from a directory (the same YAML `kubectl apply`
//! takes) and materialises their code for local environments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use porchlight_api::{Function, FunctionSpec};
use porchlight_core::FunctionKey;
use porchlight_core::ScalingSettings;
use serde::Deserialize;

use super::strict;

/// A validated function with its code on disk.
#[derive(Debug, Clone)]
pub struct LoadedFunction {
    /// Namespace (default `default`) and name.
    pub key: FunctionKey,
    /// The spec.
    pub spec: FunctionSpec,
    /// Parsed scaling settings.
    pub settings: ScalingSettings,
    /// Directory used as the environment's task root.
    pub task_root: PathBuf,
    /// Manifest it came from.
    pub file: PathBuf,
    /// Values of `envValueFrom` / `envFrom` read from the secrets directory,
    /// for the environment processes only (never shown by the Lambda API).
    pub resolved_env: BTreeMap<String, String>,
}

/// A manifest problem: one line naming the file (and the line in it, when
/// known: `file:LINE: problem`, as compilers write it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {problem}", line.map_or_else(String::new, |l| format!(":{l}")))]
pub struct ManifestError {
    /// The file.
    pub file: String,
    /// The line (1-based), when the problem is at one.
    pub line: Option<usize>,
    /// What is wrong.
    pub problem: String,
}

fn err(file: &Path, problem: impl Into<String>) -> ManifestError {
    ManifestError {
        file: file.display().to_string(),
        line: None,
        problem: problem.into(),
    }
}

/// The `*.yaml`/`*.yml` files in `dir`, sorted.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_manifest(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether `path` names a manifest by its extension (`.yaml`, `.yml`).
pub fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| x == "yaml" || x == "yml")
}

/// Parses every manifest in `dir` (sorted), skipping documents of other
/// kinds. Code is not materialised yet.
pub fn parse_dir(dir: &Path) -> Result<Vec<(PathBuf, Function)>, ManifestError> {
    let mut out = Vec::new();
    for file in manifest_files(dir)? {
        out.extend(
            parse_file(&file)?
                .into_iter()
                .map(|function| (file.clone(), function)),
        );
    }
    Ok(out)
}

/// Reads and parses one manifest file.
pub fn parse_file(file: &Path) -> Result<Vec<Function>, ManifestError> {
    let text = std::fs::read_to_string(file).map_err(|e| err(file, format!("cannot read: {e}")))?;
    parse_manifest(file, &text)
}

/// Parses the text of one manifest file (`file` names it in errors and
/// logs): its porchlight.dev Functions, skipping documents of other kinds.
/// A document meant as a Function is read strictly (see `strict.rs`): an
/// unknown field, or a wrong `apiVersion` or `kind`, is refused with its
/// line. Pure: reads nothing from disk.
pub fn parse_manifest(file: &Path, text: &str) -> Result<Vec<Function>, ManifestError> {
    let mut out = Vec::new();
    // The same documents again, walked strictly from the parser's events
    // (which know their lines) once a document is seen to be a Function.
    let strict_docs = serde_yaml::Deserializer::from_str(text);
    for ((i, doc), strict_doc) in serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .zip(strict_docs)
    {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| err(file, format!("document {}: invalid YAML: {e}", i + 1)))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let api_version = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or("");
        if !strict::looks_like_a_function(api_version) {
            tracing::debug!(file = %file.display(), kind, "skipping a document that is not a porchlight.dev Function");
            continue;
        }
        strict::check(text, strict_doc).map_err(|p| ManifestError {
            line: p.line,
            ..err(file, format!("document {}: {}", i + 1, p.message))
        })?;
        let function: Function = serde_yaml::from_value(value)
            .map_err(|e| err(file, format!("document {}: {e}", i + 1)))?;
        out.push(function);
    }
    Ok(out)
}

/// Validates the functions and writes inline code under `code_dir`;
/// `envValueFrom` and `envFrom` are read from `secrets_dir` (see
/// [`resolve_env_sources`]).
pub fn load_dir(
    dir: &Path,
    code_dir: &Path,
    secrets_dir: Option<&Path>,
) -> Result<Vec<LoadedFunction>, ManifestError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for file in manifest_files(dir)? {
        for f in load_file(&file, code_dir, secrets_dir)? {
            if !seen.insert(f.key.name.clone()) {
                return Err(err(
                    &file,
                    format!("function '{}' is defined twice", f.key.name),
                ));
            }
            out.push(f);
        }
    }
    Ok(out)
}

/// Reads, validates and materialises the functions of one manifest file
/// (see [`load_dir`]); a name defined twice in it is a problem.
pub fn load_file(
    file: &Path,
    code_dir: &Path,
    secrets_dir: Option<&Path>,
) -> Result<Vec<LoadedFunction>, ManifestError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for function in parse_file(file)? {
        let name = function
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| err(file, "metadata.name is missing"))?;
        if !valid_name(&name) {
            return Err(err(
                file,
                format!("metadata.name '{name}' must be a DNS label (a-z, 0-9, '-')"),
            ));
        }
        let namespace = function
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        if !seen.insert(name.clone()) {
            return Err(err(file, format!("function '{name}' is defined twice")));
        }
        let spec = function.spec;
        let settings = spec
            .validate()
            .map_err(|problems| err(file, format!("function '{name}': {}", problems.join("; "))))?;
        let resolved_env =
            resolve_env_sources(&spec, secrets_dir, |var| std::env::var_os(var).is_some())
                .map_err(|problems| {
                    err(file, format!("function '{name}': {}", problems.join("; ")))
                })?;
        let task_root = materialise(file, &name, &spec, code_dir)?;
        out.push(LoadedFunction {
            key: FunctionKey::new(namespace, name),
            spec,
            settings,
            task_root,
            file: file.to_path_buf(),
            resolved_env,
        });
    }
    Ok(out)
}

/// Local mode's Secrets and ConfigMaps: files `secrets_dir/NAME/KEY`, the
/// layout of a mounted Secret (`kubectl create secret generic NAME
/// --from-file=...` from the same files). An `envValueFrom` variable comes
/// from its file, or else from the gateway's own environment (`in_env`: a
/// variable of that name is inherited as it is); `envFrom` takes every file
/// of `secrets_dir/NAME/`. What cannot be found is a problem, named with
/// its source (never a value).
pub fn resolve_env_sources(
    spec: &FunctionSpec,
    secrets_dir: Option<&Path>,
    in_env: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut values = BTreeMap::new();
    let mut problems = Vec::new();
    let read = |path: PathBuf| {
        std::fs::read(&path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    for (var, source) in &spec.env_value_from {
        let key = source
            .secret_key_ref
            .as_ref()
            .or(source.config_map_key_ref.as_ref());
        let from_file = secrets_dir
            .zip(key)
            .and_then(|(dir, k)| read(dir.join(&k.name).join(&k.key)));
        match from_file {
            Some(value) => {
                values.insert(var.clone(), value);
            }
            None if in_env(var) => {}
            None => problems.push(format!(
                "spec.envValueFrom.{var} ({}): no file {} and no {var} in the gateway's environment",
                source.describe(),
                secrets_dir.zip(key).map_or_else(
                    || "(no --secrets-dir)".to_string(),
                    |(dir, k)| dir.join(&k.name).join(&k.key).display().to_string()
                ),
            )),
        }
    }
    for (i, from) in spec.env_from.iter().enumerate() {
        let Some(name) = from
            .secret_ref
            .as_ref()
            .or(from.config_map_ref.as_ref())
            .map(|r| r.name.as_str())
        else {
            continue;
        };
        let Some(dir) = secrets_dir.map(|d| d.join(name)) else {
            problems.push(format!("spec.envFrom[{i}] ({name}) needs --secrets-dir"));
            continue;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            problems.push(format!("spec.envFrom[{i}]: no directory {}", dir.display()));
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with('.') || !entry.path().is_file() {
                continue;
            }
            if let Some(value) = read(entry.path()) {
                let var = format!("{}{file_name}", from.prefix.as_deref().unwrap_or(""));
                values.entry(var).or_insert(value);
            }
        }
    }
    values.retain(|var, _| !var.starts_with(porchlight_core::shim::RESERVED_ENV_PREFIX));
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(problems)
    }
}

/// A short name for one version of inline code (what decides its files).
fn code_version(runtime: &str, handler: Option<&str>, source: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (runtime, handler, source).hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn valid_name(name: &str) -> bool {
    name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn materialise(
    file: &Path,
    name: &str,
    spec: &FunctionSpec,
    code_dir: &Path,
) -> Result<PathBuf, ManifestError> {
    let code = &spec.code;
    if let Some(path) = &code.path {
        let base = file.parent().unwrap_or(Path::new("."));
        let root = base.join(path);
        if !root.is_dir() {
            return Err(err(
                file,
                format!("function '{name}': spec.code.path '{path}' is not a directory"),
            ));
        }
        return root
            .canonicalize()
            .map_err(|e| err(file, format!("function '{name}': spec.code.path: {e}")));
    }
    let Some(source) = &code.inline else {
        return Err(err(
            file,
            format!(
                "function '{name}': local mode runs only inline or path code (configMap and image need the cluster)"
            ),
        ));
    };
    // One folder per version of the code: an environment started before an
    // edit keeps reading the files it started with (a re-init after a
    // timeout included), and the next version never meets a stale cache.
    let root =
        code_dir
            .join(name)
            .join(code_version(&spec.runtime, spec.handler.as_deref(), source));
    std::fs::create_dir_all(&root)
        .map_err(|e| err(file, format!("cannot create {}: {e}", root.display())))?;
    let target = if spec.runtime == "provided" {
        root.join("bootstrap")
    } else if porchlight_api::function::is_node_runtime(&spec.runtime) {
        let handler = spec.handler.as_deref().unwrap_or("");
        let Some(rel) = porchlight_api::function::node_inline_file(handler, source) else {
            return Err(err(
                file,
                format!("function '{name}': handler '{handler}' names no module file"),
            ));
        };
        root.join(rel)
    } else {
        let handler = spec.handler.as_deref().unwrap_or("");
        let module = handler.rsplit_once('.').map(|(m, _)| m).unwrap_or(handler);
        if module.is_empty() || module.split('.').any(|p| p.is_empty() || p.contains('/')) {
            return Err(err(
                file,
                format!("function '{name}': handler '{handler}' has no module part"),
            ));
        }
        let rel: PathBuf = module.split('.').collect();
        root.join(rel).with_extension("py")
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| err(file, format!("cannot create {}: {e}", parent.display())))?;
    }
    // This version may be written already (a reload reads every manifest
    // again) and an environment may be reading it: it is left alone then,
    // and otherwise written whole under another name and renamed into
    // place, so that no reader ever sees a half-written file.
    if std::fs::read(&target).is_ok_and(|written| written == source.as_bytes()) {
        return Ok(root);
    }
    let partial = target.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, source)
        .map_err(|e| err(file, format!("cannot write {}: {e}", partial.display())))?;
    if spec.runtime == "provided" {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err(file, format!("cannot make bootstrap executable: {e}")))?;
    }
    std::fs::rename(&partial, &target)
        .map_err(|e| err(file, format!("cannot write {}: {e}", target.display())))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("porchlight-manifests-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    #[test]
    fn node_inline_code_is_written_where_the_handler_loads_it() {
        let dir = tmp("node");
        std::fs::write(
            dir.join("fns.yaml"),
            "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: cjs}\nspec:\n  runtime: nodejs20.x\n  handler: index.handler\n  code: {inline: 'exports.handler = async () => 1;'}\n---\napiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: esm}\nspec:\n  runtime: nodejs22.x\n  handler: src/app.handler\n  code:\n    inline: |\n      import os from 'node:os';\n      export const handler = async () => os.platform();\n",
        )
        .expect("write");
        let fns = load_dir(&dir, &dir.join("code"), None).expect("valid");
        assert_eq!(
            std::fs::read_to_string(fns[0].task_root.join("index.js")).expect("index.js"),
            "exports.handler = async () => 1;"
        );
        assert!(fns[1].task_root.join("src/app.mjs").is_file());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn loads_multi_document_yaml_and_writes_inline_code() {
        let dir = tmp("ok");
        std::fs::write(
            dir.join("fns.yaml"),
            "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec:\n  handler: pkg.app.h\n  code: {inline: 'def h(e, c): return 1'}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: b, namespace: team}\nspec:\n  handler: app.h\n  code: {inline: 'x'}\n",
        )
        .expect("write");
        let code = dir.join("code");
        let fns = load_dir(&dir, &code, None).expect("valid");
        assert_eq!(fns.len(), 2);
        assert_eq!(fns[0].key, FunctionKey::new("default", "a"));
        assert_eq!(fns[1].key.namespace, "team");
        assert!(fns[0].task_root.join("pkg/app.py").is_file());
        assert!(fns[0].task_root.starts_with(code.join("a")));
        assert!(fns[1].task_root.join("app.py").is_file());
        // Another version of the code gets a folder of its own.
        std::fs::write(
            dir.join("fns.yaml"),
            "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec:\n  handler: pkg.app.h\n  code: {inline: 'def h(e, c): return 2'}\n",
        )
        .expect("write");
        let again = load_dir(&dir, &code, None).expect("valid");
        assert_ne!(again[0].task_root, fns[0].task_root);
        assert!(fns[0].task_root.join("pkg/app.py").is_file());
    }

    #[test]
    fn secrets_come_from_files_or_the_environment_and_missing_ones_are_named() {
        let dir = tmp("secrets");
        std::fs::create_dir_all(dir.join("db")).expect("dir");
        std::fs::write(dir.join("db/password"), "s3cret").expect("write");
        std::fs::create_dir_all(dir.join("keys")).expect("dir");
        std::fs::write(dir.join("keys/API_KEY"), "k").expect("write");
        std::fs::write(dir.join("keys/PORCHLIGHT_LISTEN"), "evil").expect("write");
        let spec: FunctionSpec = serde_yaml::from_str(
            "handler: app.h\ncode: {inline: x}\nenvValueFrom:\n  DB_PASSWORD: {secretKeyRef: {name: db, key: password}}\n  HOME_DIR: {configMapKeyRef: {name: settings, key: home}}\nenvFrom:\n  - {secretRef: {name: keys}, prefix: APP_}\n",
        )
        .expect("spec");
        let got = resolve_env_sources(&spec, Some(&dir), |v| v == "HOME_DIR").expect("resolved");
        assert_eq!(
            got,
            BTreeMap::from([
                ("APP_API_KEY".to_string(), "k".to_string()),
                ("APP_PORCHLIGHT_LISTEN".to_string(), "evil".to_string()),
                ("DB_PASSWORD".to_string(), "s3cret".to_string()),
            ])
        );
        let problems = resolve_env_sources(&spec, Some(&dir), |_| false).expect_err("missing");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("HOME_DIR (configMap settings/home)"),
            "{problems:?}"
        );
        let problems = resolve_env_sources(&spec, None, |_| false).expect_err("no dir");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(!problems.join(" ").contains("s3cret"));
    }

    #[test]
    fn bad_manifest_names_file_and_problem() {
        let dir = tmp("bad");
        std::fs::write(
            dir.join("bad.yml"),
            "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: bad}\nspec:\n  runtime: ruby\n  handler: app.h\n  code: {inline: 'x'}\n",
        )
        .expect("write");
        let e = load_dir(&dir, &dir.join("code"), None).expect_err("invalid");
        assert!(e.file.ends_with("bad.yml"));
        assert!(e.problem.contains("spec.runtime"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn a_bad_schedule_names_file_trigger_and_reason() {
        let dir = tmp("bad-schedule");
        std::fs::write(
            dir.join("tick.yaml"),
            "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: tick}\nspec:\n  handler: app.h\n  code: {inline: 'x'}\n  triggers:\n    - schedule: rate(1 minutes)\n",
        )
        .expect("write");
        let e = load_dir(&dir, &dir.join("code"), None).expect_err("invalid");
        assert!(e.file.ends_with("tick.yaml"));
        assert_eq!(
            e.problem,
            "function 'tick': spec.triggers[0].schedule: rate(1 minutes): a value of 1 takes the unit \"minute\""
        );
    }
}
