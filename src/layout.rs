//! Role layout: which endpoints (controller, loaders, encoders, writers) exist and which rank hosts each.
//!
//! | ranks | rank 0                 | rank 1        | rank 2        | ranks 3..n-2 | rank n-1 |
//! |-------|------------------------|---------------|---------------|--------------|----------|
//! | 1     | all roles (threads)    |               |               |              |          |
//! | 2     | controller+loader+writer | encoder     |               |              |          |
//! | 3     | controller+writer      | loader        | encoder       |              |          |
//! | n >= 4| controller             | loader(s)     | encoders ...  | encoders     | writer(s)|
//!
//! For n >= 4 the defaults are one loader per 4 encoders and one writer per 8 encoders (at least one each);
//! `--loaders`/`--writers` override them, and the rest are encoders.

use serde::{Deserialize, Serialize};

use crate::protocol::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Controller,
    Loader,
    Encoder,
    Writer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Loader => "loader",
            Role::Encoder => "encoder",
            Role::Writer => "writer",
        }
    }
}

/// Endpoint ids are assigned in order: controller 0, then loaders, encoders, writers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub world_size: usize,
    /// `ranks[e]` is the MPI rank hosting endpoint `e`.
    pub ranks: Vec<usize>,
    pub loaders: usize,
    pub encoders: usize,
    pub writers: usize,
}

/// The most loaders, writers or (one-process) encoders a job may ask for: each is a thread or a rank.
pub const MOST_ROLE_INSTANCES: usize = 1024;

/// Which rank hosts the `i`-th instance of a role.
type RankOf = Box<dyn Fn(Role, usize) -> usize>;

impl Layout {
    /// Lays roles out over `world_size` ranks. `local_encoders` is used only when `world_size == 1`.
    pub fn new(world_size: usize, loaders: Option<usize>, writers: Option<usize>, local_encoders: usize) -> Result<Layout, String> {
        for (flag, v) in [("--loaders", loaders), ("--writers", writers), ("--local-encoders", Some(local_encoders))] {
            match v {
                Some(0) => return Err(format!("{flag} must be at least 1")),
                Some(n) if n > MOST_ROLE_INSTANCES => return Err(format!("{flag} {n}: must be from 1 to {MOST_ROLE_INSTANCES}")),
                _ => {}
            }
        }
        let (l, e, w, rank_of): (usize, usize, usize, RankOf) = match world_size {
            0 => return Err("world size 0".into()),
            1 => (loaders.unwrap_or(1), local_encoders, writers.unwrap_or(1), Box::new(|_, _| 0)),
            2 => (loaders.unwrap_or(1), 1, writers.unwrap_or(1), Box::new(|r, _| if r == Role::Encoder { 1 } else { 0 })),
            3 => (
                loaders.unwrap_or(1),
                1,
                writers.unwrap_or(1),
                Box::new(|r, _| match r {
                    Role::Loader => 1,
                    Role::Encoder => 2,
                    _ => 0,
                }),
            ),
            n => {
                let workers = n - 1;
                // Defaults: solve loaders = ceil(e/4), writers = ceil(e/8) for the largest e that fits.
                let mut e = workers.saturating_sub(2);
                let (mut l, mut w);
                loop {
                    l = loaders.unwrap_or(e.div_ceil(4).max(1));
                    w = writers.unwrap_or(e.div_ceil(8).max(1));
                    if l + w + e <= workers || e == 0 {
                        break;
                    }
                    e -= 1;
                }
                if l + w >= workers {
                    return Err(format!("--loaders {l} and --writers {w} leave no encoder rank among {n} ranks (rank 0 is the controller)"));
                }
                let e = workers - l - w;
                (
                    l,
                    e,
                    w,
                    Box::new(move |r, i| match r {
                        Role::Controller => 0,
                        Role::Loader => 1 + i,
                        Role::Encoder => 1 + l + i,
                        Role::Writer => 1 + l + e + i,
                    }),
                )
            }
        };
        let mut ranks = vec![rank_of(Role::Controller, 0)];
        ranks.extend((0..l).map(|i| rank_of(Role::Loader, i)));
        ranks.extend((0..e).map(|i| rank_of(Role::Encoder, i)));
        ranks.extend((0..w).map(|i| rank_of(Role::Writer, i)));
        Ok(Layout { world_size, ranks, loaders: l, encoders: e, writers: w })
    }

    pub fn endpoints(&self) -> usize {
        self.ranks.len()
    }

    pub fn controller(&self) -> Endpoint {
        0
    }

    pub fn loader(&self, i: usize) -> Endpoint {
        (1 + i) as Endpoint
    }

    pub fn encoder(&self, i: usize) -> Endpoint {
        (1 + self.loaders + i) as Endpoint
    }

    pub fn writer(&self, i: usize) -> Endpoint {
        (1 + self.loaders + self.encoders + i) as Endpoint
    }

    pub fn role_of(&self, e: Endpoint) -> (Role, usize) {
        let e = e as usize;
        if e == 0 {
            (Role::Controller, 0)
        } else if e <= self.loaders {
            (Role::Loader, e - 1)
        } else if e <= self.loaders + self.encoders {
            (Role::Encoder, e - 1 - self.loaders)
        } else {
            (Role::Writer, e - 1 - self.loaders - self.encoders)
        }
    }

    /// Endpoints hosted by `rank`.
    pub fn local_endpoints(&self, rank: usize) -> Vec<Endpoint> {
        (0..self.ranks.len()).filter(|&e| self.ranks[e] == rank).map(|e| e as Endpoint).collect()
    }

    /// "rank 3 (encoder 1)" for messages.
    pub fn describe(&self, e: Endpoint) -> String {
        let (role, i) = self.role_of(e);
        format!("rank {} ({} {})", self.ranks[e as usize], role.name(), i)
    }

    /// One line per rank, for logs and the README.
    pub fn summary(&self) -> String {
        (0..self.world_size)
            .map(|r| {
                let roles: Vec<String> = self
                    .local_endpoints(r)
                    .into_iter()
                    .map(|e| {
                        let (role, i) = self.role_of(e);
                        if role == Role::Controller {
                            role.name().to_string()
                        } else {
                            format!("{} {}", role.name(), i)
                        }
                    })
                    .collect();
                format!("rank {r}: {}", roles.join(" + "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Threads per encoder: `requested`, or (0) the cores this process may use shared among the encoders on
/// this node. Under Slurm with `--cpus-per-task`, each rank's own CPUs are its share.
pub fn encoder_threads(requested: usize, layout: &Layout) -> usize {
    if requested > 0 {
        return requested;
    }
    if let Some(n) = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0) {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    auto_threads(cores, layout, ranks_here(layout))
}

/// Threads per loader: `requested`, or (0) under Slurm with `--cpus-per-task` each rank's own CPUs; else
/// with CPU encoders 1 (they take the cores, and one tokenizer thread outruns many encoder cores); with GPU
/// encoders the node's cores less one per encoder, shared among the loaders on the node.
pub fn loader_threads(requested: usize, layout: &Layout, device: crate::config::DeviceChoice) -> usize {
    if requested > 0 {
        return requested;
    }
    if let Some(n) = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0) {
        return n;
    }
    if device == crate::config::DeviceChoice::Cpu || !crate::device::CUDA_BUILT {
        return 1;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    auto_loader_threads(cores, layout, ranks_here(layout))
}

fn ranks_here(layout: &Layout) -> usize {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok())
        .unwrap_or(layout.world_size)
}

/// Roles of a kind on this node, assuming ranks spread evenly over nodes.
fn here(count: usize, layout: &Layout, ranks_here: usize) -> usize {
    if layout.world_size <= 1 {
        count
    } else {
        (count * ranks_here.clamp(1, layout.world_size)).div_ceil(layout.world_size)
    }
}

fn auto_loader_threads(cores: usize, layout: &Layout, ranks_here: usize) -> usize {
    let (loaders, encoders, writers) = (here(layout.loaders, layout, ranks_here), here(layout.encoders, layout, ranks_here), 1);
    // A core for each encoder (it drives its GPU) and one for the controller and writers.
    (cores.saturating_sub(encoders + writers) / loaders.max(1)).max(1)
}

fn auto_threads(cores: usize, layout: &Layout, ranks_here: usize) -> usize {
    (cores / here(layout.encoders, layout, ranks_here).max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: usize) -> (usize, usize, usize) {
        let l = Layout::new(n, None, None, 1).unwrap();
        (l.loaders, l.encoders, l.writers)
    }

    #[test]
    fn default_layouts_for_one_to_eight_ranks() {
        assert_eq!(counts(1), (1, 1, 1));
        assert_eq!(counts(2), (1, 1, 1));
        assert_eq!(counts(3), (1, 1, 1));
        assert_eq!(counts(4), (1, 1, 1));
        assert_eq!(counts(5), (1, 2, 1));
        assert_eq!(counts(6), (1, 3, 1));
        assert_eq!(counts(7), (1, 4, 1));
        assert_eq!(counts(8), (1, 5, 1));
        assert_eq!(counts(16), (3, 10, 2));
    }

    #[test]
    fn every_rank_hosts_something_and_roles_are_consistent() {
        for n in 1..=12 {
            let l = Layout::new(n, None, None, 2).unwrap();
            assert_eq!(l.ranks.len(), 1 + l.loaders + l.encoders + l.writers);
            for r in 0..n {
                assert!(!l.local_endpoints(r).is_empty(), "rank {r} idle for n={n}");
            }
            assert_eq!(l.role_of(0), (Role::Controller, 0));
            for i in 0..l.encoders {
                assert_eq!(l.role_of(l.encoder(i)), (Role::Encoder, i));
            }
            for i in 0..l.writers {
                assert_eq!(l.role_of(l.writer(i)), (Role::Writer, i));
            }
            for i in 0..l.loaders {
                assert_eq!(l.role_of(l.loader(i)), (Role::Loader, i));
            }
            assert_eq!(l.ranks[0], 0);
        }
    }

    #[test]
    fn overrides_and_their_errors() {
        let l = Layout::new(8, Some(2), Some(2), 1).unwrap();
        assert_eq!((l.loaders, l.encoders, l.writers), (2, 3, 2));
        let e = Layout::new(4, Some(2), Some(1), 1).unwrap_err();
        assert!(e.contains("--loaders"), "{e}");
        assert!(Layout::new(4, Some(0), None, 1).is_err());
        let single = Layout::new(1, None, None, 3).unwrap();
        assert_eq!(single.encoders, 3);
        assert!(single.ranks.iter().all(|&r| r == 0));
    }

    #[test]
    fn summary_names_every_rank() {
        let l = Layout::new(4, None, None, 1).unwrap();
        assert_eq!(l.summary(), "rank 0: controller; rank 1: loader 0; rank 2: encoder 0; rank 3: writer 0");
    }

    #[test]
    fn loaders_share_the_cores_gpu_encoders_leave() {
        // One 16-core node, 10 ranks: controller, 2 loaders, 6 encoders, 1 writer.
        let l = Layout::new(10, None, None, 1).unwrap();
        assert_eq!((l.loaders, l.encoders, l.writers), (2, 6, 1));
        assert_eq!(auto_loader_threads(16, &l, 10), (16 - 6 - 1) / 2);
        // Two such nodes (5 ranks each): half the roles per node.
        assert_eq!(auto_loader_threads(16, &l, 5), 16 - 3 - 1);
        // Never zero, even with more encoders than cores.
        assert_eq!(auto_loader_threads(4, &l, 10), 1);
        assert_eq!(loader_threads(3, &l, crate::config::DeviceChoice::Cuda), 3, "asked for");
    }

    #[test]
    fn encoder_threads_share_the_node_cores() {
        let one = Layout::new(1, None, None, 1).unwrap();
        assert_eq!(auto_threads(2, &one, 1), 2);
        assert_eq!(auto_threads(8, &Layout::new(1, None, None, 2).unwrap(), 1), 4);
        let four = Layout::new(4, None, None, 1).unwrap(); // one encoder rank
        assert_eq!(auto_threads(2, &four, 4), 2);
        let five = Layout::new(5, None, None, 1).unwrap(); // two encoder ranks on one node
        assert_eq!(five.encoders, 2);
        assert_eq!(auto_threads(2, &five, 5), 1);
        let sixteen = Layout::new(16, None, None, 1).unwrap(); // two nodes of 8 ranks: half the encoders here
        assert_eq!(auto_threads(16, &sixteen, 8), 16 / sixteen.encoders.div_ceil(2));
        assert_eq!(encoder_threads(3, &four), 3);
    }
}
