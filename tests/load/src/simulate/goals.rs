//! The goals the replay judges, from a run's results.
//!
//! 1. The adaptive policy dominates every fixed window: for each window it
//!    has fewer cold starts at no more wasted memory-time, or less wasted
//!    memory-time at no more cold starts. Cold starts are counted over the
//!    whole trace. Judged for the chosen parameters (one point) and, as a
//!    weaker reading, for the adaptive line (some margin dominates).
//! 2. Against the fixed baseline window: fewer than half the cold-start rate
//!    at the 75th-percentile function, with no more wasted memory-time.

use super::BASELINE_MINUTES;
use super::evaluate::{Group, PolicyResult};

/// Whether `a` dominates `b` on (cold starts, wasted memory-time).
pub fn dominates(a: &PolicyResult, b: &PolicyResult) -> bool {
    (a.cold_starts < b.cold_starts && a.wasted_gb_s <= b.wasted_gb_s)
        || (a.wasted_gb_s < b.wasted_gb_s && a.cold_starts <= b.cold_starts)
}

/// Whether `a` dominates `b` on (the 75th-percentile function's cold-start
/// rate, wasted memory-time): the axes of the paper's trade-off figure.
pub fn dominates_at_p75(a: &PolicyResult, b: &PolicyResult) -> bool {
    (a.p75_function_rate < b.p75_function_rate && a.wasted_gb_s <= b.wasted_gb_s)
        || (a.wasted_gb_s < b.wasted_gb_s && a.p75_function_rate <= b.p75_function_rate)
}

/// Goal 2 for one adaptive policy.
pub fn halves_p75_at_no_more_waste(adaptive: &PolicyResult, baseline: &PolicyResult) -> bool {
    adaptive.p75_function_rate < baseline.p75_function_rate / 2.0
        && adaptive.wasted_gb_s <= baseline.wasted_gb_s
}

/// Goal 1 for one fixed window.
#[derive(Debug)]
pub struct WindowVerdict<'a> {
    /// The fixed window.
    pub fixed: &'a PolicyResult,
    /// The chosen parameters dominate it.
    pub chosen: bool,
    /// The paper's defaults dominate it.
    pub paper: bool,
    /// A point of the adaptive line that dominates it, if any (the one
    /// with the fewest cold starts).
    pub line: Option<&'a PolicyResult>,
    /// The chosen parameters dominate it on the paper's axes (p75 function).
    pub chosen_at_p75: bool,
    /// The paper's defaults dominate it on the paper's axes.
    pub paper_at_p75: bool,
}

/// Both goals, judged.
#[derive(Debug)]
pub struct Goals<'a> {
    /// The chosen parameters.
    pub chosen: &'a PolicyResult,
    /// The paper's defaults.
    pub paper: &'a PolicyResult,
    /// The fixed baseline window.
    pub baseline: &'a PolicyResult,
    /// Goal 1, per fixed window.
    pub windows: Vec<WindowVerdict<'a>>,
    /// Goal 2 for the points of the adaptive line that meet it.
    pub line_meeting_goal2: Vec<&'a PolicyResult>,
}

impl<'a> Goals<'a> {
    /// Judges `results`; `None` if they lack the fixed baseline, the chosen
    /// parameters or the paper's defaults.
    pub fn judge(results: &'a [PolicyResult]) -> Option<Goals<'a>> {
        let of = |group| results.iter().find(|r| r.candidate.group == group);
        let chosen = of(Group::Chosen)?;
        let paper = of(Group::Paper)?;
        let baseline_label = format!("fixed {BASELINE_MINUTES} min");
        let baseline = results
            .iter()
            .find(|r| r.candidate.group == Group::Fixed && r.candidate.label == baseline_label)?;
        let line: Vec<&PolicyResult> = adaptive_line(results);
        let windows = results
            .iter()
            .filter(|r| r.candidate.group == Group::Fixed)
            .map(|fixed| WindowVerdict {
                fixed,
                chosen: dominates(chosen, fixed),
                paper: dominates(paper, fixed),
                line: line
                    .iter()
                    .copied()
                    .filter(|a| dominates(a, fixed))
                    .min_by_key(|a| a.cold_starts),
                chosen_at_p75: dominates_at_p75(chosen, fixed),
                paper_at_p75: dominates_at_p75(paper, fixed),
            })
            .collect();
        let line_meeting_goal2 = line
            .iter()
            .copied()
            .filter(|a| halves_p75_at_no_more_waste(a, baseline))
            .collect();
        Some(Goals {
            chosen,
            paper,
            baseline,
            windows,
            line_meeting_goal2,
        })
    }

    /// Goal 1, strict reading: the chosen parameters dominate every window.
    pub fn goal1_met(&self) -> bool {
        self.windows.iter().all(|w| w.chosen)
    }

    /// Goal 1, weaker reading: every window is dominated by some margin.
    pub fn goal1_met_by_line(&self) -> bool {
        self.windows.iter().all(|w| w.line.is_some())
    }

    /// Goal 2 for the chosen parameters.
    pub fn goal2_met(&self) -> bool {
        halves_p75_at_no_more_waste(self.chosen, self.baseline)
    }
}

/// The chosen parameters and their margin variations, by margin.
pub fn adaptive_line(results: &[PolicyResult]) -> Vec<&PolicyResult> {
    let mut line: Vec<&PolicyResult> = results
        .iter()
        .filter(|r| matches!(r.candidate.group, Group::Chosen | Group::MarginSweep))
        .collect();
    line.sort_by(|a, b| margin(a).total_cmp(&margin(b)));
    line
}

/// The keep-alive margin of an adaptive result (0 for a fixed window).
pub fn margin(result: &PolicyResult) -> f64 {
    match &result.candidate.policy {
        super::replay::Policy::Adaptive(p) => p.keep_alive_margin,
        super::replay::Policy::Fixed(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use porchlight_core::keepalive::KeepAliveParams;

    use super::*;
    use crate::simulate::evaluate::Candidate;
    use crate::simulate::replay::Policy;

    fn result(group: Group, label: &str, cold: u64, waste: f64, p75: f64) -> PolicyResult {
        PolicyResult {
            candidate: Candidate {
                label: label.into(),
                group,
                policy: match group {
                    Group::Fixed => Policy::Fixed(Duration::from_secs(60)),
                    _ => Policy::Adaptive(KeepAliveParams::default()),
                },
            },
            invocations: 1000,
            cold_starts: cold,
            median_function_rate: 0.0,
            p75_function_rate: p75,
            wasted_gb_s: waste,
            decisions: [0; 3],
            wasted_by_mode: [0.0; 3],
            replay_s: 0.0,
            per_function: Vec::new(),
        }
    }

    #[test]
    fn dominance_needs_one_strictly_better_and_the_other_no_worse() {
        let a = result(Group::Chosen, "a", 10, 100.0, 0.2);
        assert!(dominates(&a, &result(Group::Fixed, "b", 11, 100.0, 0.2)));
        assert!(dominates(&a, &result(Group::Fixed, "b", 10, 100.5, 0.2)));
        assert!(!dominates(&a, &result(Group::Fixed, "b", 10, 100.0, 0.2)));
        assert!(!dominates(&a, &result(Group::Fixed, "b", 9, 200.0, 0.2)));
        assert!(dominates_at_p75(
            &a,
            &result(Group::Fixed, "b", 1, 100.0, 0.3)
        ));
    }

    #[test]
    fn judges_both_goals() {
        let results = vec![
            result(Group::Fixed, "fixed 1 min", 100, 10.0, 0.8),
            result(Group::Fixed, "fixed 10 min", 50, 50.0, 0.4),
            result(Group::Paper, "paper", 40, 60.0, 0.3),
            result(Group::Chosen, "chosen", 40, 45.0, 0.19),
        ];
        let goals = Goals::judge(&results).unwrap();
        assert!(!goals.windows[0].chosen);
        assert!(goals.windows[1].chosen);
        assert!(!goals.windows[1].paper);
        assert!(!goals.goal1_met());
        assert!(goals.goal2_met());
        assert_eq!(goals.line_meeting_goal2.len(), 1);
        assert!(Goals::judge(&results[..2]).is_none());
    }
}
