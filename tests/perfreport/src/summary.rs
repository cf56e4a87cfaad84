//! A case over the report's runs: the median of its per-run medians, their
//! min and max (the spread over runs), and the verdict.

use serde::{Deserialize, Serialize};
use xen_testhost::stats::spread;

use crate::goals::{GoalRow, Kind};

/// One case of one goal over all runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The goal's number.
    pub goal: u8,
    /// The case.
    pub case: String,
    /// Ours.
    pub ours: String,
    /// The reference.
    pub reference: String,
    /// Ratio or absolute.
    pub kind: Kind,
    /// Unit of the absolute figures.
    pub unit: String,
    /// Each run's median, in run order.
    pub per_run: Vec<f64>,
    /// Median of `per_run`.
    pub median: f64,
    /// Smallest of `per_run`.
    pub min: f64,
    /// Largest of `per_run`.
    pub max: f64,
    /// Smallest paired ratio of any run.
    pub pair_min: f64,
    /// Largest paired ratio of any run.
    pub pair_max: f64,
    /// Whether every run paired its samples.
    pub paired: bool,
    /// Our median figure, median over runs.
    pub ours_value: f64,
    /// The reference's, median over runs.
    pub reference_value: Option<f64>,
    /// The goal (`None`: context only).
    pub threshold: Option<f64>,
    /// `median` meets the goal (`None` without a goal).
    pub met: Option<bool>,
    /// Runs whose median met it.
    pub runs_met: usize,
}

impl Summary {
    /// The verdict as the report prints it.
    pub fn verdict(&self) -> String {
        let n = self.per_run.len();
        match self.met {
            None => "context".into(),
            Some(true) if self.runs_met == n => "**met**".into(),
            Some(true) => format!("**met** (in {} of {n} runs)", self.runs_met),
            Some(false) if self.runs_met == 0 => "not met".into(),
            Some(false) => format!("not met (met in {} of {n} runs)", self.runs_met),
        }
    }
}

/// Groups `rows` by goal, case, ours and reference (first-seen order) and
/// summarises each group.
pub fn summarise(rows: &[GoalRow]) -> Vec<Summary> {
    let mut groups: Vec<Vec<&GoalRow>> = Vec::new();
    for r in rows {
        let same = |g: &&mut Vec<&GoalRow>| {
            g.first().is_some_and(|x| {
                x.goal == r.goal
                    && x.case == r.case
                    && x.ours == r.ours
                    && x.reference == r.reference
            })
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    let mut out: Vec<Summary> = groups.into_iter().filter_map(summary).collect();
    out.sort_by_key(|s| s.goal);
    out
}

fn summary(g: Vec<&GoalRow>) -> Option<Summary> {
    let first = *g.first()?;
    let per_run: Vec<f64> = g.iter().map(|r| r.median).collect();
    let (median, min, max) = spread(&per_run)?;
    let ours: Vec<f64> = g.iter().map(|r| r.ours_value).collect();
    let refs: Vec<f64> = g.iter().filter_map(|r| r.reference_value).collect();
    let met = first.meets(median);
    Some(Summary {
        goal: first.goal,
        case: first.case.clone(),
        ours: first.ours.clone(),
        reference: first.reference.clone(),
        kind: first.kind,
        unit: first.unit.clone(),
        median,
        min,
        max,
        pair_min: g.iter().map(|r| r.min).fold(f64::INFINITY, f64::min),
        pair_max: g.iter().map(|r| r.max).fold(f64::NEG_INFINITY, f64::max),
        paired: g.iter().all(|r| r.paired),
        ours_value: spread(&ours).map_or(0.0, |s| s.0),
        reference_value: spread(&refs).map(|s| s.0),
        threshold: first.threshold,
        met,
        runs_met: g.iter().filter(|r| r.meets(r.median) == Some(true)).count(),
        per_run,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: usize, case: &str, median: f64) -> GoalRow {
        GoalRow {
            goal: 2,
            bench: "netbench".into(),
            run,
            case: case.into(),
            ours: "pv".into(),
            reference: "veth".into(),
            unit: "bits/s".into(),
            ours_value: median,
            reference_value: Some(1.0),
            kind: Kind::Ratio,
            samples: vec![median - 0.1, median, median + 0.1],
            paired: true,
            median,
            min: median - 0.1,
            max: median + 0.1,
            threshold: Some(0.8),
        }
    }

    #[test]
    fn test_summarise_spreads_over_runs_and_counts_runs_met() {
        let rows = vec![
            row(1, "a", 0.7),
            row(1, "b", 1.0),
            row(2, "a", 0.9),
            row(3, "a", 0.85),
        ];
        let s = summarise(&rows);
        assert_eq!(s.len(), 2);
        let a = &s[0];
        assert_eq!(a.per_run, vec![0.7, 0.9, 0.85]);
        assert_eq!((a.median, a.min, a.max), (0.85, 0.7, 0.9));
        assert!((a.pair_min - 0.6).abs() < 1e-9 && (a.pair_max - 1.0).abs() < 1e-9);
        assert_eq!((a.met, a.runs_met), (Some(true), 2));
        assert_eq!(a.verdict(), "**met** (in 2 of 3 runs)");
        assert_eq!(s[1].verdict(), "**met**");
    }

    #[test]
    fn test_not_met_and_context_verdicts() {
        let mut r = row(1, "a", 0.5);
        assert_eq!(summarise(&[r.clone()])[0].verdict(), "not met");
        r.threshold = None;
        assert_eq!(summarise(&[r])[0].verdict(), "context");
    }
}
