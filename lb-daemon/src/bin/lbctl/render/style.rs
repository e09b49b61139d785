//! Colours of the text output, through anstyle. Whether a stream gets them is anstream's
//! decision: only a terminal, not with `NO_COLOR` set (non-empty) or `TERM=dumb` (and the
//! `CLICOLOR`/`CLICOLOR_FORCE` conventions it also honours).

use anstream::{AutoStream, ColorChoice};
use anstyle::{AnsiColor, Effects, Style};
use lb_daemon::api::model::WatchState;

/// Colours for one output stream, or plain text when they are off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paint {
    /// Whether to emit escape sequences.
    on: bool,
}

impl Paint {
    /// No colours.
    #[cfg(test)]
    pub const OFF: Paint = Paint { on: false };

    /// Colours always (tests).
    #[cfg(test)]
    pub const ON: Paint = Paint { on: true };

    /// Colours for stdout, when anstream would colour it.
    pub fn stdout() -> Paint {
        Paint { on: AutoStream::choice(&std::io::stdout()) != ColorChoice::Never }
    }

    /// Colours for stderr, when anstream would colour it.
    pub fn stderr() -> Paint {
        Paint { on: AutoStream::choice(&std::io::stderr()) != ColorChoice::Never }
    }

    fn paint(self, style: Style, text: &str) -> String {
        if self.on { format!("{style}{text}{style:#}") } else { text.to_owned() }
    }

    fn fg(self, colour: AnsiColor, text: &str) -> String {
        self.paint(Style::new().fg_color(Some(colour.into())), text)
    }

    /// Bold (names, the active pool).
    pub fn bold(self, text: &str) -> String {
        self.paint(Style::new().effects(Effects::BOLD), text)
    }

    /// Red (down, below min, rolled back).
    pub fn red(self, text: &str) -> String {
        self.fg(AnsiColor::Red, text)
    }

    /// Green (up, passed).
    pub fn green(self, text: &str) -> String {
        self.fg(AnsiColor::Green, text)
    }

    /// Yellow (watching, generic XDP).
    pub fn yellow(self, text: &str) -> String {
        self.fg(AnsiColor::Yellow, text)
    }

    /// The `lbctl:` prefix of an error line: bold red.
    pub fn error(self, text: &str) -> String {
        self.paint(Style::new().effects(Effects::BOLD).fg_color(Some(AnsiColor::Red.into())), text)
    }

    /// Text about a watch, coloured by its state.
    pub fn watch(self, state: WatchState, text: &str) -> String {
        match state {
            WatchState::Watching => self.yellow(text),
            WatchState::Passed => self.green(text),
            WatchState::RolledBack => self.red(text),
            WatchState::Cancelled => text.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_when_on() {
        assert_eq!(Paint::ON.green("up"), "\x1b[32mup\x1b[0m");
        assert_eq!(Paint::ON.bold("web"), "\x1b[1mweb\x1b[0m");
        assert_eq!(Paint::OFF.red("DOWN"), "DOWN");
        assert_eq!(Paint::OFF.error("lbctl:"), "lbctl:");
        assert!(Paint::ON.error("lbctl:").contains("lbctl:\x1b[0m"));
    }
}
