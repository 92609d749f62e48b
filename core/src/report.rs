//! Concurrency reports from gateways to the controller, and their aggregation.
//!
//! Each gateway serves its latest report at [`REPORT_PATH`]; the controller
//! long-polls every gateway pod it finds in the gateway's EndpointSlices. A
//! poll returns at once when a function at zero gets demand (the "poke"), and
//! otherwise after at most `wait` (one second by default), so reports arrive
//! at least every second and demand at zero arrives without waiting for a tick.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::usage::FunctionUsage;

/// Path on the gateway's ops port that serves [`GatewayReport`]s.
/// Query parameters: `after=<sequence>` and `waitMs=<milliseconds>`.
pub const REPORT_PATH: &str = "/v1/concurrency";

/// How long a gateway's last report is trusted when it stops reporting.
pub const DEFAULT_REPORT_STALE_AFTER: Duration = Duration::from_secs(5);

/// Identifies a function across the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionKey {
    /// Namespace (`default` in local mode).
    pub namespace: String,
    /// Function name.
    pub name: String,
}

impl FunctionKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        FunctionKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// How callers name this function at a gateway whose home namespace is
    /// `home`: its bare name there, `namespace.name` in any other namespace.
    /// Unambiguous because a Function's name cannot contain a dot on a
    /// cluster (it names the Service `fn-NAME`, a DNS label) and a
    /// namespace's name never does.
    pub fn address(&self, home: &str) -> String {
        if self.namespace == home {
            self.name.clone()
        } else {
            format!("{}.{}", self.namespace, self.name)
        }
    }

    /// The key an address names (see [`FunctionKey::address`]).
    pub fn from_address(address: &str, home: &str) -> FunctionKey {
        match address.split_once('.') {
            Some((namespace, name)) => FunctionKey::new(namespace, name),
            None => FunctionKey::new(home, address),
        }
    }
}

impl std::fmt::Display for FunctionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One function's load as seen by one gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FunctionLoad {
    /// Namespace of the function.
    pub namespace: String,
    /// Name of the function.
    pub name: String,
    /// Invocations dispatched to an environment and not yet answered.
    pub in_flight: u32,
    /// Invocations waiting in the gateway's queue (including those held while cold).
    pub queued: u32,
    /// Mean of `in_flight + queued` over the gateway's samples since its last
    /// report (sampled several times a second), so short bursts are not missed.
    pub average_concurrency: f64,
    /// Environments this gateway can route to.
    pub ready_environments: u32,
    /// Invocations accepted since the gateway started (a counter).
    pub invocations_total: u64,
    /// Environments (pod names) running invocations right now, with how many.
    /// A scale-down removes the others first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub busy_environments: BTreeMap<String, u32>,
    /// Milliseconds since the last invocation ended, when nothing runs or
    /// waits: the exact start of the idle time, which the keep-alive counts
    /// from (samples miss invocations shorter than their period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// What the function used through this gateway since it started (its
    /// counters): the controller adds up their growth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<FunctionUsage>,
}

impl FunctionLoad {
    /// The key of this function.
    pub fn key(&self) -> FunctionKey {
        FunctionKey::new(&self.namespace, &self.name)
    }

    /// In flight plus queued, right now.
    pub fn concurrency(&self) -> u32 {
        self.in_flight.saturating_add(self.queued)
    }
}

/// Everything one gateway knows about load, at one moment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatewayReport {
    /// Stable identity of the gateway replica (its pod name).
    pub gateway: String,
    /// Increases with every report; a poll with `after=sequence` waits for the next one.
    pub sequence: u64,
    /// True when this report was sent early because a function at zero got demand.
    pub poke: bool,
    /// Per-function load, for every function with load or ready environments.
    pub functions: Vec<FunctionLoad>,
}

/// Sums reports from several gateways and forgets gateways that went quiet.
#[derive(Debug)]
pub struct ReportAggregator {
    stale_after: Duration,
    latest: HashMap<String, (Instant, GatewayReport)>,
    /// The usage counters each gateway last reported per function.
    usage_seen: HashMap<(String, FunctionKey), FunctionUsage>,
    /// When the first report arrived.
    first_report: Option<Instant>,
}

/// Summed load of one function over all live gateways.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AggregatedLoad {
    /// Sum of current in flight plus queued.
    pub concurrency: u32,
    /// Sum of each gateway's average concurrency since its last report.
    pub average_concurrency: f64,
    /// Number of gateways that reported this function.
    pub gateways: u32,
    /// In-flight invocations per environment, summed over gateways.
    pub busy_environments: BTreeMap<String, u32>,
    /// When the last invocation ended, over the gateways that report one
    /// (the latest of them); in the receiver's clock.
    pub last_active: Option<Instant>,
}

impl ReportAggregator {
    /// An aggregator that drops a gateway `stale_after` its last report.
    pub fn new(stale_after: Duration) -> Self {
        ReportAggregator {
            stale_after,
            latest: HashMap::new(),
            usage_seen: HashMap::new(),
            first_report: None,
        }
    }

    /// Stores a gateway's report in place of its previous one and returns,
    /// per function, what was used
    /// through that gateway since its previous report.
    ///
    /// A gateway's counters count from its own start. One first heard of
    /// within `stale_after` of the first report was running before this
    /// receiver started: its counters are taken as the baseline (what it
    /// counted before is already in the totals kept elsewhere, or lost
    /// with them). One first heard of later is new: all it counted is new.
    /// Counters that go back belong to a restarted gateway of the same name.
    pub fn ingest(
        &mut self,
        now: Instant,
        report: GatewayReport,
    ) -> Vec<(FunctionKey, FunctionUsage)> {
        let first = *self.first_report.get_or_insert(now);
        let starting = now.saturating_duration_since(first) <= self.stale_after;
        let mut used = Vec::new();
        for f in &report.functions {
            let Some(usage) = &f.usage else { continue };
            let key = f.key();
            let delta = match self
                .usage_seen
                .insert((report.gateway.clone(), key.clone()), usage.clone())
            {
                Some(earlier) => usage.since(&earlier).unwrap_or_else(|| usage.clone()),
                None if starting => continue,
                None => usage.clone(),
            };
            if !delta.is_empty() {
                used.push((key, delta));
            }
        }
        self.latest.insert(report.gateway.clone(), (now, report));
        used
    }

    /// Forgets a gateway at once (its pod is gone).
    pub fn remove_gateway(&mut self, gateway: &str) {
        self.latest.remove(gateway);
        self.usage_seen.retain(|(g, _), _| g != gateway);
    }

    /// Whether every trusted gateway has reported after `since` (and at
    /// least one is trusted): their reports then show every invocation that
    /// was running at `since`.
    pub fn all_reported_after(&mut self, since: Instant, now: Instant) -> bool {
        self.expire(now);
        !self.latest.is_empty() && self.latest.values().all(|(at, _)| *at > since)
    }

    /// Gateways whose reports are still trusted.
    pub fn live_gateways(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.latest.len()
    }

    /// Per-function sums over gateways that reported within `stale_after`.
    pub fn totals(&mut self, now: Instant) -> BTreeMap<FunctionKey, AggregatedLoad> {
        self.expire(now);
        let mut out: BTreeMap<FunctionKey, AggregatedLoad> = BTreeMap::new();
        for (at, report) in self.latest.values() {
            let at = *at;
            for f in &report.functions {
                let entry = out.entry(f.key()).or_default();
                entry.concurrency = entry.concurrency.saturating_add(f.concurrency());
                entry.average_concurrency += f.average_concurrency.max(0.0);
                entry.gateways += 1;
                let ended = f
                    .idle_ms
                    .and_then(|ms| at.checked_sub(Duration::from_millis(ms)));
                entry.last_active = entry.last_active.max(ended);
                for (env, n) in &f.busy_environments {
                    let busy = entry.busy_environments.entry(env.clone()).or_default();
                    *busy = busy.saturating_add(*n);
                }
            }
        }
        out
    }

    fn expire(&mut self, now: Instant) {
        let stale_after = self.stale_after;
        self.latest
            .retain(|_, (at, _)| now.saturating_duration_since(*at) <= stale_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gateway: &str, in_flight: u32, queued: u32) -> GatewayReport {
        GatewayReport {
            gateway: gateway.into(),
            sequence: 1,
            poke: false,
            functions: vec![FunctionLoad {
                namespace: "default".into(),
                name: "hello".into(),
                in_flight,
                queued,
                average_concurrency: f64::from(in_flight + queued),
                ready_environments: 1,
                invocations_total: 0,
                idle_ms: None,
                usage: None,
                busy_environments: if in_flight > 0 {
                    BTreeMap::from([(format!("{gateway}-env"), in_flight)])
                } else {
                    BTreeMap::new()
                },
            }],
        }
    }

    #[test]
    fn sums_gateways_and_drops_silent_ones() {
        let t0 = Instant::now();
        let mut agg = ReportAggregator::new(Duration::from_secs(5));
        agg.ingest(t0, report("a", 3, 1));
        agg.ingest(t0 + Duration::from_secs(3), report("b", 2, 0));
        let key = FunctionKey::new("default", "hello");
        let totals = agg.totals(t0 + Duration::from_secs(4));
        assert_eq!(totals[&key].concurrency, 6);
        assert_eq!(totals[&key].gateways, 2);
        assert_eq!(
            totals[&key].busy_environments,
            BTreeMap::from([("a-env".to_string(), 3), ("b-env".to_string(), 2)])
        );
        // Gateway a said nothing for 6 s: it is no longer trusted.
        let totals = agg.totals(t0 + Duration::from_secs(6));
        assert_eq!(totals[&key].concurrency, 2);
        assert_eq!(agg.live_gateways(t0 + Duration::from_secs(9)), 0);
    }

    #[test]
    fn the_last_active_time_is_the_latest_end_any_gateway_saw() {
        let t0 = Instant::now();
        let mut agg = ReportAggregator::new(Duration::from_secs(5));
        let idle = |gateway, ms| {
            let mut r = report(gateway, 0, 0);
            r.functions[0].idle_ms = ms;
            r
        };
        agg.ingest(t0 + Duration::from_secs(2), idle("a", Some(1_500)));
        agg.ingest(t0 + Duration::from_secs(3), idle("b", Some(2_000)));
        agg.ingest(t0 + Duration::from_secs(3), idle("c", None));
        let totals = agg.totals(t0 + Duration::from_secs(3));
        let key = FunctionKey::new("default", "hello");
        // a: ended at 0.5 s; b: at 1.0 s.
        assert_eq!(totals[&key].last_active, Some(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn usage_adds_up_each_gateway_s_growth() {
        let t0 = Instant::now();
        let mut agg = ReportAggregator::new(Duration::from_secs(5));
        let with = |gateway, invocations: u64| {
            let mut r = report(gateway, 0, 0);
            r.functions[0].usage = Some(FunctionUsage {
                invocations,
                billed_duration_ms: invocations * 10,
                ..Default::default()
            });
            r
        };
        let key = FunctionKey::new("default", "hello");
        let total = |d: Vec<(FunctionKey, FunctionUsage)>| -> u64 {
            d.iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, u)| u.invocations)
                .sum()
        };
        // Running before this receiver: a baseline, not new usage.
        assert_eq!(total(agg.ingest(t0, with("a", 100))), 0);
        assert_eq!(
            total(agg.ingest(t0 + Duration::from_secs(1), with("a", 103))),
            3
        );
        assert_eq!(
            total(agg.ingest(t0 + Duration::from_secs(2), with("a", 103))),
            0
        );
        // A gateway that starts later: everything it counted is new.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(total(agg.ingest(later, with("b", 7))), 7);
        // a restarted under the same name: counting again from zero.
        assert_eq!(total(agg.ingest(later, with("a", 2))), 2);
        // A removed gateway's successor under the same name is new.
        agg.remove_gateway("b");
        assert_eq!(total(agg.ingest(later, with("b", 1))), 1);
    }

    #[test]
    fn newer_report_replaces_older_one() {
        let t0 = Instant::now();
        let mut agg = ReportAggregator::new(Duration::from_secs(5));
        agg.ingest(t0, report("a", 10, 0));
        agg.ingest(t0, report("a", 1, 0));
        let totals = agg.totals(t0);
        assert_eq!(totals[&FunctionKey::new("default", "hello")].concurrency, 1);
    }

    #[test]
    fn report_round_trips_as_camel_case_json() {
        let json = serde_json::to_string(&report("a", 1, 2)).expect("serialises");
        assert!(json.contains(r#""inFlight":1"#));
        assert!(json.contains(r#""readyEnvironments":1"#));
        assert!(json.contains(r#""busyEnvironments":{"a-env":1}"#));
        // Older gateways send no busy environments: still a valid report.
        let idle = serde_json::to_string(&report("a", 0, 2)).expect("serialises");
        assert!(!idle.contains("busyEnvironments"));
        let back: GatewayReport = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, report("a", 1, 2));
    }

    #[test]
    fn addresses_are_bare_at_home_and_qualified_elsewhere() {
        let home = FunctionKey::new("default", "hello");
        let team = FunctionKey::new("team-b", "hello");
        assert_eq!(home.address("default"), "hello");
        assert_eq!(team.address("default"), "team-b.hello");
        assert_eq!(home.address("team-b"), "default.hello");
        for (key, at) in [(&home, "default"), (&team, "default"), (&home, "team-b")] {
            assert_eq!(&FunctionKey::from_address(&key.address(at), at), key);
        }
    }
}
