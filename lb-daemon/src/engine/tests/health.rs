//! Health changes rebuild the tables that hold the backend, beside the live ones, and flip
//! only the services that serve them.

use super::*;
use lb_common::maps::NO_BACKEND;

#[test]
fn a_backend_down_in_the_active_pool_is_a_new_table_and_one_flip() {
    let mut r = Rig::new(CONFIG);
    let old = r.slot("pool-a");
    r.core.on_health(0, false, Some("connection refused".into()));
    let w = r.writes();
    let [MapWrite::Table(t), MapWrite::Service(0, s)] = w.as_slice() else { panic!("writes: {w:?}") };
    assert_ne!(*t, old, "never edit the live table");
    assert_eq!(*s, svc(*t, 1));
    assert!(r.core.maps.tables[t].iter().all(|&i| i == 1), "only backend 1 is left");
    // Up again: both backends, one more flip.
    r.core.on_health(0, true, None);
    let w = r.writes();
    let [MapWrite::Table(t2), MapWrite::Service(0, s2)] = w.as_slice() else { panic!("writes: {w:?}") };
    assert_eq!(*s2, svc(*t2, 1));
    let table = &r.core.maps.tables[t2];
    assert!(table.contains(&0) && table.contains(&1));
    // A repeated report changes nothing.
    r.core.on_health(0, true, None);
    assert_eq!(r.writes(), vec![]);
}

#[test]
fn a_backend_down_in_an_idle_pool_only_rebuilds_its_table() {
    let mut r = Rig::new(CONFIG);
    r.core.on_health(2, false, None);
    let w = r.writes();
    let [MapWrite::Table(t)] = w.as_slice() else { panic!("writes: {w:?}") };
    assert_eq!(r.slot("pool-b"), *t);
    assert!(r.core.maps.tables[t].iter().all(|&i| i == 3));
}

#[test]
fn a_pool_with_no_backend_left_drops_new_flows() {
    let mut r = Rig::new(CONFIG);
    r.core.on_health(0, false, None);
    r.core.on_health(1, false, None);
    assert!(r.core.maps.live_table(0).iter().all(|&i| i == NO_BACKEND));
}

#[test]
fn a_split_follows_health_changes_of_either_pool() {
    let mut r = Rig::new(CONFIG);
    let req = crate::api::model::SplitRequest {
        weights: weights(&[("pool-a", 50), ("pool-b", 50)]),
        ..Default::default()
    };
    r.core.split(None, &req, "t").unwrap();
    r.writes();
    r.core.on_health(3, false, None);
    let w = r.writes();
    // pool-b's own table, then a new split table, and one flip to it.
    let [MapWrite::Table(_), MapWrite::Table(split), MapWrite::Service(0, s)] = w.as_slice() else {
        panic!("writes: {w:?}")
    };
    assert_eq!(*s, svc(*split, 1));
    assert!(!r.core.maps.tables[split].contains(&3));
}
