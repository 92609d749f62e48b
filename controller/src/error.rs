//! The controller's one error type.

/// Everything that can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// No usable Kubernetes client configuration.
    #[error("kubernetes client configuration: {0}")]
    KubeConfig(String),

    /// Publishing a Kubernetes Event failed.
    #[error("publishing event: {0}")]
    Event(#[source] kube::Error),

    /// Building a manifest failed (serialising a generated object).
    #[error("serialising {what}: {source}")]
    Serialise {
        /// What was being serialised.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// The Function has no namespace (it is namespaced, so this is a bug or a bad object).
    #[error("function has no namespace")]
    MissingNamespace,

    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),

    /// A critical background task ended.
    #[error("{0} stopped unexpectedly")]
    TaskEnded(&'static str),

    /// The ops HTTP server failed.
    #[error("ops server: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::KubeConfig(_) => "kube_config",
            Error::Event(_) => "event",
            Error::Serialise { .. } => "serialise",
            Error::MissingNamespace => "missing_namespace",
            Error::Lease(_) => "lease",
            Error::TaskEnded(_) => "task_ended",
            Error::Io(_) => "io",
        }
    }
}

/// The controller's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
