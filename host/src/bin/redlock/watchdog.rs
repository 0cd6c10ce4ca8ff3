//! The watchdog: a small process that `redlock run` starts (the same binary,
//! `redlock __watchdog`), which starts the job and alone decides when the
//! job is signalled.
//!
//! ```text
//! redlock run ──socket (fd 3)── redlock __watchdog ── job (own process group) ── its children
//! ```
//!
//! - It starts the job in a process group of its own and sends every signal
//!   to the whole group: the termination schedule, and the signals redlock
//!   forwards.
//! - It runs the termination schedule (`schedule::Enforcer`) on a
//!   `CLOCK_BOOTTIME` timer, so a stopped, starved or suspended redlock
//!   cannot make it late: redlock only moves the schedule when an extension
//!   is confirmed.
//! - When redlock dies for any reason (SIGKILL, the OOM killer), its end of
//!   the socket closes: the watchdog terminates the job at once (SIGTERM,
//!   then SIGKILL after the grace, and never after the scheduled kill).
//! - It is a child subreaper, so it reaps the job's orphans and knows when
//!   the group is empty; it then reports `gone` and exits.
//!
//! The watchdog ignores SIGINT, SIGTERM, SIGHUP and SIGQUIT (redlock
//! forwards them exactly once); the job gets them with the dispositions
//! redlock was started with.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use clap::Args;

use crate::schedule::{Action, Enforcer};
use crate::sys::{self, Ended};

/// The watchdog's fd for its socket to redlock.
pub const SOCKET_FD: i32 = 3;

/// After the job exited, how often to look whether the rest of its group
/// (background processes) is gone.
const GROUP_POLL_MS: i32 = 50;

/// Messages from redlock to the watchdog, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An extension was confirmed: the new SIGTERM and SIGKILL times
    /// (nanoseconds of `CLOCK_BOOTTIME`).
    At { term_at: u64, kill_at: u64 },
    /// The lock is certainly lost: terminate now.
    Terminate,
    /// Forward this signal to the job's group.
    Signal(i32),
}

/// Messages from the watchdog to redlock, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The job runs, as process (and group) `pid`.
    Started(i32),
    /// The job could not be started: the shell's code (126 / 127) and why.
    CannotRun(u8, String),
    /// The job's own process ended.
    Exited(Ended),
    /// The schedule sent SIGTERM to the group.
    SentTerm,
    /// The schedule sent SIGKILL to the group.
    SentKill,
    /// The job's whole process group is gone; the watchdog exits.
    Gone,
}

impl Command {
    pub fn line(&self) -> String {
        match self {
            Command::At { term_at, kill_at } => format!("at {term_at} {kill_at}\n"),
            Command::Terminate => "terminate\n".into(),
            Command::Signal(s) => format!("signal {s}\n"),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let mut w = line.split_whitespace();
        Some(match (w.next()?, w.next(), w.next()) {
            ("at", Some(t), Some(k)) => Command::At {
                term_at: t.parse().ok()?,
                kill_at: k.parse().ok()?,
            },
            ("terminate", None, None) => Command::Terminate,
            ("signal", Some(s), None) => Command::Signal(s.parse().ok()?),
            _ => return None,
        })
    }
}

impl Report {
    pub fn line(&self) -> String {
        match self {
            Report::Started(pid) => format!("started {pid}\n"),
            Report::CannotRun(code, why) => {
                format!("cannot-run {code} {}\n", why.replace('\n', " "))
            }
            Report::Exited(Ended::Code(c)) => format!("exited code {c}\n"),
            Report::Exited(Ended::Signal(s)) => format!("exited signal {s}\n"),
            Report::SentTerm => "sent-term\n".into(),
            Report::SentKill => "sent-kill\n".into(),
            Report::Gone => "gone\n".into(),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        Some(match word {
            "started" => Report::Started(rest.parse().ok()?),
            "cannot-run" => {
                let (code, why) = rest.split_once(' ')?;
                Report::CannotRun(code.parse().ok()?, why.to_owned())
            }
            "exited" => match rest.split_once(' ')? {
                ("code", c) => Report::Exited(Ended::Code(c.parse().ok()?)),
                ("signal", s) => Report::Exited(Ended::Signal(s.parse().ok()?)),
                _ => return None,
            },
            "sent-term" => Report::SentTerm,
            "sent-kill" => Report::SentKill,
            "gone" => Report::Gone,
            _ => return None,
        })
    }
}

/// `redlock __watchdog`: internal, started by `redlock run` only.
#[derive(Debug, Args)]
pub struct WatchdogArgs {
    /// Grace between SIGTERM and SIGKILL, ms (already clamped by run).
    #[arg(long)]
    pub grace_ms: u64,
    /// First SIGTERM time, ns of CLOCK_BOOTTIME.
    #[arg(long)]
    pub term_at: u64,
    /// First SIGKILL time, ns of CLOCK_BOOTTIME.
    #[arg(long)]
    pub kill_at: u64,
    /// Give the job's group the terminal on stdin.
    #[arg(long)]
    pub foreground: bool,
    /// The job.
    #[arg(required = true, last = true)]
    pub command: Vec<OsString>,
}

/// Runs the watchdog; returns its exit code (0 once the group is gone).
pub fn main(a: WatchdogArgs) -> u8 {
    match watch(a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("redlock watchdog: {e}");
            1
        }
    }
}

struct Link {
    socket: Option<UnixStream>,
    buf: Vec<u8>,
}

impl Link {
    fn send(&mut self, r: &Report) {
        if let Some(s) = &mut self.socket {
            // redlock may be gone: nothing to tell then.
            let _ = s.write_all(r.line().as_bytes());
        }
    }

    /// Reads what is there; `None` once redlock's end is closed.
    fn read(&mut self) -> Option<Vec<Command>> {
        let s = self.socket.as_mut()?;
        let mut chunk = [0u8; 512];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => {
                    self.socket = None;
                    return None;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.socket = None;
                    return None;
                }
            }
        }
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            if let Some(c) = std::str::from_utf8(&line).ok().and_then(Command::parse) {
                out.push(c);
            }
        }
        Some(out)
    }

    fn fd(&self) -> i32 {
        self.socket.as_ref().map_or(-1, |s| s.as_raw_fd())
    }
}

fn watch(a: WatchdogArgs) -> std::io::Result<()> {
    let socket = sys::take_socket(SOCKET_FD)?;
    socket.set_nonblocking(true)?;
    let mut link = Link {
        socket: Some(socket),
        buf: Vec::new(),
    };
    sys::set_child_subreaper()?;

    // The job gets the dispositions redlock was started with (under nohup,
    // SIGHUP stays ignored); the watchdog ignores what redlock forwards.
    let mut dispositions: Vec<(i32, bool)> = sys::FORWARDED
        .iter()
        .chain(&[libc::SIGTTOU])
        .map(|&s| (s, sys::is_ignored(s)))
        .collect();
    for &(s, _) in &dispositions {
        sys::ignore(s);
    }
    dispositions.shrink_to_fit();
    let children = sys::ChildSignals::new()?;
    let timer = sys::BootTimer::new()?;
    let terminal = if a.foreground {
        sys::stdin_foreground_group()
    } else {
        None
    };

    let mut cmd = std::process::Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    let pid = match sys::spawn_job(&mut cmd, dispositions, terminal.is_some()) {
        Ok(child) => child.id() as i32,
        Err(e) => {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => crate::exit::NOT_FOUND,
                _ => crate::exit::NOT_EXECUTABLE,
            };
            let why = format!("cannot run {}: {e}", a.command[0].to_string_lossy());
            link.send(&Report::CannotRun(code, why));
            return Ok(());
        }
    };
    if terminal.is_some() {
        // Both sides ask, as shells do, so neither order of events can
        // leave the job reading from a terminal it does not own.
        let _ = sys::set_stdin_foreground(pid);
    }
    link.send(&Report::Started(pid));

    let grace = Duration::from_millis(a.grace_ms);
    let mut schedule = Enforcer::new(a.term_at, a.kill_at, grace);
    let mut job_ended = false;
    loop {
        for action in schedule.due(sys::boottime_ns()) {
            let (sig, report) = match action {
                Action::Term => (libc::SIGTERM, Report::SentTerm),
                Action::Kill => (libc::SIGKILL, Report::SentKill),
            };
            let _ = sys::kill_group(pid, sig);
            link.send(&report);
        }
        while let Some((p, ended)) = sys::reap_any() {
            if p == pid {
                job_ended = true;
                link.send(&Report::Exited(ended));
            }
        }
        if job_ended && !sys::group_alive(pid) {
            break;
        }
        timer.set_at(schedule.next_at())?;
        // Background members of the group end without a SIGCHLD to us
        // while their parent lives: look again now and then.
        let timeout = if job_ended { GROUP_POLL_MS } else { -1 };
        let ready = sys::poll_readable(&[link.fd(), children.fd(), timer.fd()], timeout)?;
        if ready[0] {
            match link.read() {
                Some(commands) => {
                    for c in commands {
                        match c {
                            Command::At { term_at, kill_at } => schedule.confirm(term_at, kill_at),
                            Command::Terminate => schedule.terminate_now(sys::boottime_ns()),
                            Command::Signal(s) => {
                                let _ = sys::kill_group(pid, s);
                            }
                        }
                    }
                }
                None => {
                    eprintln!(
                        "redlock watchdog: redlock is gone; terminating the job (process group {pid})"
                    );
                    schedule.terminate_now(sys::boottime_ns());
                }
            }
        }
        if ready[1] {
            children.drain();
        }
        if ready[2] {
            timer.drain();
        }
    }
    if let Some(group) = terminal {
        // Give the terminal back to redlock's group.
        let _ = sys::set_stdin_foreground(group);
    }
    link.send(&Report::Gone);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message survives its own encoding.
    #[test]
    fn messages_round_trip() {
        for c in [
            Command::At {
                term_at: 1,
                kill_at: u64::MAX,
            },
            Command::Terminate,
            Command::Signal(15),
        ] {
            assert_eq!(Command::parse(c.line().trim_end()), Some(c));
        }
        for r in [
            Report::Started(42),
            Report::CannotRun(127, "cannot run x: No such file".into()),
            Report::Exited(Ended::Code(7)),
            Report::Exited(Ended::Signal(9)),
            Report::SentTerm,
            Report::SentKill,
            Report::Gone,
        ] {
            assert_eq!(Report::parse(r.line().trim_end()), Some(r));
        }
        assert_eq!(Command::parse("at 1"), None);
        assert_eq!(Report::parse("exited maybe 1"), None);
    }
}
