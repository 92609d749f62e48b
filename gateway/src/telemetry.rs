//! The gateway's logs and, when an OTLP endpoint is configured, its
//! OpenTelemetry spans of invocations:
//!
//! | span | parent | from .. to |
//! |---|---|---|
//! | `receive` | the caller's span (`traceparent`, or `X-Amzn-Trace-Id`'s `Parent`) | the Invoke API request, read to answered |
//! | `queue wait` | `receive` | waiting for an environment with room (`porchlight.queue=environment`), or an async event's time in its queue (`async`) |
//! | `cold start` | `receive` | the init this invocation waited for, when it caused one |
//! | `invoke` | `receive` | the call to the environment |
//!
//! Every span is in the request's trace: the caller's, or the one the
//! gateway created for it (with an X-Ray-compatible id, so that the
//! `X-Amzn-Trace-Id` the function sees names the same trace).
//!
//! Without an endpoint nothing is installed: the span call sites are
//! disabled in the log filter (tracing's cached "never" interest) and every
//! OpenTelemetry step is behind [`enabled`], one atomic load.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use porchlight_core::trace::{TraceContext, traceparent};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of the invocation spans: only the OpenTelemetry layer takes it.
pub const SPAN_TARGET: &str = "porchlight_gateway::span";

/// The service name the spans are exported under.
pub const SERVICE_NAME: &str = "porchlight-gateway";

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are recorded (an OTLP endpoint is configured).
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The OTLP traces URL of an endpoint given as OpenTelemetry's
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is: the base, to which `/v1/traces` is added.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The exporting side of the spans; [`Exporter::shutdown`] sends what is
/// still buffered.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends the spans still buffered and stops the export thread.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}

/// Installs the logs (stderr, the filter from `PORCHLIGHT_LOG` or
/// `RUST_LOG`, default `info`) and, with `otlp_endpoint`, the span export.
pub fn init(json: bool, otlp_endpoint: Option<&str>) -> Result<Option<Exporter>, String> {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, fmt};

    let filter = EnvFilter::try_from_env(porchlight_core::shim::LOG_FILTER_ENV)
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The spans are for the exporter, not the log lines.
    let filter = match format!("{SPAN_TARGET}=off").parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let logs = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let logs = if json {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    let (spans, exporter) = match otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let (tracer, exporter) = tracer(endpoint)?;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer.clone())
                .with_location(false)
                .with_threads(false)
                .with_level(false)
                .with_filter(Targets::new().with_target(SPAN_TARGET, LevelFilter::INFO));
            let _ = TRACER.set(tracer);
            (Some(layer), Some(exporter))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
    Ok(exporter)
}

fn tracer(endpoint: &str) -> Result<(SdkTracer, Exporter), String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url(endpoint))
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(RequestTraceIds::default())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(SERVICE_NAME)
                .build(),
        )
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, SERVICE_NAME);
    Ok((tracer, Exporter { provider }))
}

thread_local! {
    /// The trace id the next span started on this thread without a parent
    /// takes (see [`RequestTraceIds`]).
    static NEXT_TRACE_ID: Cell<Option<[u8; 16]>> = const { Cell::new(None) };
}

/// Span ids at random; a trace id is the request's: a span without a
/// parent is started (synchronously, by [`in_trace`]) while the request's
/// trace id is set for this thread. None set: an X-Ray-compatible id (Unix
/// seconds, then random bytes).
#[derive(Debug, Default)]
struct RequestTraceIds {
    random: RandomIdGenerator,
}

impl IdGenerator for RequestTraceIds {
    fn new_trace_id(&self) -> TraceId {
        if let Some(id) = NEXT_TRACE_ID.with(|n| n.take()) {
            return TraceId::from_bytes(id);
        }
        let mut id = self.random.new_trace_id().to_bytes();
        let seconds = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        id[..4].copy_from_slice(&seconds.to_be_bytes());
        TraceId::from_bytes(id)
    }

    fn new_span_id(&self) -> SpanId {
        self.random.new_span_id()
    }
}

/// A remote span as a parent context.
fn remote(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> Context {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(trace_id),
        SpanId::from_bytes(span_id),
        flags,
        true,
        TraceState::default(),
    ))
}

/// Puts `span` into `trace`: as a child of the caller's span when
/// `from_caller` and it is known, else as the first span of that trace.
fn in_trace(span: &Span, trace: &TraceContext, from_caller: bool) {
    match trace.parent_id.filter(|_| from_caller) {
        // An X-Ray caller that does not say is recorded: X-Ray leaves that
        // decision to the first service that samples.
        Some(parent) => {
            let _ = span.set_parent(remote(
                trace.trace_id,
                parent,
                trace.sampled.unwrap_or(true),
            ));
        }
        None => {
            NEXT_TRACE_ID.with(|n| n.set(Some(trace.trace_id)));
            // Starts the span now, on this thread, with that trace id.
            let _ = span.context();
            NEXT_TRACE_ID.with(|n| n.set(None));
        }
    }
}

/// The `receive` span of an invocation of `function`.
pub fn receive(
    function: &str,
    request_id: &str,
    trigger: &'static str,
    trace: &TraceContext,
    from_caller: bool,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "receive",
        otel.kind = "server",
        faas.invoked_name = function,
        faas.invocation_id = request_id,
        faas.trigger = trigger,
    );
    in_trace(&span, trace, from_caller);
    span
}

/// The `queue wait` span for an environment, child of the current span, or
/// of `resumes` (the span an async event continues).
pub fn queue_wait(resumes: Option<&TraceContext>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "queue wait",
        porchlight.queue = "environment"
    );
    if let Some(r) = resumes {
        in_trace(&span, r, true);
    }
    span
}

/// The `invoke` span of one attempt on `environment`.
pub fn invoke(environment: &str, resumes: Option<&TraceContext>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "invoke",
        otel.kind = "client",
        porchlight.environment = environment,
    );
    if let Some(r) = resumes {
        in_trace(&span, r, true);
    }
    span
}

/// The `traceparent` of `span`, when it is recorded.
pub fn traceparent_of(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        traceparent(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.is_sampled(),
        )
    })
}

/// The current span as a trace context (for an async event to continue
/// it), when spans are recorded.
pub fn current() -> Option<TraceContext> {
    if !enabled() {
        return None;
    }
    let cx = Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        parent_id: Some(sc.span_id().to_bytes()),
        sampled: Some(sc.is_sampled()),
    })
}

/// The context spans recorded after the fact hang from: `resumes`, else
/// the current span.
pub fn parent_context(resumes: Option<&TraceContext>) -> Option<Context> {
    if !enabled() {
        return None;
    }
    Some(match resumes.and_then(|r| Some((r, r.parent_id?))) {
        Some((r, parent)) => remote(r.trace_id, parent, r.sampled.unwrap_or(true)),
        None => Span::current().context(),
    })
}

/// Records a span that is already over (`cold start`, an async event's
/// `queue wait`), from `start` to `end`, under `parent`.
pub fn record(
    name: &'static str,
    parent: &Context,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    opentelemetry::trace::Span::end_with_timestamp(&mut span, end.max(start));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_base_as_opentelemetry_s_variable() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn without_an_endpoint_no_span_is_made() {
        assert!(!enabled());
        let t = TraceContext::new_root(1, [1; 20]);
        assert!(receive("f", "r", "invoke", &t, false).is_none());
        assert!(invoke("env", None).is_none());
        assert_eq!(traceparent_of(&Span::none()), None);
        assert!(parent_context(Some(&t)).is_none());
    }
}
