//! What lbctl prints: aligned tables ([`table`]), colours ([`style`]), the daemon's JSON
//! ([`json`]) and the text pieces several commands share ([`parts`]); and the two ways to
//! write to stdout.

pub mod json;
pub mod parts;
pub mod style;
pub mod table;

use std::io::Write;

pub use style::Paint;

/// Writes to stdout; false when that failed (stdout closed: `lbctl top | head`).
pub fn write_stdout(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok()
}

/// Writes to stdout with a final newline, ignoring a closed pipe (`lbctl history | head`).
pub fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.is_empty() && !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}
