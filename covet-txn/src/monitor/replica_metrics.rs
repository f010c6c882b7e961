//! The Prometheus families of a manager's replicas and failover: per
//! replica its lag, whether it serves reads and how many it served; reads
//! sent to the primary, by reason; moves of the primary to another host.
//! Nothing is written for a manager without replicas or primary hosts.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::replicas::ReplicaReport;

pub(super) fn encode(
    encoder: &mut DescriptorEncoder,
    manager: &str,
    report: &ReplicaReport,
) -> Result<(), std::fmt::Error> {
    if report.replicas.is_empty() && report.primary_changes == 0 {
        return Ok(());
    }
    let replica_labels = |name: &str| {
        [
            ("manager", manager.to_owned()),
            ("replica", name.to_owned()),
        ]
    };

    let mut lag = encoder.encode_descriptor(
        "replica_lag",
        "How far the replica was behind the primary at the last probe.",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?;
    for replica in &report.replicas {
        if let Some(seconds) = replica.lag.map(|lag| lag.as_secs_f64()) {
            ConstGauge::new(seconds).encode(lag.encode_family(&replica_labels(&replica.name))?)?;
        }
    }
    let mut serving = encoder.encode_descriptor(
        "replica_serving",
        "1 while the replica serves reads: reachable, probed lately, within the lag bound.",
        None,
        MetricType::Gauge,
    )?;
    for replica in &report.replicas {
        ConstGauge::new(i64::from(replica.serving))
            .encode(serving.encode_family(&replica_labels(&replica.name))?)?;
    }
    let mut reads = encoder.encode_descriptor(
        "replica_reads",
        "Read-only transactions the replica served.",
        None,
        MetricType::Counter,
    )?;
    for replica in &report.replicas {
        reads
            .encode_family(&replica_labels(&replica.name))?
            .encode_counter::<NoLabelSet, _, u64>(&replica.reads, None)?;
    }
    let mut on_primary = encoder.encode_descriptor(
        "reads_on_primary",
        "Read-only transactions run on the primary though replicas were configured, by reason: \
         no replica up and within the lag bound, or the task's own writes not replayed yet.",
        None,
        MetricType::Counter,
    )?;
    for (reason, count) in [
        ("replicas_unavailable", report.reads_on_primary_unavailable),
        ("read_your_writes", report.reads_on_primary_for_writes),
    ] {
        on_primary
            .encode_family(&[
                ("manager", manager.to_owned()),
                ("reason", reason.to_owned()),
            ])?
            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
    }
    let mut changes = encoder.encode_descriptor(
        "primary_changes",
        "How often failover found the writable primary on another host.",
        None,
        MetricType::Counter,
    )?;
    changes
        .encode_family(&[("manager", manager.to_owned())])?
        .encode_counter::<NoLabelSet, _, u64>(&report.primary_changes, None)?;
    Ok(())
}
