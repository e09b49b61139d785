//! What a config reload (SIGHUP, `lbctl reload`) does to `[bgp]`: new settings (include file,
//! BIRD socket, `birdc`) take effect without a restart once BIRD confirmed them, and are undone
//! when the rest of the reload is refused. Adding or removing the whole table needs a restart
//! (the engine refuses it, see `engine::reload::needs_restart`): the announcer and the host API
//! exist from the start or not at all.

use std::sync::Arc;

use super::{BgpConfig, Fleet};
use crate::api::model::ApiError;

/// New `[bgp]` settings in use, with what to go back to.
pub struct BgpReload {
    fleet: Arc<Fleet>,
    old: BgpConfig,
    /// The changes in words, for the reload's outcome.
    pub changes: Vec<String>,
}

impl BgpReload {
    /// Goes back to the settings before the reload (the rest of it was refused). Best effort:
    /// a failure is logged and the next evaluation retries with the old settings.
    pub fn undo(self) {
        if let Err(e) = self.fleet.reconfigure(&self.old) {
            tracing::error!(error = %e, "BGP: going back to the previous [bgp] settings failed; retrying");
        }
    }
}

/// Tries a reload's `[bgp]` (`new`, already validated) on the running announcer before the rest
/// of the reload: `Ok(None)` when there is nothing to do here (no change, or the table is added
/// or removed, which the engine refuses), the applied change, or a refusal saying why BIRD did
/// not take it (nothing changed).
pub fn prepare(
    fleet: Option<&Arc<Fleet>>,
    old: Option<&BgpConfig>,
    new: Option<&BgpConfig>,
) -> Result<Option<BgpReload>, ApiError> {
    let (Some(fleet), Some(old), Some(new)) = (fleet, old, new) else { return Ok(None) };
    if old == new {
        return Ok(None);
    }
    let changes = fleet.reconfigure(new).map_err(|e| {
        ApiError::refused(format!(
            "config not reloaded, nothing changed: BIRD did not take the new [bgp] settings: {e}"
        ))
    })?;
    Ok(Some(BgpReload { fleet: fleet.clone(), old: old.clone(), changes }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::ErrorCode;
    use crate::fleet::host::test_status;
    use std::path::Path;

    fn calls(socket_dir: &Path) -> Vec<String> {
        std::fs::read_to_string(socket_dir.join("calls"))
            .map(|t| t.lines().map(String::from).collect())
            .unwrap_or_default()
    }

    #[test]
    fn new_include_file_and_socket_take_effect_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Arc::new(Fleet::for_tests(dir.path()));
        fleet.apply_for_tests(&test_status(2));
        let old = fleet.settings();
        assert_eq!(calls(dir.path()).len(), 1);

        let other = tempfile::tempdir().unwrap();
        let new = BgpConfig {
            include_file: other.path().join("lb-vips.conf"),
            birdc_socket: other.path().join("bird.ctl"),
            birdc: old.birdc.clone(),
        };
        // Unchanged: nothing to do, BIRD is not asked.
        assert!(prepare(Some(&fleet), Some(&old), Some(&old)).unwrap().is_none());
        let done = prepare(Some(&fleet), Some(&old), Some(&new)).unwrap().expect("a change");
        assert_eq!(done.changes.len(), 2, "{:?}", done.changes);
        assert!(done.changes[0].starts_with("bgp.include_file "), "{:?}", done.changes);
        assert!(done.changes[1].starts_with("bgp.birdc_socket "), "{:?}", done.changes);
        // The new file holds what was announced, and the new socket was told.
        let text = std::fs::read_to_string(&new.include_file).unwrap();
        assert!(text.contains("route 192.0.2.10/32 blackhole;"), "{text}");
        assert_eq!(calls(other.path()), vec![format!("-s {} configure", new.birdc_socket.display())]);
        assert_eq!(fleet.settings(), new);
        let v = fleet.view();
        assert!(v.in_sync && v.include_file == new.include_file.display().to_string(), "{v:?}");
        // From now on the announcer uses them: a withdrawal goes to the new file and socket.
        fleet.apply_for_tests(&test_status(0));
        assert!(!std::fs::read_to_string(&new.include_file).unwrap().contains("route"));
        assert_eq!(calls(other.path()).len(), 2);
        assert_eq!(calls(dir.path()).len(), 1, "the old socket is not used any more");

        // The rest of the reload refused: back to the old settings.
        done.undo();
        assert_eq!(fleet.settings(), old);
        fleet.apply_for_tests(&test_status(2));
        assert!(std::fs::read_to_string(&old.include_file).unwrap().contains("route 192.0.2.10/32"));
    }

    #[test]
    fn settings_bird_does_not_take_are_refused_with_nothing_changed() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = Arc::new(Fleet::for_tests(dir.path()));
        fleet.apply_for_tests(&test_status(2));
        let old = fleet.settings();
        let before = std::fs::read_to_string(&old.include_file).unwrap();

        // A socket BIRD does not answer on (the fake birdc fails there).
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("fail"), "").unwrap();
        let new = BgpConfig {
            include_file: other.path().join("lb-vips.conf"),
            birdc_socket: other.path().join("bird.ctl"),
            birdc: old.birdc.clone(),
        };
        let e = prepare(Some(&fleet), Some(&old), Some(&new)).err().expect("refused");
        assert_eq!(e.code, ErrorCode::Refused);
        assert!(e.message.starts_with("config not reloaded, nothing changed: BIRD did not take"), "{e}");
        assert!(e.message.contains("Connection refused"), "{e}");
        assert_eq!(fleet.settings(), old);
        assert!(!new.include_file.exists(), "the file it created is removed");
        assert_eq!(std::fs::read_to_string(&old.include_file).unwrap(), before);
        let v = fleet.view();
        assert!(v.in_sync && v.bird_error.is_none(), "the running announcement is untouched: {v:?}");
        // A birdc that does not exist: refused too.
        let missing = BgpConfig { birdc: dir.path().join("no-such-birdc"), ..old.clone() };
        assert!(prepare(Some(&fleet), Some(&old), Some(&missing)).is_err());
        assert_eq!(fleet.settings(), old);

        // Adding or removing the table is not handled here (the engine refuses it).
        assert!(prepare(Some(&fleet), Some(&old), None).unwrap().is_none());
        assert!(prepare(None, None, Some(&new)).unwrap().is_none());
        assert_eq!(fleet.settings(), old);
    }
}
