//! The command line.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Hold a Redis Redlock (N independent Redis nodes) around a command: for a
/// fleet what flock(1) does for one machine.
#[derive(Debug, Parser)]
#[command(name = "redlock", version, propagate_version = true)]
#[command(after_help = "\
Exit codes: the command's own code for `run`; 75 lock not acquired; \
76 lock lost (`run`: the command was terminated; `extend`: the nodes refused \
the token); 79 skipped by --once-per; 3 `doctor` found warnings; 2 bad usage \
or configuration (`doctor`: the nodes are unusable); \
1 other failures (`release`: the nodes refused the token); 126 / 127 the \
command could not be run.

Examples:
  redlock demo
  redlock --node redis://10.0.0.1 --node redis://10.0.0.2 --node redis://10.0.0.3 \\
      run --key nightly-backup --ttl 60s -- ./backup.sh
  REDLOCK_NODES=redis://a,redis://b,redis://c redlock status --key nightly-backup
  REDLOCK_NODES=redis://a,redis://b,redis://c redlock doctor")]
pub struct Cli {
    /// More logging: -v for details of each node's replies, -vv for everything.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// --node and --node-timeout before the subcommand, as the examples
    /// write them: both are global, so the subcommand's own `NodeArgs`
    /// receives them wherever on the line they are.
    #[command(flatten)]
    pub nodes: NodeArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Acquire the lock, run a command while holding it, release it after.
    ///
    /// Waits up to --wait for the lock (0s: one attempt). The command runs
    /// in a process group of its own under a watchdog process. While it
    /// runs, the lock is extended after each third of its validity. Whenever
    /// no extension is confirmed, the whole group gets SIGTERM at the latest
    /// --grace + 100 ms before the validity ends, and SIGKILL 100 ms before
    /// it, so the command never outlives the lock; redlock then exits 76.
    /// If redlock itself dies, the watchdog terminates the group. SIGINT,
    /// SIGTERM, SIGHUP and SIGQUIT sent to redlock reach the group once.
    /// redlock waits until the whole group has exited, then releases the
    /// lock.
    ///
    /// With --once-per PERIOD, a command that exits 0 leaves a marker, and
    /// any run of the key that finds it skips the command (exit 79).
    ///
    /// Example: redlock --node redis://a --node redis://b --node redis://c run --key nightly -- ./job.sh
    Run(RunArgs),
    /// Acquire the lock and print its token (for scripts).
    ///
    /// Example: token=$(redlock acquire --key deploy --ttl 5m)
    Acquire(AcquireArgs),
    /// Release a lock by its token.
    ///
    /// Example: redlock release --key deploy --token "$token"
    Release(TokenArgs),
    /// Extend a lock by its token to a new TTL.
    ///
    /// Example: redlock extend --key deploy --token "$token" --ttl 5m
    Extend(ExtendArgs),
    /// Show, per node, whether it is reachable and who holds the key.
    ///
    /// Example: redlock status --key nightly-backup
    Status(StatusArgs),
    /// Check that the nodes meet Redlock's assumptions.
    ///
    /// Asks every node, read-only, and prints one row per node: reachable
    /// (and faster than --node-timeout), a master (not a replica), cluster
    /// mode matching the URL (off for redis://, on for redis+cluster://,
    /// asked through the cluster's first seed), the Redis version (2.6.12+ needed, 6.0+ advised),
    /// maxmemory-policy (anything but noeviction can evict a held lock),
    /// persistence (and the restart rule it implies), the clock offset from
    /// this machine (over 1 s is a warning) and whether a server is listed
    /// twice (same run_id). A command refused by an ACL, renamed or
    /// disabled makes its check unknown, not a failure.
    ///
    /// Exit 0: all good; 3: warnings or unknown checks; 2: unusable (fewer
    /// usable masters than a quorum, or a server listed twice).
    ///
    /// Example: REDLOCK_NODES=redis://a,redis://b,redis://c redlock doctor
    Doctor(DoctorArgs),
    /// Internal: the watchdog `run` starts between itself and the command.
    #[command(name = "__watchdog", hide = true)]
    Watchdog(crate::watchdog::WatchdogArgs),
    /// Start local Redis nodes and let workers contend for one lock.
    ///
    /// With no --node it starts --nodes local redis-server processes on free
    /// loopback ports (stopped at the end). Workers take the lock, update a
    /// shared counter by read-pause-write, and release; any overlap would
    /// show as a lost update. Prints a summary with acquire latencies.
    ///
    /// Example: redlock demo --workers 16 --duration 10s --kill-node
    Demo(DemoArgs),
}

/// Where the nodes are.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A Redis node URL: redis://[user:password@]host[:port][/db], or
    /// rediss:// for TLS. Repeat for each node (3 or 5 is usual). A Redis
    /// Cluster as one node: redis+cluster://[user:password@]host1:port1,host2:port2
    /// (seed addresses of that one cluster; rediss+cluster:// for TLS).
    #[arg(long = "node", value_name = "URL", global = true)]
    pub node: Vec<String>,

    /// Per-node command timeout.
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = duration, global = true)]
    pub node_timeout: Duration,
}

impl NodeArgs {
    /// --node flags, else REDLOCK_NODES (comma-separated; a cluster's seeds
    /// stay together: see `split_node_list`).
    pub fn urls(&self) -> Vec<String> {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        redlock_wasm::split_node_list(&std::env::var("REDLOCK_NODES").unwrap_or_default())
    }
}

/// What `run` and `acquire` share: where the nodes are, which key, for how
/// long, and how long to wait for it.
#[derive(Debug, Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// The lock's key (the same on every host that must exclude each other).
    #[arg(long, short)]
    pub key: String,
    /// Lock TTL (`run` extends it while the command runs).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub ttl: Duration,
    /// How long to wait for the lock before giving up with exit code 75;
    /// 0s makes one attempt.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub wait: Duration,
    /// Give the lock a fencing token, a number higher than that of every
    /// earlier holder of the key (docs/FENCING.md): `run` gives it to the
    /// command as REDLOCK_FENCE, `acquire --json` prints it as "fence".
    /// Pass it with every write to the resource the lock protects, and
    /// have the resource refuse lower ones.
    #[arg(long)]
    pub fence: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockArgs,
    /// How long the command has between SIGTERM and SIGKILL when the lock
    /// cannot be confirmed. Clamped (with a warning) to what the lock's
    /// validity allows: at most half of it, less 100 ms.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub grace: Duration,
    /// Run the command at most once per PERIOD across hosts: after it exits
    /// 0, a marker stays on a quorum of nodes until PERIOD (less a tenth of
    /// it, at most 1 minute) after this run took the lock, and a run that
    /// finds the marker skips the command with exit code 79. 1s ..= 24h.
    #[arg(long, value_name = "PERIOD", value_parser = duration)]
    pub once_per: Option<Duration>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub lock: LockArgs,
    /// Print key, token and validity_ms (and with --fence, fence) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// The lock's key.
    #[arg(long, short)]
    pub key: String,
    /// The token `acquire` printed.
    #[arg(long, short)]
    pub token: String,
    /// How long to try.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub wait: Duration,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub lock: TokenArgs,
    /// The new TTL, from now.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub ttl: Duration,
    /// Print key and validity_ms as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// The lock's key.
    #[arg(long, short)]
    pub key: String,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// How long to spend on each node (all nodes are asked at once).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub timeout: Duration,
    /// Print the report as JSON: verdict, quorum, usable, reasons, and per
    /// node its findings (check, level, summary, detail).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Local nodes to start when no --node is given.
    #[arg(long = "nodes", value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=15))]
    pub local_nodes: u32,
    /// Workers contending for the lock.
    #[arg(long, short, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: u32,
    /// How long the workers run.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub duration: Duration,
    /// Kill one node half-way through to show the lock keeps working.
    #[arg(long)]
    pub kill_node: bool,
    /// The key the workers contend for.
    #[arg(long, short, default_value = "redlock-demo")]
    pub key: String,
}

/// Parses "30s", "500ms", "2m", "1h 30m".
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// clap's own consistency checks (an id defined twice, a bad default).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// --node and --node-timeout work before the subcommand, as the help's
    /// examples write them, and after it. Control: with the node options
    /// only on the subcommands, the first form was refused ("unexpected
    /// argument '--node'").
    #[test]
    fn node_options_go_before_or_after_the_subcommand() {
        for line in [
            &[
                "redlock",
                "--node",
                "redis://a",
                "--node-timeout",
                "2s",
                "doctor",
            ][..],
            &[
                "redlock",
                "doctor",
                "--node",
                "redis://a",
                "--node-timeout",
                "2s",
            ][..],
        ] {
            let cli = Cli::try_parse_from(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let Command::Doctor(d) = cli.command else {
                panic!("{line:?}")
            };
            assert_eq!(d.nodes.node, ["redis://a"], "{line:?}");
            assert_eq!(d.nodes.node_timeout, Duration::from_secs(2), "{line:?}");
        }
    }
}
