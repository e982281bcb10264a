//! `reap worker` (the instance process the server starts; not for people) and the
//! options that say how instance processes are jailed.

use std::process::ExitCode;

use reap_worker::{Ids, WorkerConfig};

/// How instance processes are confined (`reap serve`, `reap restore`, `reap invoke`).
#[derive(clap::Args, Debug, Clone)]
pub struct JailArgs {
    /// Run instance processes unconfined: no namespaces, root, seccomp filter or
    /// cgroup (for hosts without them, and for debugging).
    #[arg(long)]
    pub no_jail: bool,
    /// The unprivileged uid instance processes run as.
    #[arg(long, default_value_t = Ids::default().uid)]
    pub jail_uid: u32,
    /// The unprivileged gid instance processes run as.
    #[arg(long, default_value_t = Ids::default().gid)]
    pub jail_gid: u32,
    /// CPU limit of each instance process, in cores (e.g. 0.5); default none.
    #[arg(long, value_name = "CORES")]
    pub cpu_limit: Option<f64>,
}

impl JailArgs {
    /// The configuration of instance processes of this very program, `prestart` of
    /// them started ahead.
    pub fn config(&self, prestart: usize) -> anyhow::Result<WorkerConfig> {
        let exe = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find this program's path: {e}"))?;
        let cpu_millicores = match self.cpu_limit {
            None => None,
            Some(c) if c.is_finite() && c > 0.0 && c <= 1024.0 => Some((c * 1000.0).round() as u32),
            Some(_) => anyhow::bail!("--cpu-limit must be a number of cores between 0 and 1024"),
        };
        Ok(WorkerConfig {
            jail: (!self.no_jail).then_some(Ids {
                uid: self.jail_uid,
                gid: self.jail_gid,
            }),
            prestart,
            cpu_millicores,
            ..WorkerConfig::new(exe)
        })
    }
}

/// The arguments of `reap worker`.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Run unconfined.
    #[arg(long, conflicts_with_all = ["uid", "gid"])]
    pub no_jail: bool,
    /// The uid to drop to.
    #[arg(long, default_value_t = Ids::default().uid)]
    pub uid: u32,
    /// The gid to drop to.
    #[arg(long, default_value_t = Ids::default().gid)]
    pub gid: u32,
    /// Log forbidden system calls (kernel log) instead of killing the process.
    #[arg(long)]
    pub seccomp_log: bool,
    /// Deploy (boot and snapshot) instead of restoring.
    #[arg(long)]
    pub for_deploy: bool,
    /// Make a VM shell of this much guest memory (MiB) while waiting.
    #[arg(long, value_name = "MIB")]
    pub shell_mib: Option<u64>,
    /// Enter the jail with this directory as the root, as for a restore, and report
    /// what the process can do there instead of serving.
    #[arg(long, value_name = "DIR")]
    pub check_jail: Option<std::path::PathBuf>,
    /// With --check-jail: a path to try to open.
    #[arg(long, value_name = "PATH", requires = "check_jail")]
    pub open: Vec<String>,
    /// With --check-jail: a system call number to make last.
    #[arg(long, value_name = "NR", requires = "check_jail")]
    pub syscall: Option<i64>,
    /// With --syscall: its arguments in order (up to six; the rest are zero).
    #[arg(
        long = "arg",
        value_name = "N",
        requires = "syscall",
        allow_hyphen_values = true
    )]
    pub syscall_args: Vec<i64>,
}

/// Runs the instance process on the socket the server passed as descriptor 3.
pub fn worker(args: &WorkerArgs) -> ExitCode {
    if let Some(dir) = &args.check_jail {
        let check = reap_worker::child::Check {
            dir: dir.clone(),
            open: args.open.clone(),
            syscall: args.syscall,
            syscall_args: args.syscall_args.clone(),
        };
        let ids = Ids {
            uid: args.uid,
            gid: args.gid,
        };
        return reap_worker::child::check_jail(&check, ids, args.seccomp_log);
    }
    let options = reap_worker::child::Options {
        jail: (!args.no_jail).then_some(Ids {
            uid: args.uid,
            gid: args.gid,
        }),
        seccomp_log: args.seccomp_log,
        deploy: args.for_deploy,
        shell_mib: args.shell_mib,
    };
    reap_worker::child::main(&options)
}
