//! What the hub counts for metrics: small maps keyed by the protocol's own names (message types, error codes,
//! close codes, `undeliverable` reasons), touched once per message or refusal and copied into [`super::HubStats`]
//! when the I/O layer asks.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub messages: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub closes: BTreeMap<u16, u64>,
    pub undeliverable: BTreeMap<&'static str, u64>,
    pub resumes: u64,
}

impl Counters {
    pub(super) fn count<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
        *map.entry(key).or_insert(0) += 1;
    }
}
