//! Reload: what changed, what needs a restart (refused, nothing written), and how a changed
//! service is applied (new tables beside the live one, one flip).

use super::*;
use crate::api::model::{ErrorCode, HistoryKind};
use lb_common::maps::BACKEND_UP;

#[test]
fn an_unchanged_config_writes_nothing() {
    let mut r = Rig::new(CONFIG);
    let out = r.core.reload(config(CONFIG), "test").unwrap();
    assert!(!out.changed && out.changes.is_empty());
    assert_eq!(r.writes(), vec![]);
}

#[test]
fn changed_flow_settings_are_one_settings_write_and_no_flip() {
    let mut r = Rig::new(CONFIG);
    let text = CONFIG.replace("ring_size = 401", "ring_size = 401\n[flows]\nnew_flow_limit = 500");
    let out = r.core.reload(config(&text), "test").unwrap();
    assert_eq!(out.changes, vec!["flows.new_flow_limit 125000 -> 500".to_string()]);
    let expected = lb_common::maps::Settings { new_flow_limit: 500, ..Default::default() };
    assert_eq!(r.writes(), vec![MapWrite::Settings(expected)]);
    assert_eq!(r.core.maps.settings, expected);
}

#[test]
fn keys_that_need_a_restart_are_refused_with_nothing_changed() {
    let mut r = Rig::new(CONFIG);
    let before = r.core.state.clone();
    let text = CONFIG.replace("ring_size = 401", "ring_size = 409").replace("\"eth0\"", "\"eth1\"");
    let e = r.core.reload(config(&text), "test").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert!(e.message.contains("changing interfaces, ring_size needs a daemon restart"), "{e}");
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.core.state, before);
    assert_eq!(r.core.config.ring_size, 401);
}

#[test]
fn a_new_backend_gets_a_fresh_index_new_tables_and_one_flip() {
    let mut r = Rig::new(CONFIG);
    let live = r.service().table;
    // Replaced rather than added: ring_size 401 holds a split of at most 4 backends.
    let text =
        CONFIG.replace(r#"["10.0.1.1:8080", "10.0.1.2:8080"]"#, r#"["10.0.1.1:8080", "10.0.1.3:8080"]"#);
    let out = r.core.reload(config(&text), "test").unwrap();
    assert!(out.changed);
    assert_eq!(
        out.changes,
        vec![
            "service web changed: pool pool-a: backend 10.0.1.3:8080 added, backend 10.0.1.2:8080 removed"
                .to_string()
        ]
    );
    let w = r.writes();
    assert!(w.contains(&MapWrite::Backend(4, r.core.maps.backends[&4])));
    assert_eq!(r.core.maps.backends[&4].flags, BACKEND_UP);
    for x in &w {
        if let MapWrite::Table(slot) = x {
            assert_ne!(*slot, live, "the live table is never edited");
        }
    }
    assert_eq!(service_writes(&w), vec![(0, svc(r.slot("pool-a"), 1))]);
    assert!(r.core.maps.live_table(0).contains(&4));
    assert_eq!(r.store.last(), r.core.state);
    assert_eq!(r.core.state.backend_indices["web/pool-a/10.0.1.3:8080"], 4);
}

#[test]
fn removing_the_active_pool_falls_back_to_the_configured_one_and_records_it() {
    let mut r = Rig::new(CONFIG);
    let text = CONFIG.replace("[services.pools.pool-b]", "[services.pools.pool-c]");
    r.core.switch(None, &to("pool-b"), "ci").unwrap();
    r.writes();
    let out = r.core.reload(config(&text), "ops").unwrap();
    assert!(out.changes.iter().any(|c| c.contains("pool-b no longer exists, serving pool-a")), "{out:?}");
    let last = r.core.state.history.last().unwrap();
    assert_eq!((last.kind, last.requester.as_str()), (HistoryKind::Reload, "ops"));
    assert_eq!(r.active(), Active::Pool("pool-a".into()));
    let w = r.writes();
    assert_eq!(service_writes(&w), vec![(0, svc(r.slot("pool-a"), 1))]);
    // pool-b's backends are retired (their flows re-balance).
    assert!(w.contains(&MapWrite::Backend(2, Default::default())));
    assert!(w.contains(&MapWrite::Backend(3, Default::default())));
}

#[test]
fn a_removed_service_is_disabled_and_its_vip_removed() {
    let two = format!(
        "{CONFIG}\n[[services]]\nname = \"api\"\nvips = [\"192.0.2.20:80\"]\nactive = \"p\"\n[services.pools.p]\nbackends = [\"10.0.3.1:80\"]\n"
    );
    let mut r = Rig::new(&two);
    let api = r.core.state.services["api"].id;
    let out = r.core.reload(config(CONFIG), "ops").unwrap();
    assert_eq!(out.changes, vec!["service api removed".to_string()]);
    let w = r.writes();
    assert!(w.contains(&MapWrite::Service(api, Service::default())));
    let vip = crate::engine::endpoint_key(&"192.0.2.20:80".parse().unwrap());
    assert!(w.contains(&MapWrite::VipRemoved(vip)));
    assert!(!r.core.state.services.contains_key("api"));
}

#[test]
fn the_drain_idle_timeout_reloads_without_touching_the_data_plane() {
    let mut r = Rig::new(CONFIG);
    let text = CONFIG.replace("ring_size = 401", "ring_size = 401\ndrain_idle_timeout = \"90s\"");
    let out = r.core.reload(config(&text), "ops").unwrap();
    assert!(out.changed);
    assert_eq!(out.changes, vec!["drain_idle_timeout 5m -> 1m 30s".to_string()]);
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.core.config.drain_idle_timeout, std::time::Duration::from_secs(90));
}

#[test]
fn adding_or_removing_the_bgp_table_needs_a_restart() {
    // BGP carries dsr services only.
    let dsr =
        CONFIG.replace("active = \"pool-a\"", "active = \"pool-a\"\nmode = \"dsr\"").replace(":8080", ":80");
    let with_bgp = format!("{dsr}\n[bgp]\ninclude_file = \"/etc/bird/lb-vips.conf\"\n");
    let mut r = Rig::new(&dsr);
    let e = r.core.reload(config(&with_bgp), "test").unwrap_err();
    assert_eq!(e.code, ErrorCode::Refused);
    assert!(e.message.contains("changing bgp (adding the table) needs a daemon restart"), "{e}");
    assert_eq!(r.writes(), vec![]);
    assert_eq!(r.core.config.bgp, None);
    let mut r = Rig::new(&with_bgp);
    let e = r.core.reload(config(&dsr), "test").unwrap_err();
    assert!(e.message.contains("changing bgp (removing the table) needs a daemon restart"), "{e}");
    assert!(r.core.config.bgp.is_some());
    // A changed [bgp] alone is no restart (the announcer takes it, see fleet::reload).
    let moved = with_bgp.replace("lb-vips.conf", "vips.conf");
    assert!(r.core.reload(config(&moved), "test").is_ok());
}
