//! The controller's decisions as a plain state machine: events in, actions out. No I/O, no MPI.
//!
//! Work is a list of chunks, each with the row ranges still to do. A chunk is handed to the least-loaded
//! loader (at most `cap` uncommitted chunks each, which bounds memory) and its shard to writer
//! `chunk % writers`. Each assigned chunk ends with exactly one `ShardWritten` or `Released`. A drain drops
//! the chunks not yet assigned and waits for the assigned ones to end.

use std::collections::{HashMap, VecDeque};

use crate::manifest::ShardEntry;
use crate::ranges::Range;

/// A chunk and the row ranges of it still to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    pub chunk: u64,
    pub todo: Vec<Range>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    ShardWritten(ShardEntry),
    /// An assigned chunk ended with nothing to commit (drain).
    Released { chunk: u64 },
    /// Stop handing out work; finish what is in flight.
    Drain,
    Failed { from: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Assign { loader: usize, work: Work, writer: usize, shard: u64 },
    Commit(ShardEntry),
    /// Tell the loaders to stop sending batches.
    Drain,
    /// Nothing is left in flight: `drained` when a drain cut the work short.
    Finish { drained: bool },
    Fail(String),
}

#[derive(Debug)]
pub struct Scheduler {
    pending: VecDeque<Work>,
    loaders_inflight: Vec<usize>,
    owner: HashMap<u64, usize>,
    writers: usize,
    cap: usize,
    next_shard: u64,
    draining: bool,
    done: bool,
}

impl Scheduler {
    pub fn new(work: impl IntoIterator<Item = Work>, loaders: usize, writers: usize, cap: usize, first_shard: u64) -> Self {
        Scheduler {
            pending: work.into_iter().collect(),
            loaders_inflight: vec![0; loaders],
            owner: HashMap::new(),
            writers,
            cap,
            next_shard: first_shard,
            draining: false,
            done: false,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.owner.len()
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    fn end_chunk(&mut self, chunk: u64) -> Result<(), String> {
        let loader = self.owner.remove(&chunk).ok_or_else(|| format!("chunk {chunk} reported but not in flight (this is a bug)"))?;
        self.loaders_inflight[loader] -= 1;
        Ok(())
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        let mut actions = Vec::new();
        let ended = match event {
            Event::Start => Ok(()),
            Event::ShardWritten(entry) => {
                let r = self.end_chunk(entry.chunk);
                if r.is_ok() {
                    actions.push(Action::Commit(entry));
                }
                r
            }
            Event::Released { chunk } => self.end_chunk(chunk),
            Event::Drain => {
                if !self.draining {
                    self.draining = true;
                    self.pending.clear();
                    actions.push(Action::Drain);
                }
                Ok(())
            }
            Event::Failed { from, message } => Err(format!("{from}: {message}")),
        };
        if let Err(message) = ended {
            self.done = true;
            return vec![Action::Fail(message)];
        }
        // Fill every loader up to its cap, least loaded first.
        while !self.pending.is_empty() {
            let (loader, &n) = self.loaders_inflight.iter().enumerate().min_by_key(|(_, n)| **n).expect("at least one loader");
            if n >= self.cap {
                break;
            }
            let work = self.pending.pop_front().expect("non-empty");
            self.loaders_inflight[loader] += 1;
            self.owner.insert(work.chunk, loader);
            let writer = (work.chunk as usize) % self.writers;
            actions.push(Action::Assign { loader, work, writer, shard: self.next_shard });
            self.next_shard += 1;
        }
        if self.pending.is_empty() && self.owner.is_empty() {
            self.done = true;
            actions.push(Action::Finish { drained: self.draining });
        }
        actions
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

    fn assigns(actions: &[Action]) -> Vec<(usize, u64, usize, u64)> {
        actions
            .iter()
            .filter_map(|a| if let Action::Assign { loader, work, writer, shard } = a { Some((*loader, work.chunk, *writer, *shard)) } else { None })
            .collect()
    }

    #[test]
    fn start_fills_loaders_up_to_the_cap_with_fresh_shard_numbers() {
        let mut s = Scheduler::new(work(10), 2, 3, 2, 7);
        let a = assigns(&s.handle(Event::Start));
        assert_eq!(a, vec![(0, 0, 0, 7), (1, 1, 1, 8), (0, 2, 2, 9), (1, 3, 0, 10)]);
        assert_eq!(s.in_flight(), 4);
    }

    #[test]
    fn each_commit_frees_a_slot_and_the_last_one_finishes() {
        let mut s = Scheduler::new(work(3), 1, 1, 2, 0);
        assert_eq!(assigns(&s.handle(Event::Start)).len(), 2);
        let a = s.handle(Event::ShardWritten(entry(1)));
        assert_eq!(a[0], Action::Commit(entry(1)));
        assert_eq!(assigns(&a), vec![(0, 2, 0, 2)]);
        s.handle(Event::ShardWritten(entry(0)));
        let a = s.handle(Event::ShardWritten(entry(2)));
        assert_eq!(a, vec![Action::Commit(entry(2)), Action::Finish { drained: false }]);
        assert!(s.handle(Event::Start).is_empty(), "a finished scheduler does nothing");
    }

    #[test]
    fn drain_drops_pending_work_and_waits_for_in_flight_chunks() {
        let mut s = Scheduler::new(work(10), 1, 1, 2, 0);
        s.handle(Event::Start);
        assert_eq!(s.handle(Event::Drain), vec![Action::Drain]);
        assert!(s.handle(Event::Drain).is_empty(), "a second drain request changes nothing");
        let a = s.handle(Event::ShardWritten(entry(0)));
        assert_eq!(a, vec![Action::Commit(entry(0))], "no new work during a drain");
        assert_eq!(s.handle(Event::Released { chunk: 1 }), vec![Action::Finish { drained: true }]);
    }

    #[test]
    fn drain_with_nothing_in_flight_finishes_at_once() {
        let mut s = Scheduler::new(work(2), 1, 1, 2, 0);
        s.handle(Event::Start);
        s.handle(Event::ShardWritten(entry(0)));
        s.handle(Event::ShardWritten(entry(1)));
        let mut s2 = Scheduler::new(Vec::new(), 1, 1, 2, 0);
        assert_eq!(s2.handle(Event::Start), vec![Action::Finish { drained: false }]);
    }

    #[test]
    fn unknown_shards_and_failures_stop_the_run() {
        let mut s = Scheduler::new(work(2), 1, 1, 1, 0);
        s.handle(Event::Start);
        assert!(matches!(s.handle(Event::ShardWritten(entry(1)))[0], Action::Fail(_)));
        let mut s = Scheduler::new(work(2), 1, 1, 1, 0);
        s.handle(Event::Start);
        let a = s.handle(Event::Failed { from: "rank 2 (encoder 0)".into(), message: "boom".into() });
        assert_eq!(a, vec![Action::Fail("rank 2 (encoder 0): boom".into())]);
        assert!(s.handle(Event::ShardWritten(entry(0))).is_empty());
    }
}
