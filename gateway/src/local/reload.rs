//! What a change in local mode's folder means for its functions: which are
//! new, changed or gone, file by file, keeping the last good version of a
//! file that no longer reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::manifests::{LoadedFunction, ManifestError, load_file, manifest_files};

/// The functions of local mode's folder as last read, by manifest file.
pub struct Catalog {
    dir: PathBuf,
    code_dir: PathBuf,
    secrets_dir: Option<PathBuf>,
    /// The last good functions of each manifest file.
    files: BTreeMap<PathBuf, Vec<LoadedFunction>>,
}

/// What one reading of the folder changed.
#[derive(Debug, Default)]
pub struct Reload {
    /// Functions that were not there.
    pub added: Vec<LoadedFunction>,
    /// Functions whose spec, code or resolved environment changed.
    pub changed: Vec<LoadedFunction>,
    /// Functions no manifest defines any more (their last version).
    pub removed: Vec<LoadedFunction>,
    /// Manifests that do not read (their functions stay as they were).
    pub problems: Vec<ManifestError>,
}

impl Reload {
    /// Whether any function changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Whether `new` must replace the environments of `old`.
fn differs(old: &LoadedFunction, new: &LoadedFunction) -> bool {
    old.key != new.key
        || old.spec != new.spec
        || old.task_root != new.task_root
        || old.resolved_env != new.resolved_env
}

impl Catalog {
    /// A catalog of `dir` whose functions, as loaded at start, are `functions`.
    pub fn new(
        dir: &Path,
        code_dir: &Path,
        secrets_dir: Option<&Path>,
        functions: &[LoadedFunction],
    ) -> Self {
        let mut files: BTreeMap<PathBuf, Vec<LoadedFunction>> = BTreeMap::new();
        for f in functions {
            files.entry(f.file.clone()).or_default().push(f.clone());
        }
        Catalog {
            dir: dir.to_path_buf(),
            code_dir: code_dir.to_path_buf(),
            secrets_dir: secrets_dir.map(Path::to_path_buf),
            files,
        }
    }

    /// The functions in force, by name; where two files define one name,
    /// the first file (in sorted order) wins.
    pub fn functions(&self) -> BTreeMap<String, LoadedFunction> {
        let mut out = BTreeMap::new();
        for f in self.files.values().flatten() {
            out.entry(f.key.name.clone()).or_insert_with(|| f.clone());
        }
        out
    }

    /// Reads the folder again. A file that reads replaces what it defined;
    /// one that does not keeps its last good functions (and is reported);
    /// a file that is gone takes its functions with it. `code_changed`
    /// says whether the files under a function's `code.path` changed.
    pub fn rescan(&mut self, code_changed: impl Fn(&LoadedFunction) -> bool) -> Reload {
        let before = self.functions();
        let mut reload = Reload::default();
        let files = match manifest_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                reload.problems.push(e);
                return reload;
            }
        };
        let mut next = BTreeMap::new();
        for file in files {
            let functions = match load_file(&file, &self.code_dir, self.secrets_dir.as_deref()) {
                Ok(functions) => functions,
                Err(e) => {
                    reload.problems.push(e);
                    self.files.get(&file).cloned().unwrap_or_default()
                }
            };
            next.insert(file, functions);
        }
        // A name that another file already defines is not taken.
        let mut owner: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (file, functions) in &mut next {
            functions.retain(|f| match owner.get(&f.key.name) {
                Some(first) => {
                    reload.problems.push(ManifestError {
                        file: file.display().to_string(),
                        line: None,
                        problem: format!(
                            "function '{}' is defined twice (also in {})",
                            f.key.name,
                            first.display()
                        ),
                    });
                    false
                }
                None => {
                    owner.insert(f.key.name.clone(), file.clone());
                    true
                }
            });
        }
        self.files = next;
        let after = self.functions();
        for (name, new) in &after {
            match before.get(name) {
                None => reload.added.push(new.clone()),
                Some(old) if differs(old, new) || code_changed(old) => {
                    reload.changed.push(new.clone());
                }
                Some(_) => {}
            }
        }
        for (name, old) in before {
            if !after.contains_key(&name) {
                reload.removed.push(old);
            }
        }
        reload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::manifests::load_dir;

    fn tmp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("porchlight-reload-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("fns")).expect("tmp");
        d
    }

    fn manifest(name: &str, code: &str, extra: &str) -> String {
        format!(
            "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\nspec:\n  handler: app.h\n  code: {{inline: '{code}'}}\n{extra}"
        )
    }

    fn names(functions: &[LoadedFunction]) -> Vec<&str> {
        functions.iter().map(|f| f.key.name.as_str()).collect()
    }

    #[test]
    fn added_changed_removed_and_a_bad_edit_keeps_the_last_good_version() {
        let dir = tmp("diff");
        let fns = dir.join("fns");
        let code = dir.join("code");
        std::fs::write(fns.join("a.yaml"), manifest("a", "v1", "")).expect("write");
        std::fs::write(fns.join("b.yaml"), manifest("b", "v1", "")).expect("write");
        let loaded = load_dir(&fns, &code, None).expect("valid");
        let mut catalog = Catalog::new(&fns, &code, None, &loaded);

        let nothing = catalog.rescan(|_| false);
        assert!(
            nothing.is_empty() && nothing.problems.is_empty(),
            "{nothing:?}"
        );

        std::fs::write(fns.join("a.yaml"), manifest("a", "v2", "")).expect("write");
        std::fs::write(fns.join("c.yml"), manifest("c", "v1", "")).expect("write");
        std::fs::remove_file(fns.join("b.yaml")).expect("rm");
        let r = catalog.rescan(|_| false);
        assert_eq!(names(&r.added), ["c"]);
        assert_eq!(names(&r.changed), ["a"]);
        assert_eq!(names(&r.removed), ["b"]);
        assert!(r.changed[0].task_root.join("app.py").is_file());

        // A typo: the file is reported with its line and a suggestion, and
        // its function stays as it was.
        std::fs::write(fns.join("a.yaml"), manifest("a", "v3", "  timout: 3\n")).expect("write");
        let r = catalog.rescan(|_| false);
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(r.problems.len(), 1);
        let problem = r.problems[0].to_string();
        assert!(problem.contains("a.yaml:7:"), "{problem}");
        assert!(
            problem.contains("did you mean `timeoutSeconds`"),
            "{problem}"
        );
        let a = &catalog.functions()["a"];
        assert_eq!(a.spec.code.inline.as_deref(), Some("v2"));

        // Fixed: the new version applies.
        std::fs::write(
            fns.join("a.yaml"),
            manifest("a", "v3", "  timeoutSeconds: 3\n"),
        )
        .expect("write");
        let r = catalog.rescan(|_| false);
        assert_eq!(names(&r.changed), ["a"]);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn a_code_change_or_a_name_taken_by_another_file_is_reported() {
        let dir = tmp("code");
        let fns = dir.join("fns");
        let code = dir.join("code");
        std::fs::write(fns.join("a.yaml"), manifest("a", "v1", "")).expect("write");
        let loaded = load_dir(&fns, &code, None).expect("valid");
        let mut catalog = Catalog::new(&fns, &code, None, &loaded);
        let r = catalog.rescan(|f| f.key.name == "a");
        assert_eq!(names(&r.changed), ["a"]);

        std::fs::write(fns.join("z.yaml"), manifest("a", "other", "")).expect("write");
        let r = catalog.rescan(|_| false);
        assert!(r.is_empty(), "{r:?}");
        assert!(
            r.problems[0].to_string().contains("defined twice"),
            "{:?}",
            r.problems
        );
        assert_eq!(
            catalog.functions()["a"].spec.code.inline.as_deref(),
            Some("v1")
        );
    }
}
