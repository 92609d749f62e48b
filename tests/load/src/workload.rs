//! What each request carries: which function it invokes and its JSON event.

use bytes::Bytes;

use crate::error::{Error, Result};

/// A function to invoke and its share of the traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedFunction {
    /// Function name.
    pub name: String,
    /// Relative share of requests.
    pub weight: u32,
}

impl WeightedFunction {
    /// Parses `NAME` or `NAME=WEIGHT`.
    pub fn parse(text: &str) -> Result<WeightedFunction> {
        let (name, weight) = match text.split_once('=') {
            Some((name, weight)) => {
                let weight: u32 = weight.trim().parse().map_err(|_| {
                    Error::Config(format!("`{text}`: weight must be a whole number"))
                })?;
                (name.trim(), weight)
            }
            None => (text.trim(), 1),
        };
        if name.is_empty() || weight == 0 {
            return Err(Error::Config(format!(
                "`{text}`: need a function name and a weight of at least 1"
            )));
        }
        if weight > 1000 {
            return Err(Error::Config(format!("`{text}`: weight above 1000")));
        }
        Ok(WeightedFunction {
            name: name.to_string(),
            weight,
        })
    }
}

/// Deterministic weighted interleaving of functions: request `n` goes to
/// `pick(n)`. Built with smooth weighted round robin, so weights `a=3,b=1`
/// give `a a b a`, not `a a a b`.
#[derive(Clone, Debug)]
pub struct FunctionMix {
    names: Vec<String>,
    cycle: Vec<usize>,
}

impl FunctionMix {
    /// Builds the mix; needs at least one function.
    pub fn new(functions: &[WeightedFunction]) -> Result<FunctionMix> {
        if functions.is_empty() {
            return Err(Error::Config("no --function given".into()));
        }
        let total: i64 = functions.iter().map(|f| i64::from(f.weight)).sum();
        let mut current = vec![0i64; functions.len()];
        let mut cycle = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, f) in current.iter_mut().zip(functions) {
                *c += i64::from(f.weight);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                .expect("at least one function");
            current[best] -= total;
            cycle.push(best);
        }
        Ok(FunctionMix {
            names: functions.iter().map(|f| f.name.clone()).collect(),
            cycle,
        })
    }

    /// Index of the function for the `n`-th request.
    pub fn pick(&self, n: u64) -> usize {
        self.cycle[(n % self.cycle.len() as u64) as usize]
    }

    /// Function names, by index.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A JSON event of exactly `size` bytes (or the smallest valid event if
/// `size` is smaller): `{"source":"porchlight-load","pad":"xxx..."}`.
pub fn padded_event(size: usize) -> Bytes {
    let head = r#"{"source":"porchlight-load","pad":""#;
    let tail = r#""}"#;
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = String::with_capacity(head.len() + pad + tail.len());
    body.push_str(head);
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(tail);
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_interleave_smoothly() {
        let mix = FunctionMix::new(&[
            WeightedFunction::parse("a=3").unwrap(),
            WeightedFunction::parse("b").unwrap(),
        ])
        .unwrap();
        let picks: Vec<_> = (0..8).map(|n| mix.pick(n)).collect();
        assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn parses_function_flags() {
        assert!(WeightedFunction::parse("a=0").is_err());
        assert!(WeightedFunction::parse("=2").is_err());
        assert!(WeightedFunction::parse("a=x").is_err());
        assert!(FunctionMix::new(&[]).is_err());
    }

    #[test]
    fn events_have_the_requested_size_and_are_json() {
        for size in [0, 10, 64, 1000, 65536] {
            let body = padded_event(size);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["source"], "porchlight-load");
            if size >= 40 {
                assert_eq!(body.len(), size);
            }
        }
    }
}
