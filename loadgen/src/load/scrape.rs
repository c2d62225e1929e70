//! The gateways' own counters, read from their admin `/metrics` before and
//! after a run: what they did that no client sees, such as history reads
//! and replays behind a crowd of joins, or the frames they queued by type.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use testkit::http::Client;

/// Every series of every gateway, summed by series (`name{labels}`).
pub type Series = BTreeMap<String, f64>;

/// Reads `/metrics` of each admin address and sums the series; `None` when
/// there are no addresses or one does not answer 200 within 5 s.
pub async fn read(admins: &[SocketAddr]) -> Option<Series> {
    if admins.is_empty() {
        return None;
    }
    let mut series = Series::new();
    for admin in admins {
        let reply =
            tokio::time::timeout(Duration::from_secs(5), Client::new(*admin).get("/metrics")).await.ok()?.ok()?;
        if reply.status != http::StatusCode::OK {
            return None;
        }
        add_page(&reply.text(), &mut series);
    }
    Some(series)
}

/// How much each counter whose name contains one of `wanted` grew between
/// two readings (a series absent before counts from 0). Only counters and
/// histogram sums and counts: a gauge's change says little about a run.
pub fn grown(before: &Series, after: &Series, wanted: &[&str]) -> Series {
    after
        .iter()
        .filter(|(key, _)| {
            let name = key.split('{').next().unwrap_or(key);
            let counter = ["_total", "_sum", "_count"].iter().any(|end| name.ends_with(end));
            counter && wanted.iter().any(|w| name.contains(w))
        })
        .filter_map(|(key, value)| {
            let change = value - before.get(key).copied().unwrap_or(0.0);
            (change != 0.0).then(|| (key.clone(), (change * 1000.0).round() / 1000.0))
        })
        .collect()
}

/// Adds the samples of a Prometheus text page to `series`.
fn add_page(page: &str, series: &mut Series) {
    for line in page.lines().filter(|line| !line.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        if let Ok(value) = value.parse::<f64>() {
            *series.entry(key.trim().to_owned()).or_default() += value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_summed_and_compared() {
        let mut before = Series::new();
        add_page("# HELP x\nwarren_gateway_messages_replayed_total 5\n", &mut before);
        let mut after = Series::new();
        let page = "warren_gateway_messages_replayed_total 12\n\
                    warren_gateway_frames_out_total{type=\"presence\"} 40\n\
                    warren_gateway_send_ack_seconds_bucket{le=\"0.1\"} 3\n\
                    warren_gateway_sockets_open 9\n\
                    warren_gateway_presence_entries 9\n";
        add_page(page, &mut after);
        add_page("warren_gateway_frames_out_total{type=\"presence\"} 2\n", &mut after);
        let change = grown(&before, &after, &["replay", "frames_out", "seconds", "presence"]);
        assert_eq!(change.get("warren_gateway_messages_replayed_total"), Some(&7.0));
        assert_eq!(change.get("warren_gateway_frames_out_total{type=\"presence\"}"), Some(&42.0));
        assert_eq!(change.len(), 2, "{change:?}");
    }
}
