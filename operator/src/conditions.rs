//! Kubernetes-style conditions: set one by type, keeping `lastTransitionTime` unless the
//! status actually changes, so that rewriting the same verdict does not look like news.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The desired state of one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// `true` → "True", `false` → "False".
    pub ok: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human message.
    pub message: String,
}

impl Verdict {
    /// A condition verdict.
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions after applying `verdicts` to `existing`, for `generation`. Conditions of
/// other types are dropped: the operator owns the whole list.
pub fn apply(
    existing: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    verdicts
        .iter()
        .map(|v| {
            let status = if v.ok { "True" } else { "False" }.to_string();
            let since = existing
                .iter()
                .find(|c| c.type_ == v.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: v.type_.to_string(),
                status,
                reason: v.reason.to_string(),
                message: v.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// Whether `conditions` hold `type_` with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = apply(
            &[],
            &[Verdict::new("Ready", false, "Pending", "x")],
            Some(1),
            t0,
        );
        let same = apply(
            &first,
            &[Verdict::new("Ready", false, "PoolExhausted", "y")],
            Some(2),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].reason, "PoolExhausted");
        let flipped = apply(
            &same,
            &[Verdict::new("Ready", true, "Ready", "z")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert!(is_true(&flipped, "Ready"));
    }
}
