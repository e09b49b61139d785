//! `lbctl completions SHELL`: a completion script, from the clap definitions.

use clap::{CommandFactory, ValueEnum};

use crate::Cli;

/// Shells `lbctl completions` writes a script for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// The completion script of `shell` for lbctl.
pub fn script(shell: CompletionShell) -> String {
    let mut script = Vec::new();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut Cli::command(), "lbctl", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts() {
        let bash = script(CompletionShell::Bash);
        assert!(bash.contains("lbctl"), "{bash}");
        assert!(bash.contains("complete -F _lbctl"), "{bash}");
        for word in ["switch", "top", "completions", "--wait-drained", "--iterations", "--retry-for"] {
            assert!(bash.contains(word), "{word}");
        }
        assert!(script(CompletionShell::Zsh).starts_with("#compdef lbctl"));
        assert!(script(CompletionShell::Fish).contains("complete -c lbctl"));
    }
}
