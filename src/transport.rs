//! Moving envelopes between endpoints: in-process channels between the roles of one rank, and MPI between
//! ranks. Every MPI call of the program lives in this module.
//!
//! Each role runs on its own thread with a [`Mailbox`]. The rank's main thread runs the [`Router`]: it
//! forwards envelopes from local roles to local inboxes or, through non-blocking MPI sends, to other ranks,
//! and it polls MPI for incoming envelopes. Only the main thread calls MPI (MPI_THREAD_FUNNELED). Waiting is a
//! poll with a short sleep: an MPI rank blocked in a receive spins a core at 100%, which on small nodes steals
//! the encoder's CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::layout::Layout;
use crate::protocol::{Endpoint, Envelope, Header};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the router of this rank has stopped")]
    Closed,
}

/// Signals seen by this process (the handlers only touch these atomics).
static SIGNALS: AtomicU32 = AtomicU32::new(0);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// SIGTERM or SIGINT was seen: mpirun is tearing the job down, so MPI_Finalize would block until SIGKILL.
pub static TERMINATING: AtomicBool = AtomicBool::new(false);

/// Installs handlers for SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 that only count the signal; the router turns
/// a new count into a message to the controller, which drains the job.
pub fn install_signal_handlers() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    for sig in [SIGTERM, SIGINT, SIGUSR1, SIGUSR2] {
        // SAFETY: the handler only performs atomic stores/increments, which are async-signal-safe.
        unsafe {
            signal_hook::low_level::register(sig, move || {
                LAST_SIGNAL.store(sig, Ordering::SeqCst);
                if sig == SIGTERM || sig == SIGINT {
                    TERMINATING.store(true, Ordering::SeqCst);
                }
                SIGNALS.fetch_add(1, Ordering::SeqCst);
            })?;
        }
    }
    Ok(())
}

/// A role's connection to the rest of the job.
pub struct Mailbox {
    pub me: Endpoint,
    inbox: Receiver<Envelope>,
    out: Sender<Envelope>,
    /// Messages set aside by [`Mailbox::hold`], handed out again before the inbox, in arrival order. Nothing
    /// orders messages of different senders: a loader's first batch can arrive before the controller's plan
    /// (certainly when the plan comes in parts), and waits here until the role has the plan. Bounded by the
    /// loaders' credit windows.
    held: std::cell::RefCell<std::collections::VecDeque<Envelope>>,
}

impl Mailbox {
    pub fn send(&self, to: Endpoint, header: Header, payload: Vec<u8>) -> Result<(), TransportError> {
        self.out.send(Envelope { from: self.me, to, header, payload }).map_err(|_| TransportError::Closed)
    }

    /// Sets a message aside until the role is ready for it: the next receives return it first.
    pub fn hold(&self, e: Envelope) {
        self.held.borrow_mut().push_back(e);
    }

    /// Waits up to `timeout` for a message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Envelope>, TransportError> {
        if let Some(e) = self.held.borrow_mut().pop_front() {
            return Ok(Some(e));
        }
        match self.inbox.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(TransportError::Closed),
        }
    }

    /// A send-only handle for the role's helper threads: what they send leaves at once, without waiting for
    /// the role's own loop to pass it on.
    pub fn outbox(&self) -> Outbox {
        Outbox { me: self.me, out: self.out.clone() }
    }

    pub fn try_recv(&self) -> Result<Option<Envelope>, TransportError> {
        if let Some(e) = self.held.borrow_mut().pop_front() {
            return Ok(Some(e));
        }
        match self.inbox.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(TransportError::Closed),
        }
    }
}

/// Sends as a role's [`Mailbox`] does (see [`Mailbox::outbox`]).
#[derive(Clone)]
pub struct Outbox {
    me: Endpoint,
    out: Sender<Envelope>,
}

impl Outbox {
    pub fn send(&self, to: Endpoint, header: Header, payload: Vec<u8>) -> Result<(), TransportError> {
        self.out.send(Envelope { from: self.me, to, header, payload }).map_err(|_| TransportError::Closed)
    }
}

/// The MPI side of a rank, or nothing for a single-process run.
pub struct MpiWire {
    _universe: mpi::environment::Universe,
    world: mpi::topology::SimpleCommunicator,
    /// Sends in flight: each request's buffer stays here until MPI reports the request complete (the parts
    /// of a split message share one buffer).
    pending_bufs: Vec<std::rc::Rc<Vec<u8>>>,
    pending_reqs: Vec<mpi::ffi::MPI_Request>,
    /// Largest MPI message this rank sends; longer envelopes go in parts.
    max_message: usize,
    /// Parts received so far of a split message, by source rank.
    partial: HashMap<i32, Vec<u8>>,
}

/// Tag of a whole message, or of the last part of a split one.
const TAG: i32 = 7;
/// Tag of every part of a split message but the last.
const TAG_PART: i32 = 8;
/// Largest MPI message: MPI counts are C `int`s, so an envelope past this (a chunk's texts, a plan with many
/// input files) is sent as parts of at most this many bytes. A rank's parts travel in order (MPI does not
/// let messages between two ranks on one communicator overtake each other) and are joined on arrival.
pub const MAX_MESSAGE: usize = 1 << 30;

/// Byte ranges of the parts a message of `len` bytes is sent in, each at most `max` long (one part, maybe
/// empty, for a short message).
pub fn message_parts(len: usize, max: usize) -> Vec<std::ops::Range<usize>> {
    let max = max.max(1);
    let n = len.div_ceil(max).max(1);
    (0..n).map(|i| i * max..((i + 1) * max).min(len)).collect()
}

/// `CHATSPACE_MPI_MAX_MESSAGE=N` (a test hook) lowers the part size, so tests split every message.
fn max_message() -> usize {
    std::env::var("CHATSPACE_MPI_MAX_MESSAGE").ok().and_then(|v| v.parse::<usize>().ok()).map_or(MAX_MESSAGE, |n| n.clamp(1, MAX_MESSAGE))
}

impl MpiWire {
    /// Initializes MPI when the process was started by mpirun/srun; `None` for a plain process.
    pub fn init_if_launched() -> Option<MpiWire> {
        let launched = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"].iter().any(|v| std::env::var_os(v).is_some());
        if !launched {
            return None;
        }
        let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
        let world = universe.world();
        Some(MpiWire {
            _universe: universe,
            world,
            pending_bufs: Vec::new(),
            pending_reqs: Vec::new(),
            max_message: max_message(),
            partial: HashMap::new(),
        })
    }

    pub fn rank(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.rank() as usize
    }

    pub fn size(&self) -> usize {
        use mpi::topology::Communicator;
        self.world.size() as usize
    }

    /// Every rank's host name (MPI_Get_processor_name), in rank order; a collective call every rank makes
    /// once at start.
    pub fn hosts(&self) -> Vec<String> {
        use mpi::collective::CommunicatorCollectives;
        const LEN: usize = 256;
        let name = mpi::environment::processor_name().unwrap_or_else(|_| this_host());
        let mut mine = [0u8; LEN];
        let bytes = name.as_bytes();
        let n = bytes.len().min(LEN - 1);
        mine[..n].copy_from_slice(&bytes[..n]);
        let mut all = vec![0u8; LEN * self.size()];
        self.world.all_gather_into(&mine[..], &mut all[..]);
        all.chunks(LEN).map(|c| String::from_utf8_lossy(&c[..c.iter().position(|&b| b == 0).unwrap_or(LEN)]).into_owned()).collect()
    }

    fn send(&mut self, rank: usize, bytes: Vec<u8>) {
        use mpi::datatype::Equivalence;
        use mpi::raw::AsRaw;
        let parts = message_parts(bytes.len(), self.max_message);
        let last = parts.len() - 1;
        let bytes = std::rc::Rc::new(bytes);
        for (i, part) in parts.into_iter().enumerate() {
            // SAFETY: the buffer is kept in `pending_bufs` (its heap storage does not move) until MPI reports
            // the send complete; each part is at most MAX_MESSAGE (< i32::MAX) bytes of it; the datatype and
            // communicator handles are valid for the life of `self`.
            unsafe {
                let mut req: mpi::ffi::MPI_Request = std::mem::zeroed();
                mpi::ffi::MPI_Isend(
                    bytes[part.clone()].as_ptr() as *const std::ffi::c_void,
                    part.len() as i32,
                    u8::equivalent_datatype().as_raw(),
                    rank as i32,
                    if i == last { TAG } else { TAG_PART },
                    self.world.as_raw(),
                    &mut req,
                );
                self.pending_bufs.push(bytes.clone());
                self.pending_reqs.push(req);
            }
        }
    }

    /// Completes finished sends; returns how many are still pending.
    /// One MPI_Testsome for all of them (one progress call; testing each request on its own would make
    /// Open MPI yield the core once per request when oversubscribed).
    fn progress_sends(&mut self) -> usize {
        let n = self.pending_reqs.len();
        if n == 0 {
            return 0;
        }
        let mut done = vec![0 as std::os::raw::c_int; n];
        let mut count: std::os::raw::c_int = 0;
        // SAFETY: every request came from MPI_Isend and has not completed (completed ones are removed below);
        // `done` has room for `n` indices; statuses are ignored.
        unsafe {
            mpi::ffi::MPI_Testsome(n as i32, self.pending_reqs.as_mut_ptr(), &mut count, done.as_mut_ptr(), mpi::ffi::RSMPI_STATUSES_IGNORE);
        }
        if count > 0 {
            // MPI_UNDEFINED (negative) means no active requests: nothing to remove.
            let mut finished: Vec<usize> = done[..count as usize].iter().map(|&i| i as usize).collect();
            finished.sort_unstable_by(|a, b| b.cmp(a));
            for i in finished {
                self.pending_reqs.swap_remove(i);
                self.pending_bufs.swap_remove(i);
            }
        }
        self.pending_reqs.len()
    }

    /// A whole envelope's bytes, if one has arrived (parts of split messages are gathered on the way).
    fn try_recv(&mut self) -> Option<Vec<u8>> {
        use mpi::point_to_point::{MatchedReceiveVec, Source};
        use mpi::topology::Communicator;
        loop {
            let (message, status) = self.world.any_process().immediate_matched_probe()?;
            let (source, tag) = (status.source_rank(), status.tag());
            let bytes = (message, status).matched_receive_vec::<u8>().0;
            if tag == TAG_PART {
                self.partial.entry(source).or_default().extend_from_slice(&bytes);
                continue;
            }
            return Some(match self.partial.remove(&source) {
                Some(mut head) => {
                    head.extend_from_slice(&bytes);
                    head
                }
                None => bytes,
            });
        }
    }
}

/// This machine's host name (a plain process's placement).
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// How often routers send [`Header::Heartbeat`].
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How often routers look for silent ranks (the resolution of `--rank-timeout`).
const SILENCE_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Who has been heard from, for `--rank-timeout`: rank 0 watches every rank, the others watch rank 0. Any
/// message counts; routers send a heartbeat every [`HEARTBEAT_EVERY`] so that a quiet rank is still heard.
struct Liveness {
    timeout: Duration,
    heard: Vec<Instant>,
    reported: Vec<bool>,
    beat: Instant,
    checked: Instant,
}

impl Liveness {
    fn new(ranks: usize, timeout: Duration, now: Instant) -> Liveness {
        Liveness { timeout, heard: vec![now; ranks], reported: vec![false; ranks], beat: now - HEARTBEAT_EVERY, checked: now }
    }

    fn heard(&mut self, rank: usize, now: Instant) {
        if let Some(t) = self.heard.get_mut(rank) {
            *t = now;
        }
    }

    /// Whether a heartbeat is due (and from now on not, for a while).
    fn beat_due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.beat) >= HEARTBEAT_EVERY {
            self.beat = now;
            return true;
        }
        false
    }

    /// Whether it is time to look for silent ranks again.
    fn check_due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.checked) >= SILENCE_CHECK_EVERY {
            self.checked = now;
            return true;
        }
        false
    }

    /// Ranks among `watched` silent for longer than the timeout, each reported once, with their silence.
    fn lost(&mut self, watched: impl Iterator<Item = usize>, now: Instant) -> Vec<(usize, Duration)> {
        let mut out = Vec::new();
        for r in watched {
            let silent = now.duration_since(self.heard[r]);
            if silent > self.timeout && !self.reported[r] {
                self.reported[r] = true;
                out.push((r, silent));
            }
        }
        out
    }
}

/// How a rank's roles ended.
pub struct RouterOutcome {
    /// Each local role's result, by endpoint.
    pub results: Vec<(Endpoint, Result<(), String>)>,
    /// The exit code the controller sent with `Shutdown`, if it reached this rank.
    pub shutdown_code: Option<i32>,
    /// The exit code the controller sent with `Abort`: the rank must exit now, without MPI_Finalize.
    pub abort_code: Option<i32>,
}

/// Runs local role threads and moves their messages until they have all finished.
pub struct Router {
    rank: usize,
    layout: Layout,
    inboxes: HashMap<Endpoint, Sender<Envelope>>,
    out_rx: Receiver<Envelope>,
    out_tx: Sender<Envelope>,
    roles: Vec<(Endpoint, JoinHandle<Result<(), String>>)>,
    shutdown_code: Option<i32>,
    abort_code: Option<i32>,
    /// `--rank-timeout` over MPI (absent for one process, or with the check off).
    liveness: Option<Liveness>,
    /// Where this rank's heartbeats go: from rank 0 to an endpoint of every other rank, else to the controller.
    beat_to: Vec<Endpoint>,
}

impl Router {
    pub fn new(rank: usize, layout: Layout) -> Router {
        let (out_tx, out_rx) = channel();
        Router {
            rank,
            layout,
            inboxes: HashMap::new(),
            out_rx,
            out_tx,
            roles: Vec::new(),
            shutdown_code: None,
            abort_code: None,
            liveness: None,
            beat_to: Vec::new(),
        }
    }

    /// Watches the other ranks (see [`Liveness`]): a rank silent for `timeout` is reported to the controller
    /// ([`Header::RankLost`]); a rank that stops hearing from rank 0 for `timeout` ends itself.
    pub fn with_rank_timeout(mut self, timeout: Option<Duration>) -> Router {
        self.liveness = timeout.filter(|_| self.layout.world_size > 1).map(|t| Liveness::new(self.layout.world_size, t, Instant::now()));
        let controller_rank = self.layout.ranks[self.layout.controller() as usize];
        self.beat_to = if self.rank == controller_rank {
            (0..self.layout.world_size).filter(|&r| r != controller_rank).filter_map(|r| self.layout.local_endpoints(r).first().copied()).collect()
        } else {
            vec![self.layout.controller()]
        };
        self
    }

    /// Heartbeats out, and what silence means: on rank 0 a [`Header::RankLost`] to the controller, elsewhere
    /// the end of this rank (the controller, or the link to it, is gone; Slurm or mpirun may never say so).
    fn watch(&mut self, wire: &mut Option<MpiWire>) {
        let Some(live) = self.liveness.as_mut() else { return };
        // A few times a second, not on every router turn: heartbeats when due, then a look for silence.
        let now = Instant::now();
        if !live.check_due(now) {
            return;
        }
        let beat = live.beat_due(now);
        let controller_rank = self.layout.ranks[self.layout.controller() as usize];
        let lost = if self.rank == controller_rank {
            live.lost((0..self.layout.world_size).filter(|&r| r != controller_rank), now)
        } else {
            live.lost(std::iter::once(controller_rank), now)
        };
        if beat {
            let me = self.layout.local_endpoints(self.rank).first().copied().unwrap_or(0);
            for e in self.beat_to.clone() {
                self.deliver(Envelope::new(me, e, Header::Heartbeat), wire);
            }
        }
        if self.rank == controller_rank {
            // Ranks that fell silent together (a node's) go in one report.
            if let Some(&(first, silent)) = lost.first() {
                let from = self.layout.local_endpoints(first).first().copied().unwrap_or(0);
                let header = Header::RankLost { ranks: lost.iter().map(|&(r, _)| r as u32).collect(), silent_seconds: silent.as_secs_f64() };
                self.deliver(Envelope::new(from, self.layout.controller(), header), &mut None);
            }
            return;
        }
        if let Some(&(rank, silent)) = lost.first() {
            eprintln!(
                "error: {}: nothing from the controller, {}, for {:.0}s (--rank-timeout): ending this rank",
                self.layout.describe_rank(self.rank),
                self.layout.describe_rank(rank),
                silent.as_secs_f64()
            );
            self.abort_code = Some(crate::exit::EXIT_FAILED);
        }
    }

    /// A mailbox for a local endpoint.
    pub fn mailbox(&mut self, me: Endpoint) -> Mailbox {
        let (tx, rx) = channel();
        self.inboxes.insert(me, tx);
        Mailbox { me, inbox: rx, out: self.out_tx.clone(), held: Default::default() }
    }

    pub fn add_role(&mut self, me: Endpoint, handle: JoinHandle<Result<(), String>>) {
        self.roles.push((me, handle));
    }

    fn deliver(&mut self, env: Envelope, wire: &mut Option<MpiWire>) {
        let rank = self.layout.ranks.get(env.to as usize).copied();
        match (rank, wire) {
            (Some(r), Some(w)) if r != self.rank => {
                let (kind, from, to) = (env.header.kind(), env.from, env.to);
                match env.encode() {
                    Ok(bytes) => w.send(r, bytes),
                    Err(e) => {
                        // Never sent truncated: the run fails with a line naming the message.
                        let message = format!("{kind} from {} to {}: {e}", self.layout.describe(from), self.layout.describe(to));
                        let failed = Envelope::new(from, self.layout.controller(), Header::Failed { role: "router".into(), message });
                        match self.layout.ranks[self.layout.controller() as usize] {
                            here if here == self.rank => self.deliver(failed, &mut None),
                            there => {
                                if let Ok(bytes) = failed.encode() {
                                    w.send(there, bytes);
                                }
                            }
                        }
                    }
                }
            }
            _ => {
                match env.header {
                    Header::Shutdown { code } => self.shutdown_code = Some(code),
                    Header::Abort { code } => {
                        // Not for the roles: the router ends the rank (see `run`).
                        self.abort_code = Some(code);
                        return;
                    }
                    _ => {}
                }
                if let Some(tx) = self.inboxes.get(&env.to) {
                    // A role that already exited drops what is sent to it.
                    let _ = tx.send(env);
                } else {
                    log::warn!("rank {}: dropping {} for unknown endpoint {}", self.rank, env.header.kind(), env.to);
                }
            }
        }
    }

    /// Routes until every local role has finished and every outgoing message has left.
    pub fn run(mut self, wire: &mut Option<MpiWire>) -> RouterOutcome {
        let mut results = Vec::new();
        let mut idle_since: Option<Instant> = None;
        let mut signals_seen = 0;
        // Signals counted for the controller. A burst within a second counts once: under srun or scancel the
        // same SIGTERM can reach a rank twice (from Slurm and forwarded by the launcher), which is not the
        // user's "second signal, stop now".
        let mut counted = 0u32;
        let mut last_counted: Option<Instant> = None;
        let me = self.layout.local_endpoints(self.rank).first().copied().unwrap_or(0);
        loop {
            let mut busy = false;
            let count = SIGNALS.load(Ordering::SeqCst);
            if count > signals_seen {
                signals_seen = count;
                if last_counted.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    counted += 1;
                    last_counted = Some(Instant::now());
                    let signal = LAST_SIGNAL.load(Ordering::SeqCst);
                    let header = Header::Signal { rank: self.rank as u32, signal, count: counted };
                    self.deliver(Envelope::new(me, self.layout.controller(), header), wire);
                }
            }
            while let Ok(env) = self.out_rx.try_recv() {
                busy = true;
                self.deliver(env, wire);
            }
            if let Some(w) = wire.as_mut() {
                while let Some(bytes) = w.try_recv() {
                    busy = true;
                    match Envelope::decode(bytes) {
                        Ok(env) => {
                            if let (Some(live), Some(&r)) = (self.liveness.as_mut(), self.layout.ranks.get(env.from as usize)) {
                                live.heard(r, Instant::now());
                            }
                            if !matches!(env.header, Header::Heartbeat) {
                                self.deliver(env, &mut None);
                            }
                        }
                        Err(e) => log::error!("rank {}: dropping undecodable message: {e}", self.rank),
                    }
                }
            }
            if !self.roles.is_empty() && self.shutdown_code.is_none() && self.abort_code.is_none() {
                self.watch(wire);
            }
            let pending = wire.as_mut().map_or(0, |w| w.progress_sends());
            // Collect finished roles.
            let mut i = 0;
            while i < self.roles.len() {
                if self.roles[i].1.is_finished() {
                    let (me, h) = self.roles.swap_remove(i);
                    let r = h.join().unwrap_or_else(|p| Err(panic_message(&p)));
                    results.push((me, r));
                    busy = true;
                } else {
                    i += 1;
                }
            }
            // After an Abort, only a local controller is waited for (it returns right after sending it).
            let controller = self.layout.controller();
            let stopping = self.roles.is_empty() || (self.abort_code.is_some() && self.roles.iter().all(|(e, _)| *e != controller));
            if stopping {
                // Drain what the last roles sent, then wait (bounded) for MPI to take the sends.
                while let Ok(env) = self.out_rx.try_recv() {
                    self.deliver(env, wire);
                }
                let pending = wire.as_mut().map_or(0, |w| w.progress_sends());
                let since = *idle_since.get_or_insert_with(Instant::now);
                let limit = Duration::from_secs(if self.abort_code.is_some() { 2 } else { 10 });
                if pending == 0 || since.elapsed() > limit {
                    break;
                }
            }
            if !busy {
                std::thread::sleep(if pending > 0 { Duration::from_micros(50) } else { Duration::from_micros(300) });
            }
        }
        RouterOutcome { results, shutdown_code: self.shutdown_code, abort_code: self.abort_code }
    }
}

pub fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_rank_is_reported_once_after_the_timeout() {
        let t0 = Instant::now();
        let mut live = Liveness::new(3, Duration::from_secs(10), t0);
        assert!(live.beat_due(t0), "the first heartbeat goes at once");
        assert!(!live.beat_due(t0 + Duration::from_millis(500)));
        assert!(live.beat_due(t0 + Duration::from_millis(1000)));
        live.heard(1, t0 + Duration::from_secs(8));
        live.heard(2, t0 + Duration::from_secs(2));
        assert!(live.lost(1..3, t0 + Duration::from_secs(12)).is_empty());
        let lost = live.lost(1..3, t0 + Duration::from_secs(13));
        assert_eq!(lost, vec![(2, Duration::from_secs(11))]);
        assert!(live.lost(1..3, t0 + Duration::from_secs(14)).is_empty(), "reported once");
        assert_eq!(live.lost(1..3, t0 + Duration::from_secs(19)), vec![(1, Duration::from_secs(11))]);
        live.heard(9, t0); // a rank outside the job is ignored
    }

    #[test]
    fn long_messages_go_in_parts_that_cover_every_byte_once() {
        assert_eq!(message_parts(0, 10), vec![0..0]);
        assert_eq!(message_parts(10, 10), vec![0..10]);
        assert_eq!(message_parts(25, 10), vec![0..10, 10..20, 20..25]);
        assert_eq!(message_parts(3, 0), vec![0..1, 1..2, 2..3], "a part holds at least a byte");
        for len in [1, 999, 1000, 1001, 123_457] {
            let parts = message_parts(len, 1000);
            assert!(parts.iter().all(|p| p.len() <= 1000 && !p.is_empty()));
            assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), len);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        }
        assert!(MAX_MESSAGE <= i32::MAX as usize);
    }

    #[test]
    fn local_router_delivers_between_roles_and_collects_results() {
        let layout = Layout::new(1, None, None, 1).unwrap();
        let mut router = Router::new(0, layout);
        let a = router.mailbox(0);
        let b = router.mailbox(1);
        let ha = std::thread::spawn(move || {
            a.send(1, Header::Credit { starved: false }, vec![1, 2, 3]).unwrap();
            let reply = a.recv_timeout(Duration::from_secs(5)).unwrap().expect("reply");
            assert_eq!(reply.from, 1);
            Ok(())
        });
        let hb = std::thread::spawn(move || {
            let got = b.recv_timeout(Duration::from_secs(5)).unwrap().expect("message");
            assert_eq!((got.from, got.payload.clone()), (0, vec![1, 2, 3]));
            b.send(0, Header::Shutdown { code: 3 }, vec![]).unwrap();
            Err("b stops with an error".to_string())
        });
        router.add_role(0, ha);
        router.add_role(1, hb);
        let outcome = router.run(&mut None);
        assert_eq!(outcome.shutdown_code, Some(3));
        let mut out = outcome.results;
        out.sort_by_key(|(e, _)| *e);
        assert!(out[0].1.is_ok());
        assert_eq!(out[1].1, Err("b stops with an error".to_string()));
    }

    #[test]
    fn held_messages_come_back_first_in_arrival_order() {
        let layout = Layout::new(1, None, None, 1).unwrap();
        let mut router = Router::new(0, layout);
        let (a, b) = (router.mailbox(0), router.mailbox(1));
        for n in [1u8, 2, 3] {
            a.send(1, Header::Credit { starved: false }, vec![n]).unwrap();
        }
        // The router is not running: deliver by hand what `a` sent, as the router would.
        let sent: Vec<Envelope> = std::iter::from_fn(|| router.out_rx.try_recv().ok()).collect();
        for e in sent {
            router.inboxes[&1].send(e).unwrap();
        }
        let first = b.try_recv().unwrap().expect("a message");
        let second = b.try_recv().unwrap().expect("a message");
        // Taken before the role was ready for them: set aside, then handed out before what is still queued.
        b.hold(first);
        b.hold(second);
        let order: Vec<u8> = std::iter::from_fn(|| b.try_recv().unwrap()).map(|e| e.payload[0]).collect();
        assert_eq!(order, vec![1, 2, 3]);
        assert!(b.recv_timeout(Duration::from_millis(1)).unwrap().is_none());
    }

    #[test]
    fn abort_ends_the_router_without_waiting_for_busy_roles() {
        let layout = Layout::new(1, None, None, 1).unwrap();
        let mut router = Router::new(0, layout);
        let controller = router.mailbox(0);
        let busy = router.mailbox(1);
        let (release_tx, release_rx) = channel::<()>();
        let hc = std::thread::spawn(move || {
            controller.send(1, Header::Abort { code: 75 }, vec![]).unwrap();
            Ok(())
        });
        // A role stuck mid-batch: it never sees the Abort and only ends when the test lets it.
        let hb = std::thread::spawn(move || {
            let _ = release_rx.recv();
            drop(busy);
            Ok(())
        });
        router.add_role(0, hc);
        router.add_role(1, hb);
        let outcome = router.run(&mut None);
        assert_eq!(outcome.abort_code, Some(75));
        assert_eq!(outcome.shutdown_code, None);
        // The controller's result is collected; the busy role is still running.
        assert_eq!(outcome.results.iter().map(|(e, _)| *e).collect::<Vec<_>>(), vec![0]);
        release_tx.send(()).unwrap();
    }
}
