//! Partition safety: many nodes of one target going silent at once is first a
//! question about admin's view of them, not about the nodes. A silent node whose
//! driver says it still runs is only unheard; when at least a share of a target's
//! heartbeating nodes (default one half, and at least two) are unheard, and they
//! went silent within one heartbeat timeout of each other, the target is
//! `unreachable`: its silent nodes are not all replaced at once but at most a few
//! a minute, on other targets, while routers keep sending players to what they
//! reach. When the link returns, the silent nodes are heard again and the target
//! is active again. [`judge`] is pure.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::clock::UnixMs;

/// When a target counts as cut off, and how fast its nodes are replaced then.
#[derive(Debug, Clone, Copy)]
pub struct PartitionPolicy {
    /// The share of a target's heartbeating nodes that, silent together, make it
    /// unreachable.
    pub fraction: f64,
    /// Nodes of an unreachable target replaced per minute (the first a minute
    /// after it became unreachable).
    pub replacements_per_minute: u32,
}

impl Default for PartitionPolicy {
    fn default() -> Self {
        Self { fraction: 0.5, replacements_per_minute: 1 }
    }
}

impl PartitionPolicy {
    /// The pause between two replacements on an unreachable target.
    pub fn replace_every_ms(&self) -> i64 {
        60_000 / i64::from(self.replacements_per_minute.max(1))
    }
}

/// A live node that has been heard from, as the partition rule sees it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub id: Uuid,
    pub target: String,
    pub last_heartbeat: UnixMs,
    /// No heartbeat for longer than the timeout.
    pub silent: bool,
    /// The driver says its instance still runs (a silent node that does not is
    /// simply gone, and replaced as usual).
    pub running: bool,
}

/// What the rule says of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Nodes that are heard or unheard (silent but running), the rule's base.
    pub nodes: usize,
    /// The unheard nodes that went silent together, oldest heartbeat first.
    pub unheard: Vec<Uuid>,
    pub cut_off: bool,
}

/// Judges every target from its nodes (see the module's doc). A target already
/// cut off (in `cut`) stays so while any of its nodes is unheard: the ones
/// replaced meanwhile no longer count, and the rest are still held.
pub fn judge(
    nodes: &[Heard],
    cut: &BTreeSet<String>,
    timeout_ms: i64,
    policy: PartitionPolicy,
) -> BTreeMap<String, Verdict> {
    let mut by_target: BTreeMap<String, Vec<&Heard>> = BTreeMap::new();
    for n in nodes.iter().filter(|n| !n.silent || n.running) {
        by_target.entry(n.target.clone()).or_default().push(n);
    }
    by_target
        .into_iter()
        .map(|(target, nodes)| {
            let mut unheard: Vec<&Heard> = nodes.iter().copied().filter(|n| n.silent).collect();
            // Together: within one timeout of the latest to fall silent.
            let latest = unheard.iter().map(|n| n.last_heartbeat).max().unwrap_or(0);
            unheard.retain(|n| latest - n.last_heartbeat <= timeout_ms);
            unheard.sort_by_key(|n| (n.last_heartbeat, n.id));
            let needed = ((nodes.len() as f64) * policy.fraction).ceil().max(2.0) as usize;
            let cut_off = unheard.len() >= needed || (cut.contains(&target) && !unheard.is_empty());
            let verdict = Verdict { nodes: nodes.len(), unheard: unheard.iter().map(|n| n.id).collect(), cut_off };
            (target, verdict)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(target: &str, last: i64, silent: bool, running: bool) -> Heard {
        Heard { id: Uuid::now_v7(), target: target.into(), last_heartbeat: last, silent, running }
    }

    const P: PartitionPolicy = PartitionPolicy { fraction: 0.5, replacements_per_minute: 1 };

    #[test]
    fn half_of_a_target_silent_together_cuts_it_off() {
        let nodes = [
            node("a", 1000, true, true),
            node("a", 1500, true, true),
            node("a", 9000, false, true),
            node("b", 9000, false, true),
        ];
        let v = judge(&nodes, &BTreeSet::new(), 3000, P);
        assert!(v["a"].cut_off, "{v:?}");
        assert_eq!(v["a"].unheard, [nodes[0].id, nodes[1].id], "oldest first");
        assert!(!v["b"].cut_off);
    }

    #[test]
    fn one_silent_node_or_dead_nodes_are_replaced_as_usual() {
        // One of one: not "many at once".
        assert!(!judge(&[node("a", 0, true, true)], &BTreeSet::new(), 3000, P)["a"].cut_off);
        // Exited instances are gone, not unheard: they do not count.
        let gone = [node("a", 0, true, false), node("a", 0, true, false), node("a", 9000, false, true)];
        let v = judge(&gone, &BTreeSet::new(), 3000, P);
        assert!(!v["a"].cut_off);
        assert_eq!(v["a"].nodes, 1);
        // A quarter silent is below a half.
        let few = [
            node("a", 0, true, true),
            node("a", 0, true, true),
            node("a", 9, false, true),
            node("a", 9, false, true),
            node("a", 9, false, true),
            node("a", 9, false, true),
            node("a", 9, false, true),
            node("a", 9, false, true),
        ];
        assert!(!judge(&few, &BTreeSet::new(), 3000, P)["a"].cut_off);
    }

    #[test]
    fn nodes_that_fell_silent_apart_are_not_a_partition() {
        // Silent a minute apart: one at a time, each replaced on its own.
        let apart = [node("a", 0, true, true), node("a", 60_000, true, true), node("a", 90_000, false, true)];
        let v = judge(&apart, &BTreeSet::new(), 3000, P);
        assert!(!v["a"].cut_off);
        assert_eq!(v["a"].unheard, [apart[1].id]);
    }

    #[test]
    fn a_cut_off_target_stays_so_while_any_node_is_unheard() {
        let cut: BTreeSet<String> = ["a".to_owned()].into();
        // One of two replaced meanwhile: the other is still unheard, still held.
        let left = [node("a", 0, true, true), node("a", 9000, false, true)];
        let v = judge(&left, &cut, 3000, P);
        assert!(v["a"].cut_off);
        assert_eq!(v["a"].unheard, [left[0].id]);
        // Heard again: active.
        assert!(!judge(&[node("a", 9000, false, true)], &cut, 3000, P)["a"].cut_off);
    }

    #[test]
    fn replacements_are_spaced_by_the_rate() {
        assert_eq!(P.replace_every_ms(), 60_000);
        assert_eq!(PartitionPolicy { replacements_per_minute: 6, ..P }.replace_every_ms(), 10_000);
        assert_eq!(PartitionPolicy { replacements_per_minute: 0, ..P }.replace_every_ms(), 60_000);
    }
}
