//! `lbctl man`: lbctl's man page (roff), generated from the clap definitions and the help
//! texts, so it cannot drift from `--help`.

use clap::CommandFactory;

use crate::{Cli, help};

/// Escapes a line of text for roff: backslashes, hyphens (so options copy as ASCII) and a
/// leading `.` or `'` (which would start a request).
fn roff_escape(line: &str) -> String {
    let s = line.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') { format!("\\&{s}") } else { s }
}

/// The label of an argument in the man page: `\fB\-s\fR, \fB\-\-service\fR \fINAME\fR`.
fn man_arg_label(a: &clap::Arg) -> String {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    if a.is_positional() {
        return format!("\\fI{}\\fR", roff_escape(&value));
    }
    let mut names = Vec::new();
    if let Some(c) = a.get_short() {
        names.push(format!("\\fB\\-{c}\\fR"));
    }
    if let Some(l) = a.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", roff_escape(l)));
    }
    let mut label = names.join(", ");
    if a.get_action().takes_values() {
        if a.get_num_args().is_some_and(|n| n.min_values() == 0) {
            label.push_str(&format!(" [\\fI{}\\fR]", roff_escape(&value)));
        } else {
            label.push_str(&format!(" \\fI{}\\fR", roff_escape(&value)));
        }
    }
    label
}

/// The COMMANDS section: per visible subcommand its synopsis, description, arguments (with
/// defaults and choices) and the examples of its `--help`.
fn man_commands(cmd: &clap::Command) -> String {
    let mut out = String::from(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| {
                !a.is_hide_set() && !a.is_global_set() && !["help", "version"].contains(&a.get_id().as_str())
            })
            .collect();
        let mut synopsis = format!("lbctl {}", sub.get_name());
        if args.iter().any(|a| !a.is_positional()) {
            synopsis.push_str(" [OPTIONS]");
        }
        for a in args.iter().filter(|a| a.is_positional()) {
            let value =
                a.get_value_names().and_then(|v| v.first()).map(|v| v.to_string()).unwrap_or_default();
            let many = a.get_num_args().is_some_and(|n| n.max_values() > 1);
            synopsis.push_str(&format!(" {value}{}", if many { "..." } else { "" }));
        }
        out.push_str(&format!(".SS \"{}\"\n", roff_escape(&synopsis)));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            for line in about.to_string().lines() {
                out.push_str(&roff_escape(line));
                out.push('\n');
            }
        }
        for a in &args {
            out.push_str(&format!(".TP\n{}\n", man_arg_label(a)));
            let help = a.get_long_help().or_else(|| a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let mut help = help.split_whitespace().collect::<Vec<_>>().join(" ");
            if !help.is_empty() && !help.ends_with('.') {
                help.push('.');
            }
            let choices: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if !choices.is_empty() && a.get_action().takes_values() {
                help.push_str(&format!(" One of: {}.", choices.join(", ")));
            }
            let defaults: Vec<String> =
                a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            if !defaults.is_empty() && a.get_action().takes_values() {
                help.push_str(&format!(" [default: {}]", defaults.join(", ")));
            }
            out.push_str(&roff_escape(&help));
            out.push('\n');
        }
        if let Some(after) = sub.get_after_long_help().or_else(|| sub.get_after_help()) {
            out.push_str(".PP\n.nf\n");
            for line in after.to_string().lines() {
                out.push_str(&roff_escape(line));
                out.push('\n');
            }
            out.push_str(".fi\n");
        }
    }
    out
}

/// `lbctl --help`'s epilogue as man sections: each heading line (`Examples:`, `Exit codes:`,
/// ...) starts a section (`EXAMPLES`, `EXIT STATUS`, ...) whose lines are kept as they are.
fn man_epilogue(text: &str) -> String {
    let mut out = String::new();
    let mut open = false;
    for line in text.lines() {
        let heading = !line.starts_with(' ') && line.ends_with(':') && line.split_whitespace().count() <= 2;
        if heading {
            if open {
                out.push_str(".fi\n");
            }
            let name = line.trim_end_matches(':');
            let title = if name == "Exit codes" { "EXIT STATUS".to_owned() } else { name.to_uppercase() };
            out.push_str(&format!(".SH \"{title}\"\n.nf\n"));
            open = true;
        } else if open {
            out.push_str(&roff_escape(line));
            out.push('\n');
        }
    }
    if open {
        out.push_str(".fi\n");
    }
    out
}

/// lbctl's man page (roff, section 1): clap_mangen's title, name, synopsis, description and
/// global options, then COMMANDS (every subcommand with its options and examples) and the
/// sections of `lbctl --help`'s epilogue (EXAMPLES, DURATIONS, EXIT STATUS, ENVIRONMENT).
pub fn page() -> String {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut head: Vec<u8> = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut head);
    let _ = man.render_name_section(&mut head);
    let _ = man.render_synopsis_section(&mut head);
    let _ = man.render_description_section(&mut head);
    let _ = man.render_options_section(&mut head);
    let mut page = String::from_utf8_lossy(&head).into_owned();
    page.push_str(&man_commands(&cmd));
    page.push_str(&man_epilogue(help!("lbctl")));
    page.push_str(lb_daemon::man::LBCTL_FILES_AND_SEE_ALSO);
    let mut tail: Vec<u8> = Vec::new();
    let _ = man.render_version_section(&mut tail);
    page.push_str(&String::from_utf8_lossy(&tail));
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_renders() {
        let page = page();
        assert!(page.starts_with(".TH") || page.contains(".SH NAME"), "{page}");
        assert!(page.contains(".TH lbctl 1"), "{page}");
        for section in
            [".SH SYNOPSIS", ".SH OPTIONS", ".SH COMMANDS", ".SH \"EXIT STATUS\"", ".SH \"ENVIRONMENT\""]
        {
            assert!(page.contains(section), "{section}");
        }
        assert!(page.contains(".SH FILES") && page.contains(".SH \"SEE ALSO\""), "{page}");
        assert!(page.contains(".SS \"lbctl top [OPTIONS]\""), "{page}");
        assert!(page.contains(".SS \"lbctl split [OPTIONS] POOL=PCT...\""), "{page}");
        assert!(page.contains("\\fB\\-\\-interval\\fR \\fIDURATION\\fR"), "{page}");
        assert!(page.contains("[default: 1s]"), "{page}");
        assert!(page.contains("One of: bash, zsh, fish."), "{page}");
        assert!(page.contains("  9  the daemon rolled back automatically during \\-\\-watch"), "{page}");
        // The hidden `man` itself is not listed; no line starts a roff request by accident.
        assert!(!page.contains("lbctl man"), "{page}");
        for line in page.lines().filter(|l| l.starts_with('.') || l.starts_with('\'')) {
            let request = line[1..].split_whitespace().next().unwrap_or("");
            assert!(
                ["TH", "SH", "SS", "TP", "PP", "nf", "fi", "RS", "RE", "IP", "ie", "el", "br"]
                    .contains(&request),
                "{line}"
            );
        }
        assert_eq!(roff_escape(".hidden \\ -x"), "\\&.hidden \\e \\-x");
    }
}
