//! What the long-running bins (`lb-demo`, `controlplane-bench`) share at the terminal: the
//! root check they start with, stopping early on Ctrl-C, and colours.

use anyhow::{Result, bail};
use std::{
    io::IsTerminal,
    process::ExitCode,
    time::{Duration, Instant},
};

/// `Err(exit code 1)` after saying why, unless running as root (`program` needs it because
/// of `why`).
pub fn require_root(program: &str, why: &str) -> Result<(), ExitCode> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    eprintln!("{program}: run as root ({why})");
    Err(ExitCode::from(1))
}

/// Whether SIGINT or SIGTERM arrived (see [`crate::interrupt`]).
pub fn stopped() -> bool {
    crate::interrupt::requested()
}

/// Fails with "interrupted" once a signal arrived (the caller's drops then clean up).
pub fn check_interrupted() -> Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps until `until` in small steps; false if interrupted first.
pub fn sleep_until(until: Instant) -> bool {
    loop {
        if stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
    }
}

/// A style of [`Ui::paint`], named by what it marks.
#[derive(Clone, Copy, Debug)]
pub enum Style {
    /// Headings and totals.
    Bold,
    /// Secondary details.
    Dim,
    /// Pool A's backends.
    PoolA,
    /// Pool B's backends.
    PoolB,
    /// A check that passed.
    Good,
    /// A failure.
    Bad,
    /// A command being run.
    Command,
}

impl Style {
    fn ansi(self) -> &'static str {
        match self {
            Self::Bold => "1",
            Self::Dim => "2",
            Self::PoolA => "36",
            Self::PoolB => "35",
            Self::Good => "32",
            Self::Bad => "1;31",
            Self::Command => "1;33",
        }
    }
}

/// Terminal styling: ANSI colours when stdout is a terminal, plain text otherwise.
pub struct Ui {
    color: bool,
}

impl Default for Ui {
    fn default() -> Self {
        Self::new()
    }
}

impl Ui {
    /// Colours only when stdout is a terminal.
    pub fn new() -> Self {
        Self { color: std::io::stdout().is_terminal() }
    }

    /// `text` in `style`.
    pub fn paint(&self, style: Style, text: &str) -> String {
        if self.color { format!("\x1b[{}m{text}\x1b[0m", style.ansi()) } else { text.to_string() }
    }

    /// Prints a section heading.
    pub fn heading(&self, text: &str) {
        println!("\n{}", self.paint(Style::Bold, &format!("── {text}")));
    }
}
