//! Adoption: a daemon restarted on pinned maps that still forward comes back to the saved
//! state (active pool, epoch, history) without writing any table a live service points at,
//! and with one `SERVICES` write per service.

use super::*;
use crate::{
    api::model::RollbackRequest,
    dataplane::{Maps, fake::FakeMaps},
};

#[test]
fn a_restart_adopts_the_saved_state_and_never_writes_a_live_table() {
    let mut first = Rig::new(CONFIG);
    first.core.switch(None, &SwitchRequest { hard: true, ..to("pool-b") }, "ci").unwrap();
    let live = first.service();
    let saved = first.store.last();
    let Rig { core, .. } = first;
    let mut maps: FakeMaps = core.maps;
    maps.take_writes();

    let store = MemStore::default();
    let c = Arc::new(AtomicU64::new(T0_MS));
    let c2 = c.clone();
    let mut core = Core::start(
        config(CONFIG),
        maps,
        saved.clone(),
        Box::new(store.clone()),
        true,
        Box::new(move || c2.load(Ordering::SeqCst)),
    )
    .unwrap();
    let writes = core.maps.take_writes();
    for w in &writes {
        if let MapWrite::Table(slot) = w {
            assert_ne!(
                *slot, live.table,
                "the table the running data plane uses was overwritten: {writes:?}"
            );
        }
    }
    let services = service_writes(&writes);
    let b_slot = core.pool_slots[&("web".to_string(), "pool-b".to_string())];
    assert_eq!(services, vec![(0, svc(b_slot, 2))], "one flip, to pool-b, keeping the epoch");
    assert_eq!(core.state.services["web"].active, Active::Pool("pool-b".into()));
    assert_eq!(core.state.history, saved.history);
    assert_eq!(store.last(), core.state);
    // The slot reserved for the adopted table is free again once nothing points at it.
    assert!(core.reserved.is_empty());
    // The back button still works after the restart.
    core.rollback(None, &RollbackRequest::default(), "ops").unwrap();
    let a_slot = core.pool_slots[&("web".to_string(), "pool-a".to_string())];
    assert_eq!(service_writes(&core.maps.take_writes()), vec![(0, svc(a_slot, 2))]);
}

#[test]
fn an_adopted_epoch_wins_over_the_saved_one() {
    // The maps went on with a later epoch than the file recorded (the file is older).
    let r = Rig::new(CONFIG);
    let saved = r.store.last();
    let Rig { core, .. } = r;
    let mut maps = core.maps;
    let s = maps.services[&0];
    maps.services.insert(0, Service { epoch: 9, ..s });
    let rig = Rig::start(CONFIG, maps, saved, true);
    assert_eq!(rig.service().epoch, 9);
    assert_eq!(rig.core.state.services["web"].epoch, 9);
}

#[test]
fn a_service_no_longer_configured_is_disabled_on_adoption() {
    let two = format!(
        "{CONFIG}\n[[services]]\nname = \"api\"\nvips = [\"192.0.2.20:80\"]\nactive = \"p\"\n[services.pools.p]\nbackends = [\"10.0.3.1:80\"]\n"
    );
    let r = Rig::new(&two);
    let saved = r.store.last();
    let api_id = saved.services["api"].id;
    let Rig { core, .. } = r;
    let mut maps = core.maps;
    maps.take_writes();
    let mut rig = Rig::start(CONFIG, maps, saved, true);
    assert_eq!(rig.core.maps.services[&api_id], Service::default());
    assert!(
        !rig.core
            .maps
            .vip_keys()
            .iter()
            .any(|k| *k == crate::engine::endpoint_key(&"192.0.2.20:80".parse().unwrap()))
    );
    assert_eq!(rig.writes(), vec![]);
}
