//! The fleet's history as `GET /v1/history` serves it in a fleet: the history entries in etcd
//! (`/lb/<cluster>/history/<seq>`) with the hosts that marked each one applied
//! (`.../history/<seq>/applied/<host>`), read newest first a page at a time until `limit`
//! entries of the asked service are found, and answered newest last like a single host's
//! history.
//!
//! etcd unreachable: an error (exit 3 in lbctl) rather than this host's own record, which holds
//! only what this host applied and nothing of the other hosts: a partial history shown as the
//! fleet's would mislead precisely when an operator needs the truth.

use std::collections::BTreeMap;

use super::node::FleetNode;
use super::records::{AppliedMark, HistoryRecord};
use super::store::StoreError;
use crate::api::model::{ApiError, AppliedBy, FleetHistory, HistoryItem};
use crate::dataplane::Maps;

/// Keys read from etcd per request: entries and their applied marks (one per host) together.
const PAGE: usize = 256;

/// Why the fleet's history could not be read.
fn unreadable(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(why) => ApiError::unavailable(format!(
            "the fleet's etcd cannot be reached ({why}): the fleet's history lives there and cannot be \
             shown; forwarding continues on the last applied state"
        )),
        other => ApiError::internal(format!("the fleet's history could not be read from etcd: {other}")),
    }
}

impl<M: Maps> FleetNode<M> {
    /// The fleet's latest `limit` changes (of `service` when given), newest last, each with the
    /// hosts that applied it.
    pub fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<HistoryItem>, ApiError> {
        let prefix = self.keys.history();
        let mut marks: BTreeMap<u64, Vec<AppliedBy>> = BTreeMap::new();
        let mut out = Vec::new();
        let mut before: Option<String> = None;
        while out.len() < limit {
            let page = self.store.get_prefix_desc(&prefix, before.as_deref(), PAGE).map_err(unreadable)?;
            // Last first: an entry's marks (`<seq>/applied/<host>`) sort after the entry
            // (`<seq>`), so they come before it.
            for kv in &page {
                let Some(rest) = kv.key.strip_prefix(&prefix) else { continue };
                let mut parts = rest.split('/');
                let Some(Ok(seq)) = parts.next().map(str::parse::<u64>) else { continue };
                match (parts.next(), parts.next(), parts.next()) {
                    (None, _, _) => {
                        let record: HistoryRecord = match serde_json::from_str(&kv.value) {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::warn!(key = %kv.key, error = %e, "fleet: unreadable history entry skipped");
                                continue;
                            }
                        };
                        let applied = marks.remove(&seq).unwrap_or_default();
                        if service.is_none_or(|s| record.service == s) {
                            out.push(item(record, applied));
                            if out.len() == limit {
                                break;
                            }
                        }
                    }
                    (Some("applied"), Some(host), None) if !host.is_empty() => {
                        let Ok(mark) = serde_json::from_str::<AppliedMark>(&kv.value) else { continue };
                        marks.entry(seq).or_default().push(AppliedBy {
                            host: host.to_owned(),
                            time: mark.time,
                            revision: mark.revision,
                        });
                    }
                    _ => {}
                }
            }
            if page.len() < PAGE {
                break;
            }
            before = page.last().map(|kv| kv.key.clone());
        }
        out.reverse();
        Ok(out)
    }
}

/// A history entry as the API shows it.
fn item(r: HistoryRecord, mut applied: Vec<AppliedBy>) -> HistoryItem {
    applied.sort_by(|a, b| a.host.cmp(&b.host));
    HistoryItem { entry: r.entry(r.seq), fleet: Some(FleetHistory { via: r.via, forced: r.forced, applied }) }
}

#[cfg(test)]
mod tests {
    use super::super::change::ChangeRequest;
    use super::super::memory::MemStore;
    use super::super::tests::host;
    use crate::api::model::{Active, ErrorCode, HistoryKind};

    fn hosts_of(item: &crate::api::model::HistoryItem) -> Vec<String> {
        item.fleet.as_ref().unwrap().applied.iter().map(|a| a.host.clone()).collect()
    }

    #[test]
    fn every_host_serves_the_fleet_history_with_requester_and_the_hosts_that_applied() {
        let store = MemStore::default();
        let (a, b) = (host(&store, 1, "lb1"), host(&store, 2, "lb2"));
        a.step();
        b.step();
        assert!(b.node.history(None, 10).unwrap().is_empty());
        a.node.change(None, &a.switch("pool-b"), "ci-job-7").unwrap();
        a.step();
        b.step();
        let back = ChangeRequest { kind: Some(HistoryKind::Rollback), ..ChangeRequest::default() };
        b.node.change(None, &back, "alice").unwrap();
        // Only host 2 applied the rollback yet.
        b.step();
        // Host 2 shows the switch made through host 1, and both hosts' marks.
        let h = b.node.history(None, 10).unwrap();
        assert_eq!(h.len(), 2, "{h:?}");
        let (switch, rollback) = (&h[0], &h[1]);
        assert!(switch.entry.id < rollback.entry.id, "newest last");
        assert_eq!(switch.entry.kind, HistoryKind::Switch);
        assert_eq!(switch.entry.to, Active::Pool("pool-b".into()));
        assert_eq!(switch.entry.requester, "ci-job-7");
        assert_eq!(switch.fleet.as_ref().unwrap().via, "lb1");
        assert_eq!(hosts_of(switch), ["lb1", "lb2"]);
        assert_eq!(
            (rollback.entry.requester.as_str(), hosts_of(rollback)),
            ("alice", vec!["lb2".to_string()])
        );
        a.step();
        let h = a.node.history(None, 10).unwrap();
        assert_eq!(hosts_of(&h[1]), ["lb1", "lb2"]);
        // The limit keeps the newest; a service filter keeps that service.
        let newest = a.node.history(None, 1).unwrap();
        assert_eq!((newest.len(), newest[0].entry.kind), (1, HistoryKind::Rollback));
        assert_eq!(a.node.history(Some("web"), 10).unwrap().len(), 2);
        assert!(a.node.history(Some("other"), 10).unwrap().is_empty());
    }

    #[test]
    fn the_history_is_read_a_page_at_a_time_newest_first() {
        let store = MemStore::default();
        let a = host(&store, 1, "lb1");
        a.step();
        // More entries (and marks) than one page holds.
        for i in 0..150 {
            let pool = if i % 2 == 0 { "pool-b" } else { "pool-a" };
            a.node.change(None, &a.switch(pool), &format!("ci-{i}")).unwrap();
            a.step();
        }
        let h = a.node.history(None, 200).unwrap();
        assert_eq!(h.len(), 150);
        assert!(h.windows(2).all(|w| w[0].entry.id < w[1].entry.id), "newest last");
        assert!(h.iter().all(|i| hosts_of(i) == ["lb1"]), "every entry keeps its mark across pages");
        let last = a.node.history(None, 3).unwrap();
        let who: Vec<&str> = last.iter().map(|i| i.entry.requester.as_str()).collect();
        assert_eq!(who, ["ci-147", "ci-148", "ci-149"]);
    }

    #[test]
    fn etcd_unreachable_is_an_error_saying_so() {
        let store = MemStore::default();
        let a = host(&store, 1, "lb1");
        a.step();
        store.set_down(true);
        let e = a.node.history(None, 10).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("etcd cannot be reached") && e.message.contains("history"), "{e:?}");
    }
}
