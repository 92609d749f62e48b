//! The crate's error type.

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid flags or profile.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Building the HTTP client failed.
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// Writing the report failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a CSV file failed.
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
    /// Serialising the summary failed.
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Drawing a chart failed.
    #[error("drawing {chart}: {message}")]
    Chart {
        /// Which chart.
        chart: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
