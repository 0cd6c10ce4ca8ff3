//! The POSIX and Linux calls `redlock run` needs that std does not offer,
//! each behind a small safe function: the only `unsafe` of the binary.
//!
//! Linux only: `PR_SET_CHILD_SUBREAPER`, `timerfd` on `CLOCK_BOOTTIME` and
//! `signalfd` have no portable equivalent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Sends `sig` to every process in group `pgid`.
pub fn kill_group(pgid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    check(unsafe { libc::kill(-pgid, sig) }).map(drop)
}

/// True while group `pgid` has a process in it (zombies included).
pub fn group_alive(pgid: i32) -> bool {
    match kill_group(pgid, 0) {
        Ok(()) => true,
        // A member we may not signal is still a member.
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// Makes orphaned descendants of this process its children (instead of
/// init's), so it can reap them and see when a process group is empty.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// exit(code)
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Ended {
    /// The code a shell reports: the code, or 128 + the signal.
    pub fn shell_code(self) -> u8 {
        match self {
            Ended::Code(c) => (c & 0xff) as u8,
            Ended::Signal(s) => 128u8.wrapping_add(s as u8),
        }
    }
}

/// Reaps one exited child, if any, without blocking.
pub fn reap_any() -> Option<(i32, Ended)> {
    let mut status = 0;
    // SAFETY: waitpid writes only the status integer we pass.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let ended = if libc::WIFSIGNALED(status) {
        Ended::Signal(libc::WTERMSIG(status))
    } else {
        Ended::Code(libc::WEXITSTATUS(status))
    };
    Some((pid, ended))
}

/// Now on `CLOCK_BOOTTIME`, in nanoseconds: the monotonic clock plus time
/// spent suspended, which Redis's wall-clock expiry also counts.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// A timer on `CLOCK_BOOTTIME` that a `poll` can wait on.
pub struct BootTimer(OwnedFd);

impl BootTimer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: returns a new fd or -1.
        let fd = check(unsafe {
            libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
        })?;
        // SAFETY: fd is ours and open.
        Ok(BootTimer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once at `at_ns` (boottime); `None` disarms. A time already
    /// passed fires at once.
    pub fn set_at(&self, at_ns: Option<u64>) -> io::Result<()> {
        let value = match at_ns {
            // 0 would disarm: an absolute time of 1 ns is long past.
            Some(at) => libc::timespec {
                tv_sec: (at.max(1) / 1_000_000_000) as libc::time_t,
                tv_nsec: (at.max(1) % 1_000_000_000) as libc::c_long,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: reads the itimerspec we pass; old value not requested.
        check(unsafe {
            libc::timerfd_settime(
                self.0.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })
        .map(drop)
    }

    /// Clears a fired timer so `poll` stops reporting it.
    pub fn drain(&self) {
        drain(self.0.as_raw_fd());
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// SIGCHLD as a readable fd (the signal is blocked in this thread).
pub struct ChildSignals(OwnedFd);

impl ChildSignals {
    pub fn new() -> io::Result<Self> {
        // SAFETY: sigset operations on a local set; sigprocmask and signalfd
        // read it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            check(libc::sigprocmask(
                libc::SIG_BLOCK,
                &set,
                std::ptr::null_mut(),
            ))?;
            let fd = check(libc::signalfd(
                -1,
                &set,
                libc::SFD_CLOEXEC | libc::SFD_NONBLOCK,
            ))?;
            Ok(ChildSignals(OwnedFd::from_raw_fd(fd)))
        }
    }

    pub fn drain(&self) {
        drain(self.0.as_raw_fd());
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Reads a non-blocking fd until it would block.
fn drain(fd: RawFd) {
    let mut buf = [0u8; 256];
    // SAFETY: reads into our local buffer, at most its length.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

/// Waits until one of `fds` is readable (or hung up), or `timeout_ms`
/// passes (-1: no timeout). Returns which are ready.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll reads and writes only the array we pass, of that length.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

/// The signals `redlock run` forwards to the job, and that its watchdog
/// ignores so that only redlock decides what reaches the job.
pub const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// True when `sig` is ignored in this process (as inherited, for example
/// under `nohup`).
pub fn is_ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one
    // into our local struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Ignores `sig` in this process.
pub fn ignore(sig: i32) {
    // SAFETY: signal() with SIG_IGN installs no code of ours.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// Sets `sig` to ignored or default. Async-signal-safe: used between fork
/// and exec.
pub fn set_disposition(sig: i32, ignored: bool) {
    let action = if ignored {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: as above; no handler of ours is installed.
    unsafe { libc::signal(sig, action) };
}

/// The terminal's foreground process group, if stdin is a terminal.
pub fn stdin_foreground_group() -> Option<i32> {
    // SAFETY: isatty and tcgetpgrp take an fd number only.
    unsafe {
        if libc::isatty(0) != 1 {
            return None;
        }
        let pg = libc::tcgetpgrp(0);
        (pg > 0).then_some(pg)
    }
}

/// This process's group.
pub fn own_group() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getpgrp() }
}

/// This process's id. Async-signal-safe.
pub fn own_pid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::getpid() }
}

/// Makes `pgid` the foreground group of the terminal on stdin. The caller
/// ignores SIGTTOU (a background process asking is otherwise stopped).
/// Async-signal-safe.
pub fn set_stdin_foreground(pgid: i32) -> io::Result<()> {
    // SAFETY: integers only.
    check(unsafe { libc::tcsetpgrp(0, pgid) }).map(drop)
}

/// Sets close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd number with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) }).map(drop)
}

/// Makes `fd` the child's fd `to` (clearing close-on-exec on the copy).
/// Async-signal-safe: used between fork and exec.
pub fn dup_to(fd: RawFd, to: RawFd) -> io::Result<()> {
    if fd == to {
        // dup2 would keep the flag: clear it.
        // SAFETY: fcntl on an fd number with integer arguments.
        return check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop);
    }
    // SAFETY: dup2 on fd numbers.
    check(unsafe { libc::dup2(fd, to) }).map(drop)
}

/// The socket redlock gave the watchdog as fd `fd`. Call once.
pub fn take_socket(fd: RawFd) -> io::Result<std::os::unix::net::UnixStream> {
    // SAFETY: fcntl only asks whether fd is open.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    set_cloexec(fd)?;
    // SAFETY: fd is open, was handed to this process for this purpose, and
    // nothing else owns it (callers take it once).
    Ok(unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) })
}

/// Spawns `cmd` with `fd` as its fd `to` (nothing else of ours leaks: std
/// opens every fd close-on-exec).
pub fn spawn_with_fd(
    cmd: &mut std::process::Command,
    fd: RawFd,
    to: RawFd,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only dup2 /
    // fcntl, which are async-signal-safe; it allocates nothing.
    unsafe { cmd.pre_exec(move || dup_to(fd, to)) };
    cmd.spawn()
}

/// Spawns the job: `dispositions` restored (the watchdog ignores the
/// signals it forwards; the job gets them as redlock got them), and when
/// `foreground`, the job's new process group takes the terminal.
pub fn spawn_job(
    cmd: &mut std::process::Command,
    dispositions: Vec<(i32, bool)>,
    foreground: bool,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec; signal, getpid,
    // tcsetpgrp and sigprocmask are async-signal-safe, and it only reads the captured
    // vector (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if foreground {
                // SIGTTOU is still ignored here (inherited), so asking from
                // a background group does not stop us.
                let _ = set_stdin_foreground(own_pid());
            }
            for &(sig, ignored) in &dispositions {
                set_disposition(sig, ignored);
            }
            // The watchdog blocks SIGCHLD for its signalfd; the job starts
            // with it unblocked whatever std does.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        })
    };
    cmd.spawn()
}
