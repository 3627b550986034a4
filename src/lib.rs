//! chatspace-mpi: embed large text datasets with MPI ranks (controller, loaders, encoders, writers) into
//! Parquet shards and a JSON manifest that is the run's checkpoint.

pub mod batching;
pub mod card;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod controller;
pub mod device;
pub mod encode;
pub mod encoder;
pub mod exit;
#[cfg(test)]
mod fuzz;
pub mod htmlreport;
pub mod hub;
pub mod input;
pub mod inspect;
pub mod layout;
pub mod manifest;
pub mod model;
pub mod output;
pub mod plan;
pub mod protocol;
pub mod quantize;
pub mod ranges;
pub mod roles;
pub mod scheduler;
pub mod tokenize;
pub mod tokens;
pub mod transport;
pub mod walltime;
pub mod windows;
pub mod writer;

use std::sync::atomic::Ordering;

use clap::Parser;

use crate::cli::{Cli, Command, EmbedArgs};
use crate::controller::Outcome;
use crate::layout::{Layout, Role};
use crate::transport::{MpiWire, Router, RouterOutcome};

pub use exit::{EXIT_FAILED, EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE};

/// Parses the command line and runs it; returns the process exit code.
pub fn run() -> i32 {
    keep_freed_memory();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp_millis().init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Embed(_)) {
        // Commands that print and end (status, verify, encode) stop quietly when their reader goes away, as
        // Unix tools do (`... | head`), instead of panicking on a write to a closed pipe. `embed` keeps Rust's
        // default: its ranks handle signals themselves.
        // SAFETY: resetting a signal to its default action, before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Embed(args) => embed(args),
        Command::Verify { manifest, jobs } => inspect::verify_command(&manifest, jobs),
        Command::Status { manifest, json } => inspect::status_command(&manifest, json),
        Command::Encode(args) => encode::command(&args),
        Command::Tokens(args) => tokens::command(&args),
        Command::Report { path, output } => htmlreport::command(&path, &output),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "chatspace-mpi", &mut std::io::stdout());
            EXIT_OK
        }
    }
}

/// Messages and shards are buffers of hundreds of KiB to tens of MiB, allocated and freed all the time. By
/// default glibc maps each one fresh from the kernel and unmaps it on free, so every byte written costs a page
/// fault (a third of the CPU time of a no-op-encoder run under mpirun). Serving them from the heap and keeping
/// freed memory lets buffers be reused; the heap stays bounded by the pipeline's bounded queues.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// This process's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `embed` on this rank: its roles on threads, its main thread routing messages (and MPI). Returns the
/// process exit code (or exits the process at once when the controller stopped the job mid-batch).
pub fn embed(args: EmbedArgs) -> i32 {
    // First thing, before MPI_Init (which takes a while): a scheduler's signal must never kill a rank.
    if let Err(e) = transport::install_signal_handlers() {
        eprintln!("error: cannot install signal handlers: {e}");
        return EXIT_FAILED;
    }
    let mut wire = MpiWire::init_if_launched();
    let rank = wire.as_ref().map_or(0, |w| w.rank());
    let hosts = wire.as_ref().map_or_else(|| vec![transport::this_host()], |w| w.hosts());
    let layout = match Layout::place(&hosts, args.loaders, args.writers, args.local_encoders) {
        Ok(l) => l,
        Err(e) => {
            if rank == 0 {
                eprintln!("error: {e}");
            }
            // The command line parsed; its values do not fit (README: exit codes).
            return EXIT_FAILED;
        }
    };
    let (routed, controller) = run_roles(&args, rank, &layout, &mut wire);
    let code = match controller {
        Some(outcome) => {
            if !outcome.said {
                if let Some(message) = &outcome.error {
                    eprintln!("error: {message}");
                }
                if let Some(path) = &args.status_file {
                    controller::write_status_file(path, outcome.code, outcome.manifest.as_deref());
                }
            }
            if outcome.abort {
                // Roles here and on other ranks may be mid-batch or stuck; the other ranks were sent `Abort` and
                // exit on their own. MPI_Finalize would wait for them, MPI_Abort can hang in the launcher.
                std::process::exit(outcome.code);
            }
            outcome.code
        }
        // Local roles may still be mid-batch: end the process now (see `Header::Abort`).
        None if routed.abort_code.is_some() => std::process::exit(routed.abort_code.unwrap_or(EXIT_FAILED)),
        // Other ranks: the controller's verdict, or a failure of a local role (reported to rank 0).
        None => routed.shutdown_code.unwrap_or(if routed.results.iter().any(|(_, r)| r.is_err()) { EXIT_FAILED } else { EXIT_OK }),
    };
    if transport::TERMINATING.load(Ordering::SeqCst) {
        // mpirun is tearing the job down: MPI_Finalize would block until SIGKILL. Everything is committed.
        std::process::exit(code);
    }
    drop(wire);
    code
}

/// A whole `embed` job in this process, every role on a thread of its own and no MPI or signal handlers: for
/// tests and embedding the pipeline in other programs. The roles have ended when it returns, unless the
/// outcome says `abort` (then some may still be finishing a batch).
pub fn embed_in_process(args: EmbedArgs) -> Outcome {
    let layout = match Layout::new(1, args.loaders, args.writers, args.local_encoders) {
        Ok(l) => l,
        Err(e) => return Outcome { code: EXIT_FAILED, abort: false, error: Some(e), manifest: None, said: false },
    };
    let (_, controller) = run_roles(&args, 0, &layout, &mut None);
    controller.expect("rank 0 hosts the controller; this is a bug")
}

/// Runs this rank's roles until they end; on rank 0, also returns the controller's outcome.
fn run_roles(args: &EmbedArgs, rank: usize, layout: &Layout, wire: &mut Option<MpiWire>) -> (RouterOutcome, Option<Outcome>) {
    let timeout = (args.rank_timeout > 0.0 && args.rank_timeout.is_finite()).then(|| std::time::Duration::from_secs_f64(args.rank_timeout));
    let mut router = Router::new(rank, layout.clone()).with_rank_timeout(if wire.is_some() { timeout } else { None });
    let (outcome_tx, outcome_rx) = std::sync::mpsc::channel();
    for e in layout.local_endpoints(rank) {
        let mb = router.mailbox(e);
        let (role, _) = layout.role_of(e);
        let handle = match role {
            Role::Controller => {
                let (args, layout, tx) = (args.clone(), layout.clone(), outcome_tx.clone());
                roles::spawn(role, mb, move |mb| {
                    let outcome = controller::run(mb, &args, &layout);
                    let result = outcome.error.clone().map_or(Ok(()), |m| Err(roles::RoleError::new(m)));
                    let _ = tx.send(outcome);
                    result
                })
            }
            Role::Loader => roles::spawn(role, mb, roles::loader),
            Role::Encoder => roles::spawn(role, mb, roles::encoder),
            Role::Writer => roles::spawn(role, mb, writer::run),
        };
        router.add_role(e, handle);
    }
    drop(outcome_tx);
    let routed = router.run(wire);
    if let Some(kib) = peak_rss_kib() {
        let roles: Vec<String> = layout
            .local_endpoints(rank)
            .iter()
            .map(|&e| {
                let (r, i) = layout.role_of(e);
                format!("{} {i}", r.name())
            })
            .collect();
        log::info!("rank {rank} ({}): peak RSS {:.1} MiB", roles.join(" + "), kib as f64 / 1024.0);
    }
    let controller = outcome_rx.try_recv().ok().or_else(|| {
        // The controller thread panicked: its result holds the message.
        routed.results.iter().find(|(e, _)| *e == layout.controller()).map(|(_, r)| Outcome {
            code: EXIT_FAILED,
            abort: layout.world_size > 1,
            error: Some(r.clone().err().unwrap_or_else(|| "the controller ended without an outcome (this is a bug)".into())),
            manifest: None,
            said: false,
        })
    });
    (routed, controller)
}
