//! `<state_dir>/<instance>.dataplane.json`: the sizes the pinned maps were created with. bpffs
//! holds only BPF objects, so they are kept beside the state file. A daemon adopting the pins
//! must use these sizes (the ring size is compiled into the program's view of `TABLES`), so a
//! corrupt file is an error, never a silent fallback to the configured sizes.

use super::{DataplaneError, DataplaneOptions};
use crate::atomic_file::write_atomic;
use std::{io::ErrorKind, path::Path};

/// Reads the recorded sizes: `Ok(None)` when there is no file, an error when it cannot be read
/// or does not parse (a half-written file from an older daemon, an edit by hand).
pub fn read(path: &Path) -> Result<Option<DataplaneOptions>, DataplaneError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataplaneError::Pin(format!("reading {}: {e}", path.display()))),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        DataplaneError::Pin(format!(
            "{} is corrupt ({e}); it records the sizes of the pinned maps. Fix or remove it (the \
             configured sizes are then assumed), or start from scratch with `lbctl shutdown --detach`",
            path.display()
        ))
    })
}

/// Records the sizes, atomically.
pub fn write(path: &Path, options: &DataplaneOptions) -> Result<(), DataplaneError> {
    let text = serde_json::to_vec(options).expect("options serialize");
    write_atomic(path, &text)
        .map_err(|e| DataplaneError::Pin(format!("writing the data-plane options {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/lb.dataplane.json");
        assert_eq!(read(&path).unwrap(), None);
        let o = DataplaneOptions { ring_size: 211, table_slots: 16, flow_entries: 4096 };
        write(&path, &o).unwrap();
        assert_eq!(read(&path).unwrap(), Some(o));
        // Half of a file, as a crash during a plain write leaves it.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("is corrupt") && e.contains("lb.dataplane.json"), "{e}");
    }
}
