//! Reading the Azure Functions 2019 trace and turning its per-minute counts
//! into arrival times.
//!
//! The folder holds `inv.csv` (invocations started in each minute, one row
//! per function), `run.csv` (execution time statistics per function, ms) and
//! `mem.csv` (allocated memory statistics per app, MB). See the folder's
//! README for the columns.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Seconds in one column of `inv.csv`.
pub const MINUTE_S: f64 = 60.0;

/// One function of the trace.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionTrace {
    /// `HashFunction`.
    pub function: String,
    /// `HashApp`.
    pub app: String,
    /// Invocations started in each minute.
    pub per_minute: Vec<u32>,
    /// Average execution time, seconds (`run.csv` `Average`).
    pub execution_s: f64,
    /// Average allocated memory of the function's app, MB (`mem.csv`
    /// `AverageAllocatedMb`).
    pub memory_mb: f64,
}

impl FunctionTrace {
    /// Invocations over the whole trace.
    pub fn invocations(&self) -> u64 {
        self.per_minute.iter().map(|&c| u64::from(c)).sum()
    }
}

/// The functions of a trace, all over the same minutes.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// In `inv.csv` order.
    pub functions: Vec<FunctionTrace>,
    /// Minutes covered.
    pub minutes: usize,
}

impl Trace {
    /// Seconds covered.
    pub fn horizon_s(&self) -> f64 {
        self.minutes as f64 * MINUTE_S
    }

    /// Reads `inv.csv`, `run.csv` and `mem.csv` from `folder`.
    pub fn load(folder: &Path) -> Result<Trace> {
        let bad = |file: &str, why: String| {
            Error::Config(format!("{file} in {}: {why}", folder.display()))
        };
        let open = |file: &str| {
            csv::Reader::from_path(folder.join(file)).map_err(|e| bad(file, e.to_string()))
        };

        // Execution time by (owner, app, function).
        let mut execution = HashMap::new();
        let mut run = open("run.csv")?;
        let headers = run.headers()?.clone();
        let average = column(&headers, "Average")
            .ok_or_else(|| bad("run.csv", "no Average column".into()))?;
        for row in run.records() {
            let row = row?;
            let ms: f64 = row[average]
                .parse()
                .map_err(|_| bad("run.csv", format!("bad Average `{}`", &row[average])))?;
            execution.insert(key(&row), ms / 1000.0);
        }

        // Memory by (owner, app).
        let mut memory = HashMap::new();
        let mut mem = open("mem.csv")?;
        let headers = mem.headers()?.clone();
        let average = column(&headers, "AverageAllocatedMb")
            .ok_or_else(|| bad("mem.csv", "no AverageAllocatedMb column".into()))?;
        for row in mem.records() {
            let row = row?;
            let mb: f64 = row[average].parse().map_err(|_| {
                bad(
                    "mem.csv",
                    format!("bad AverageAllocatedMb `{}`", &row[average]),
                )
            })?;
            // mem.csv is HashApp,HashOwner; the others start HashFunction,HashApp,HashOwner.
            memory.insert((row[1].to_string(), row[0].to_string()), mb);
        }

        let mut inv = open("inv.csv")?;
        let headers = inv.headers()?.clone();
        let first = column(&headers, "minute_1")
            .ok_or_else(|| bad("inv.csv", "no minute_1 column".into()))?;
        let minutes = headers.len() - first;
        let mut functions = Vec::new();
        for row in inv.records() {
            let row = row?;
            let (owner, app, function) = key(&row);
            let per_minute = (first..row.len())
                .map(|i| row[i].parse::<u32>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad("inv.csv", format!("function {function}: {e}")))?;
            let execution_s = *execution
                .get(&(owner.clone(), app.clone(), function.clone()))
                .ok_or_else(|| bad("run.csv", format!("no row for function {function}")))?;
            let memory_mb = *memory
                .get(&(owner.clone(), app.clone()))
                .ok_or_else(|| bad("mem.csv", format!("no row for app {app}")))?;
            functions.push(FunctionTrace {
                function,
                app,
                per_minute,
                execution_s,
                memory_mb,
            });
        }
        if functions.is_empty() || minutes == 0 {
            return Err(bad("inv.csv", "no functions or no minutes".into()));
        }
        Ok(Trace { functions, minutes })
    }
}

fn column(headers: &csv::StringRecord, name: &str) -> Option<usize> {
    headers.iter().position(|h| h == name)
}

/// (HashOwner, HashApp, HashFunction) of a row that starts HashFunction,HashApp,HashOwner.
fn key(row: &csv::StringRecord) -> (String, String, String) {
    (row[2].to_string(), row[1].to_string(), row[0].to_string())
}

/// How the invocations counted in one minute are placed inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// `n` arrivals at `(i + 0.5) / n` of the minute: exact multiples of a
    /// minute apart for a function called once every few minutes.
    Even,
    /// Independent uniform times within the minute, from a generator seeded
    /// with `seed` and the function's position in the trace.
    Uniform {
        /// The seed.
        seed: u64,
    },
}

impl Spread {
    /// A description for the report.
    pub fn describe(&self) -> String {
        match self {
            Spread::Even => {
                "evenly spaced inside each minute (the i-th of n at (i + 0.5)/n of it)".into()
            }
            Spread::Uniform { seed } => format!(
                "uniformly at random inside each minute (SplitMix64 seeded with {seed} and the function's row number)"
            ),
        }
    }
}

/// SplitMix64: small, fast and good enough to place arrivals; written out so
/// the replay is the same everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Arrival times in seconds from the start of the trace, in order, for the
/// function at row `index`.
pub fn arrivals(per_minute: &[u32], spread: Spread, index: usize) -> Vec<f64> {
    let total = per_minute.iter().map(|&c| c as usize).sum();
    let mut out = Vec::with_capacity(total);
    let mut rng = match spread {
        Spread::Uniform { seed } => Some(SplitMix64(
            seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
        )),
        Spread::Even => None,
    };
    for (minute, &count) in per_minute.iter().enumerate() {
        let start = minute as f64 * MINUTE_S;
        let from = out.len();
        for i in 0..count {
            let within = match rng.as_mut() {
                Some(rng) => rng.next_f64(),
                None => (f64::from(i) + 0.5) / f64::from(count),
            };
            out.push(start + within * MINUTE_S);
        }
        out[from..].sort_by(f64::total_cmp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_spread_places_arrivals_inside_their_minute() {
        assert_eq!(
            arrivals(&[2, 0, 1], Spread::Even, 0),
            vec![15.0, 45.0, 150.0]
        );
    }

    #[test]
    fn uniform_spread_is_seeded_sorted_and_inside_the_minute() {
        let counts = [3, 0, 5];
        let a = arrivals(&counts, Spread::Uniform { seed: 7 }, 4);
        assert_eq!(a, arrivals(&counts, Spread::Uniform { seed: 7 }, 4));
        assert_ne!(a, arrivals(&counts, Spread::Uniform { seed: 7 }, 5));
        assert_eq!(a.len(), 8);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a[..3].iter().all(|&t| (0.0..60.0).contains(&t)));
        assert!(a[3..].iter().all(|&t| (120.0..180.0).contains(&t)));
    }
}
