//! Watches local mode's manifest folder and the folders named by the
//! functions' `code.path`, and hands what changed to the environment
//! manager in batches.
//!
//! `notify` (inotify on Linux) reports every write; the debouncer
//! (`notify-debouncer-mini`, from the same project) turns an editor's burst
//! of events for one save (write a temporary file, rename it over the old
//! one, touch it) into one path once the folder has been quiet for
//! [`QUIET`]. The batches go through a bounded channel; when it is full the
//! batch is not kept, only the fact that one was missed, and the next batch
//! says so (the manager then treats every code folder as changed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};
use tokio::sync::mpsc;

/// How long a folder must be quiet before its changes are handed over.
pub const QUIET: Duration = Duration::from_millis(150);

/// Batches that may wait for the manager before one is missed.
const BATCHES: usize = 16;

/// Paths that changed together.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// The paths, as the watch reports them (under the canonical folders).
    pub paths: Vec<PathBuf>,
    /// A batch was missed (the channel was full, or the watch reported an
    /// error): anything may have changed.
    pub missed: bool,
}

/// The watch of the manifest folder and the code folders.
pub struct FolderWatch {
    debouncer: Debouncer<RecommendedWatcher>,
    manifests: PathBuf,
    /// Code folders watched, each with its whole tree.
    code: BTreeMap<PathBuf, ()>,
}

impl FolderWatch {
    /// Starts watching `manifests` (its files, not its subfolders); the
    /// batches arrive on the returned receiver.
    pub fn start(
        manifests: &Path,
    ) -> notify_debouncer_mini::notify::Result<(Self, mpsc::Receiver<Changes>)> {
        let (tx, rx) = mpsc::channel(BATCHES);
        let missed = Arc::new(AtomicBool::new(false));
        let handler = move |result: DebounceEventResult| {
            let changes = match result {
                Ok(events) => Changes {
                    paths: events.into_iter().map(|e| e.path).collect(),
                    missed: missed.swap(false, Ordering::SeqCst),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "the folder watch reported an error; rescanning");
                    Changes {
                        paths: Vec::new(),
                        missed: true,
                    }
                }
            };
            if tx.try_send(changes).is_err() {
                missed.store(true, Ordering::SeqCst);
            }
        };
        let mut debouncer = new_debouncer(QUIET, handler)?;
        let manifests = manifests
            .canonicalize()
            .unwrap_or_else(|_| manifests.to_path_buf());
        debouncer
            .watcher()
            .watch(&manifests, RecursiveMode::NonRecursive)?;
        Ok((
            FolderWatch {
                debouncer,
                manifests,
                code: BTreeMap::new(),
            },
            rx,
        ))
    }

    /// The manifest folder as watched (canonical).
    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// Watches exactly `folders` (with their trees) besides the manifest
    /// folder: new ones are added, those no function names any more are
    /// dropped. A folder that cannot be watched is logged and skipped.
    pub fn set_code_folders(&mut self, folders: impl IntoIterator<Item = PathBuf>) {
        let wanted: BTreeMap<PathBuf, ()> = folders.into_iter().map(|f| (f, ())).collect();
        let watcher = self.debouncer.watcher();
        for gone in self.code.keys().filter(|f| !wanted.contains_key(*f)) {
            let _ = watcher.unwatch(gone);
            if *gone == self.manifests {
                let _ = watcher.watch(&self.manifests, RecursiveMode::NonRecursive);
            }
        }
        let mut watched = BTreeMap::new();
        for folder in wanted.into_keys() {
            if self.code.contains_key(&folder) {
                watched.insert(folder, ());
                continue;
            }
            match watcher.watch(&folder, RecursiveMode::Recursive) {
                Ok(()) => {
                    watched.insert(folder, ());
                }
                Err(e) => {
                    tracing::warn!(folder = %folder.display(), error = %e, "cannot watch a function's code folder; its changes need a restart");
                }
            }
        }
        self.code = watched;
    }
}
