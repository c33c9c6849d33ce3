//! One metric family per call, for the collectors: a descriptor, then one sample per label set.

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

pub(crate) type Result = std::result::Result<(), std::fmt::Error>;

/// A counter without labels (the text encoder appends `_total`).
pub(crate) fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A gauge without labels.
pub(crate) fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, value: impl EncodeGaugeValue) -> Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    m.encode_gauge(&value)
}

/// A counter family: one sample per label set.
pub(crate) fn counters<L: EncodeLabelSet, V: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

/// A gauge family: one sample per label set.
pub(crate) fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        m.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A histogram without labels, from cumulative `(upper bound, count at or under it)` pairs and the total `count`
/// (the `+Inf` bucket). The encoder wants per-bucket counts and `+Inf` as `f64::MAX`.
pub(crate) fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    cumulative: &[(f64, u64)],
    sum: f64,
    count: u64,
) -> Result {
    let mut buckets = Vec::with_capacity(cumulative.len() + 1);
    let mut below = 0;
    for &(bound, at_or_under) in cumulative {
        buckets.push((bound, at_or_under.saturating_sub(below)));
        below = below.max(at_or_under);
    }
    buckets.push((f64::MAX, count.saturating_sub(below)));
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// A counter of a fractional value (seconds).
pub(crate) fn counter_f64(enc: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&value, None)
}
