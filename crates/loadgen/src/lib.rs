//! Load generators for Traverse's benchmarks: `traverse-loadgen` (relay throughput and memory per allocation, used
//! by `bench/relay.sh`) and `traverse-soak` (hours-shaped load for minutes, used by `bench/soak.sh`). Both are
//! bounded in time and count; this library holds what they share.

pub mod forwarder;
pub mod turn;
