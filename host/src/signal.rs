//! Sending a signal to a process by pid (with `sandbox::boot_ns`, one of
//! the two places this crate needs `unsafe`).

use std::io;

/// Sends `sig` to process `pid`.
pub fn send(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
