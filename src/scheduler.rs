//! The controller's decisions as a plain state machine: events in, actions out. No I/O, no MPI, no clock (the
//! time comes with each event).
//!
//! Work is a lazily made list of chunks, each with the row ranges still to do ([`WorkList`]). A chunk is handed
//! to the least-loaded loader (at most `cap` uncommitted chunks each, which bounds memory) and its shard to
//! writer `chunk % writers`. Each assigned chunk ends with exactly one `ShardWritten` or `Released`.
//!
//! The stop policy lives here too: a first signal, or the job's end time coming closer than `stop_before` plus
//! the running drain estimate, starts a drain (the chunks not yet assigned are dropped; the assigned ones are
//! waited for); a second signal, or a drain that takes longer than `drain_timeout`, stops at once.

use std::iter::Peekable;

use crate::manifest::ShardEntry;
use crate::ranges::Range;
use crate::walltime::DrainEstimate;

/// A chunk and the row ranges of it still to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    pub chunk: u64,
    pub todo: Vec<Range>,
}

/// The work of a run, made one chunk at a time from the rows already covered: chunks `0..` of
/// `rows_per_chunk` rows over `0..rows_total`, minus `covered`. Fully covered chunks are skipped in one step
/// per covered range, so the list costs O(chunks left + covered ranges) and no memory up front.
#[derive(Debug, Clone)]
pub struct WorkList {
    covered: Vec<Range>,
    at: usize,
    next: u64,
    rows_per_chunk: u64,
    rows_total: u64,
}

impl WorkList {
    /// `covered` must be normalized (sorted, disjoint; see `ranges::normalize`).
    pub fn new(rows_total: u64, rows_per_chunk: u64, covered: Vec<Range>) -> WorkList {
        WorkList { covered, at: 0, next: 0, rows_per_chunk: rows_per_chunk.max(1), rows_total }
    }

    /// Rows in `0..rows_total` not covered: what the run has left to do.
    pub fn rows_left(&self) -> u64 {
        let covered: u64 = self.covered.iter().map(|&(a, b)| b.min(self.rows_total).saturating_sub(a)).sum();
        self.rows_total - covered.min(self.rows_total)
    }
}

impl Iterator for WorkList {
    type Item = Work;

    fn next(&mut self) -> Option<Work> {
        loop {
            let start = self.next.checked_mul(self.rows_per_chunk).filter(|&s| s < self.rows_total)?;
            let end = start.saturating_add(self.rows_per_chunk).min(self.rows_total);
            while self.at < self.covered.len() && self.covered[self.at].1 <= start {
                self.at += 1;
            }
            match self.covered.get(self.at) {
                // Covered from before this chunk to at least its end: skip to the chunk holding the range's end.
                Some(&(a, b)) if a <= start && b >= end => self.next = (self.next + 1).max(b / self.rows_per_chunk),
                _ => {
                    let overlapping: Vec<Range> = self.covered[self.at..].iter().take_while(|r| r.0 < end).copied().collect();
                    self.next += 1;
                    return Some(Work { chunk: self.next - 1, todo: crate::ranges::subtract(&[(start, end)], &overlapping) });
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    ShardWritten(ShardEntry),
    /// An assigned chunk ended with nothing to commit (drain).
    Released {
        chunk: u64,
    },
    /// An encoder embedded a batch in `seconds` (the drain estimate learns from it).
    BatchDone {
        seconds: f64,
    },
    /// A rank got its `count`-th signal; `what` names it ("SIGUSR1 on rank 3").
    Signal {
        what: String,
        count: u32,
    },
    /// Time passed: the job's end time and the drain timeout are checked.
    Tick,
    Failed {
        from: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Assign {
        loader: usize,
        work: Work,
        writer: usize,
        shard: u64,
    },
    Commit(ShardEntry),
    /// Tell loaders and encoders to stop sending and starting batches. `by_signal`: a first signal (a second
    /// one stops at once); otherwise the job's end time.
    Drain {
        reason: String,
        by_signal: bool,
    },
    /// Nothing is left in flight: `drained` when a drain cut the work short.
    Finish {
        drained: bool,
    },
    /// Stop without waiting for work in flight (what is committed stays).
    StopNow {
        reason: String,
    },
    Fail(String),
}

/// How the scheduler hands out work and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub loaders: usize,
    pub writers: usize,
    /// Uncommitted chunks a loader may hold.
    pub cap: usize,
    /// The shard number of the first assignment (after those a resumed manifest has).
    pub first_shard: u64,
    pub drain_timeout: f64,
    pub stop_before: f64,
    /// The job's end time (Unix seconds), if known.
    pub deadline: Option<f64>,
}

/// A drain in progress.
#[derive(Debug, Clone, PartialEq)]
struct Draining {
    since: f64,
    reason: String,
}

pub struct Scheduler {
    pending: Peekable<Box<dyn Iterator<Item = Work> + Send>>,
    loaders_inflight: Vec<usize>,
    /// `owner[chunk]`: the loader holding it.
    owner: std::collections::HashMap<u64, usize>,
    policy: Policy,
    next_shard: u64,
    draining: Option<Draining>,
    estimate: DrainEstimate,
    done: bool,
}

impl Scheduler {
    pub fn new(work: impl IntoIterator<Item = Work, IntoIter: Send + 'static>, policy: Policy) -> Self {
        let work: Box<dyn Iterator<Item = Work> + Send> = Box::new(work.into_iter());
        Scheduler {
            pending: work.peekable(),
            loaders_inflight: vec![0; policy.loaders.max(1)],
            owner: Default::default(),
            next_shard: policy.first_shard,
            policy,
            draining: None,
            estimate: DrainEstimate::default(),
            done: false,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.owner.len()
    }

    /// Why the run is draining, and since when.
    pub fn drain(&self) -> Option<(f64, &str)> {
        self.draining.as_ref().map(|d| (d.since, d.reason.as_str()))
    }

    /// The running estimate of how long a drain takes, in seconds.
    pub fn drain_estimate(&self) -> f64 {
        self.estimate.seconds()
    }

    fn end_chunk(&mut self, chunk: u64) -> Result<(), String> {
        let loader = self.owner.remove(&chunk).ok_or_else(|| format!("chunk {chunk} reported but not in flight (this is a bug)"))?;
        self.loaders_inflight[loader] -= 1;
        Ok(())
    }

    fn start_drain(&mut self, now: f64, reason: String, by_signal: bool, actions: &mut Vec<Action>) {
        if self.draining.is_none() {
            let empty: Box<dyn Iterator<Item = Work> + Send> = Box::new(std::iter::empty());
            self.pending = empty.peekable();
            self.draining = Some(Draining { since: now, reason: reason.clone() });
            actions.push(Action::Drain { reason, by_signal });
        }
    }

    /// What to do about `event`, at Unix time `now`.
    pub fn handle(&mut self, now: f64, event: Event) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match event {
            Event::Start | Event::BatchDone { .. } | Event::Tick => {
                if let Event::BatchDone { seconds } = event {
                    self.estimate.observe_batch(seconds);
                }
                if let Some(d) = &self.draining {
                    if now - d.since > self.policy.drain_timeout {
                        let reason = format!("{}; drain took longer than --drain-timeout {}s", d.reason, self.policy.drain_timeout);
                        return self.stop(Action::StopNow { reason });
                    }
                } else if let Some(end) = self.policy.deadline {
                    if crate::walltime::should_drain(now, end, self.policy.stop_before, &self.estimate) {
                        let reason = format!("job time limit in {:.0}s (drain estimate {:.1}s)", end - now, self.estimate.seconds());
                        self.start_drain(now, reason, false, &mut actions);
                    }
                }
            }
            Event::ShardWritten(entry) => match self.end_chunk(entry.chunk) {
                Ok(()) => actions.push(Action::Commit(entry)),
                Err(message) => return self.stop(Action::Fail(message)),
            },
            Event::Released { chunk } => {
                if let Err(message) = self.end_chunk(chunk) {
                    return self.stop(Action::Fail(message));
                }
            }
            Event::Signal { what, count } if count >= 2 => return self.stop(Action::StopNow { reason: format!("second signal ({what})") }),
            Event::Signal { what, .. } => self.start_drain(now, what, true, &mut actions),
            Event::Failed { from, message } => return self.stop(Action::Fail(format!("{from}: {message}"))),
        }
        self.fill(&mut actions);
        if self.pending.peek().is_none() && self.owner.is_empty() {
            self.done = true;
            actions.push(Action::Finish { drained: self.draining.is_some() });
        }
        actions
    }

    fn stop(&mut self, action: Action) -> Vec<Action> {
        self.done = true;
        vec![action]
    }

    /// Fills every loader up to its cap, least loaded first.
    fn fill(&mut self, actions: &mut Vec<Action>) {
        while self.pending.peek().is_some() {
            let (loader, &n) = self.loaders_inflight.iter().enumerate().min_by_key(|(_, n)| **n).expect("at least one loader");
            if n >= self.policy.cap {
                break;
            }
            let work = self.pending.next().expect("peeked");
            self.loaders_inflight[loader] += 1;
            self.owner.insert(work.chunk, loader);
            let writer = (work.chunk % self.policy.writers.max(1) as u64) as usize;
            actions.push(Action::Assign { loader, work, writer, shard: self.next_shard });
            self.next_shard += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(n: u64) -> Vec<Work> {
        (0..n).map(|c| Work { chunk: c, todo: vec![(c * 10, c * 10 + 10)] }).collect()
    }

    fn entry(chunk: u64) -> ShardEntry {
        crate::manifest::tests_support::shard(chunk, chunk, vec![(chunk * 10, chunk * 10 + 1)], 0)
    }

    fn policy(loaders: usize, writers: usize, cap: usize, first_shard: u64) -> Policy {
        Policy { loaders, writers, cap, first_shard, drain_timeout: 20.0, stop_before: 30.0, deadline: None }
    }

    fn sched(n: u64, loaders: usize, writers: usize, cap: usize) -> Scheduler {
        Scheduler::new(work(n), policy(loaders, writers, cap, 0))
    }

    fn assigns(actions: &[Action]) -> Vec<(usize, u64, usize, u64)> {
        actions
            .iter()
            .filter_map(|a| if let Action::Assign { loader, work, writer, shard } = a { Some((*loader, work.chunk, *writer, *shard)) } else { None })
            .collect()
    }

    fn signal(count: u32) -> Event {
        Event::Signal { what: "SIGUSR1 on rank 0".into(), count }
    }

    #[test]
    fn start_fills_loaders_up_to_the_cap_with_fresh_shard_numbers() {
        let mut s = Scheduler::new(work(10), policy(2, 3, 2, 7));
        let a = assigns(&s.handle(0.0, Event::Start));
        assert_eq!(a, vec![(0, 0, 0, 7), (1, 1, 1, 8), (0, 2, 2, 9), (1, 3, 0, 10)]);
        assert_eq!(s.in_flight(), 4);
    }

    #[test]
    fn each_commit_frees_a_slot_and_the_last_one_finishes() {
        let mut s = sched(3, 1, 1, 2);
        assert_eq!(assigns(&s.handle(0.0, Event::Start)).len(), 2);
        let a = s.handle(0.0, Event::ShardWritten(entry(1)));
        assert_eq!(a[0], Action::Commit(entry(1)));
        assert_eq!(assigns(&a), vec![(0, 2, 0, 2)]);
        s.handle(0.0, Event::ShardWritten(entry(0)));
        let a = s.handle(0.0, Event::ShardWritten(entry(2)));
        assert_eq!(a, vec![Action::Commit(entry(2)), Action::Finish { drained: false }]);
        assert!(s.handle(0.0, Event::Start).is_empty(), "a finished scheduler does nothing");
    }

    #[test]
    fn a_first_signal_drains_a_second_one_stops_at_once() {
        let mut s = sched(10, 1, 1, 2);
        s.handle(0.0, Event::Start);
        let a = s.handle(1.0, signal(1));
        assert_eq!(a, vec![Action::Drain { reason: "SIGUSR1 on rank 0".into(), by_signal: true }]);
        assert_eq!(s.drain(), Some((1.0, "SIGUSR1 on rank 0")));
        assert!(s.handle(1.5, signal(1)).is_empty(), "a repeated first signal changes nothing");
        assert_eq!(s.handle(2.0, Event::ShardWritten(entry(0))), vec![Action::Commit(entry(0))], "no new work during a drain");
        let a = s.handle(3.0, signal(2));
        assert_eq!(a, vec![Action::StopNow { reason: "second signal (SIGUSR1 on rank 0)".into() }]);
        assert!(s.handle(3.0, Event::Released { chunk: 1 }).is_empty(), "stopped");
    }

    #[test]
    fn a_drain_ends_when_the_assigned_chunks_end() {
        let mut s = sched(10, 1, 1, 2);
        s.handle(0.0, Event::Start);
        s.handle(1.0, signal(1));
        s.handle(2.0, Event::ShardWritten(entry(0)));
        assert_eq!(s.handle(3.0, Event::Released { chunk: 1 }), vec![Action::Finish { drained: true }]);
    }

    #[test]
    fn a_drain_that_outlives_its_timeout_stops_at_once() {
        let mut s = sched(10, 1, 1, 2);
        s.handle(0.0, Event::Start);
        s.handle(100.0, signal(1));
        assert!(s.handle(119.0, Event::Tick).is_empty(), "within --drain-timeout 20");
        let a = s.handle(120.5, Event::Tick);
        assert_eq!(a, vec![Action::StopNow { reason: "SIGUSR1 on rank 0; drain took longer than --drain-timeout 20s".into() }]);
    }

    #[test]
    fn the_end_time_drains_with_the_margin_and_the_learned_estimate() {
        // Deadline at t=1000, stop_before 30, estimate 2 s at first: the drain starts at t >= 968.
        let mut s = Scheduler::new(work(10), Policy { deadline: Some(1000.0), ..policy(1, 1, 2, 0) });
        s.handle(0.0, Event::Start);
        assert!(s.handle(960.0, Event::Tick).is_empty());
        // A slow batch (5 s) raises the estimate to 12 s: now 960 is late enough.
        let a = s.handle(960.0, Event::BatchDone { seconds: 5.0 });
        assert_eq!(a, vec![Action::Drain { reason: "job time limit in 40s (drain estimate 12.0s)".into(), by_signal: false }]);
        assert_eq!(s.drain_estimate(), 12.0);
        // A signal during that drain does not restart it.
        assert!(s.handle(961.0, signal(1)).is_empty());
        assert_eq!(s.drain().map(|d| d.0), Some(960.0));
    }

    #[test]
    fn a_drain_with_nothing_in_flight_finishes_at_once() {
        let mut s = sched(2, 1, 1, 2);
        s.handle(0.0, Event::Start);
        s.handle(0.0, Event::ShardWritten(entry(0)));
        let a = s.handle(0.0, Event::ShardWritten(entry(1)));
        assert_eq!(a.last(), Some(&Action::Finish { drained: false }));
        let mut empty = Scheduler::new(Vec::new(), policy(1, 1, 2, 0));
        assert_eq!(empty.handle(0.0, Event::Start), vec![Action::Finish { drained: false }]);
        let mut idle = Scheduler::new(Vec::new(), Policy { deadline: Some(10.0), ..policy(1, 1, 2, 0) });
        let a = idle.handle(0.0, Event::Tick);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[1], Action::Finish { drained: true });
    }

    #[test]
    fn unknown_shards_and_failures_stop_the_run() {
        let mut s = sched(2, 1, 1, 1);
        s.handle(0.0, Event::Start);
        assert!(matches!(s.handle(0.0, Event::ShardWritten(entry(1)))[0], Action::Fail(_)));
        let mut s = sched(2, 1, 1, 1);
        s.handle(0.0, Event::Start);
        let a = s.handle(0.0, Event::Failed { from: "rank 2 (encoder 0)".into(), message: "boom".into() });
        assert_eq!(a, vec![Action::Fail("rank 2 (encoder 0): boom".into())]);
        assert!(s.handle(0.0, Event::ShardWritten(entry(0))).is_empty());
    }

    fn collect(total: u64, per: u64, covered: Vec<Range>) -> Vec<(u64, Vec<Range>)> {
        WorkList::new(total, per, covered).map(|w| (w.chunk, w.todo)).collect()
    }

    #[test]
    fn the_work_list_skips_what_is_covered() {
        assert_eq!(collect(25, 10, vec![]), vec![(0, vec![(0, 10)]), (1, vec![(10, 20)]), (2, vec![(20, 25)])]);
        // Chunk 0 done, chunk 1 half done (a drained shard), chunk 2 untouched.
        assert_eq!(collect(25, 10, vec![(0, 15)]), vec![(1, vec![(15, 20)]), (2, vec![(20, 25)])]);
        // Holes inside a chunk; a long covered run skipped at once.
        assert_eq!(collect(60, 10, vec![(0, 2), (4, 5), (7, 51)]), vec![(0, vec![(2, 4), (5, 7)]), (5, vec![(51, 60)])]);
        assert_eq!(collect(20, 10, vec![(0, 20)]), vec![]);
        assert_eq!(WorkList::new(60, 10, vec![(0, 2), (4, 5), (7, 51)]).rows_left(), 13);
        assert_eq!(WorkList::new(5, 10, vec![(0, 100)]).rows_left(), 0);
    }

    #[test]
    fn the_work_list_agrees_with_subtracting_chunk_by_chunk() {
        let mut rnd = crate::ranges::test_rng(99);
        for _ in 0..300 {
            let (total, per) = (1 + rnd(120), 1 + rnd(15));
            let covered = crate::ranges::normalize(
                (0..rnd(6))
                    .map(|_| {
                        let a = rnd(total);
                        (a, a + rnd(40))
                    })
                    .collect(),
            );
            let brute: Vec<(u64, Vec<Range>)> = (0..total.div_ceil(per))
                .filter_map(|c| {
                    let todo = crate::ranges::subtract(&[(c * per, ((c + 1) * per).min(total))], &covered);
                    (!todo.is_empty()).then_some((c, todo))
                })
                .collect();
            assert_eq!(collect(total, per, covered.clone()), brute, "total {total} per {per} covered {covered:?}");
            let left: u64 = brute.iter().map(|(_, t)| crate::ranges::total(t)).sum();
            assert_eq!(WorkList::new(total, per, covered).rows_left(), left);
        }
    }
}
