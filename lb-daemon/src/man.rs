//! The man pages' sections that clap cannot know: lb-daemon(8) whole (clap_mangen's name,
//! synopsis, description and options, then FILES, SIGNALS, EXIT STATUS, SEE ALSO), and the FILES
//! and SEE ALSO of lbctl(1). Packaged by `cargo xtask package` / `install`, so an SRE on the
//! host finds where things live and what an exit status means with `man`.

/// lb-daemon(8)'s FILES: where the config, state, pins and socket live.
const DAEMON_FILES: &str = r#".SH FILES
.TP
\fI/etc/lb/lb.toml\fR
The configuration (\fB\-\-config\fR, \fBLB_CONFIG\fR). \fBlb\-daemon \-\-print\-example\-config\fR
prints every key with its default and a comment; \fBlb\-daemon \-\-check\fR validates a file.
.TP
\fI/var/lib/lb/INSTANCE.state.json\fR
The desired state: the active pool of every service, the rollback target and the history. Written
atomically before a switch goes live; a restarted daemon (or a rebooted host) comes back to it.
\fIINSTANCE.dataplane.json\fR, \fIINSTANCE.bgp.json\fR and \fIINSTANCE.lock\fR live beside it
(\fBstate_dir\fR).
.TP
\fI/sys/fs/bpf/INSTANCE/\fR
The pinned maps and XDP link (\fBbpffs\fR). They outlive the daemon: forwarding continues while
it is stopped and the next daemon adopts them with the flow table. \fBlbctl shutdown \-\-detach\fR
removes them.
.TP
\fI/run/lb/lb.sock\fR
The management API (\fB[api] unix_socket\fR, mode 0600), used by \fBlbctl\fR(1).
.TP
\fI/lib/systemd/system/lb\-daemon.service\fR
The systemd unit (\fBType=notify\fR: READY=1 once the program is attached and the API listens).
"#;

/// lb-daemon(8)'s SIGNALS and EXIT STATUS.
const DAEMON_STATUS: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the configuration (as \fBlbctl reload\fR); an invalid file is refused and nothing changes.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Exit, leaving the program attached and the maps pinned: forwarding continues, health checks stop
until the next daemon starts.
.SH "EXIT STATUS"
.TP
\fB0\fR
Exited on request (signal or \fBlbctl shutdown\fR), or \fB\-\-check\fR found the file valid.
.TP
\fB1\fR
Failed: an invalid configuration (the message names the key), missing privileges (CAP_BPF and
CAP_NET_ADMIN), the instance run by another daemon, or the data plane could not be loaded or
attached. Nothing was left half done: a data plane this start created is removed again.
.TP
\fB2\fR
Usage error (unknown option).
"#;

/// lb-daemon(8)'s SEE ALSO.
const DAEMON_SEE_ALSO: &str = r#".SH "SEE ALSO"
\fBlbctl\fR(1), \fBsystemctl\fR(1), \fBip\-link\fR(8), \fBbpftool\fR(8),
\fI/usr/share/lb/ci\-switch.sh\fR (a CI pipeline step),
\fI/usr/share/doc/lb/README.md\fR
"#;

/// lbctl(1)'s FILES and SEE ALSO (its EXIT STATUS comes from `lbctl --help`).
pub const LBCTL_FILES_AND_SEE_ALSO: &str = r#".SH FILES
.TP
\fI/run/lb/lb.sock\fR
The daemon's API socket (\fB\-\-socket\fR, \fBLB_SOCKET\fR); mode 0600, so lbctl runs as root.
.TP
\fI/etc/lb/lb.toml\fR
The daemon's configuration, re\-read by \fBlbctl reload\fR.
.TP
\fI/usr/share/lb/ci\-switch.sh\fR
A CI pipeline step: a compare\-and\-swap switch with a daemon\-held watch; its exit status is
lbctl's.
.SH "SEE ALSO"
\fBlb\-daemon\fR(8), \fBsystemctl\fR(1), \fI/usr/share/doc/lb/README.md\fR
"#;

/// lb-daemon(8) for `cmd` (lb-daemon's clap definition): title, name, synopsis, description and
/// options from clap, then the sections above, then the version.
pub fn daemon_page(cmd: clap::Command) -> String {
    let man = clap_mangen::Man::new(cmd).section("8");
    let mut page: Vec<u8> = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = man.render_title(&mut page);
    let _ = man.render_name_section(&mut page);
    let _ = man.render_synopsis_section(&mut page);
    let _ = man.render_description_section(&mut page);
    let _ = man.render_options_section(&mut page);
    page.extend_from_slice(DAEMON_FILES.as_bytes());
    page.extend_from_slice(DAEMON_STATUS.as_bytes());
    page.extend_from_slice(DAEMON_SEE_ALSO.as_bytes());
    let _ = man.render_version_section(&mut page);
    String::from_utf8_lossy(&page).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_page_has_the_sections_an_sre_looks_for() {
        let cmd = clap::Command::new("lb-daemon")
            .about("XDP load balancer daemon")
            .version("1.0")
            .arg(clap::Arg::new("config").long("config").help("Config file"));
        let page = daemon_page(cmd);
        assert!(page.contains(".TH lb-daemon 8"), "{page}");
        for section in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH OPTIONS",
            ".SH FILES",
            ".SH \"EXIT STATUS\"",
            ".SH \"SEE ALSO\"",
        ] {
            assert!(page.contains(section), "{section} missing:\n{page}");
        }
        assert!(page.contains("\\-\\-config"), "{page}");
        for text in [DAEMON_FILES, DAEMON_STATUS, DAEMON_SEE_ALSO, LBCTL_FILES_AND_SEE_ALSO] {
            for line in text.lines().filter(|l| l.starts_with('.')) {
                let request = line[1..].split_whitespace().next().unwrap_or("");
                assert!(["SH", "TP"].contains(&request), "unexpected roff request {line}");
            }
        }
    }
}
