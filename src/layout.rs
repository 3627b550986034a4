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
//!
//! When the ranks span several hosts ([`Layout::place`]), roles are laid out per node instead: each node's
//! ranks (rank 0, the controller, aside) get loaders for that node's encoders, and the node's own writers
//! (see [`Layout::place`] for the rule), so that token batches stay on the node; `--loaders`/`--writers` are
//! dealt out over the nodes in turn. A loader feeds the encoders of its node, and any encoder on a node
//! without a loader is fed by every loader.

use serde::{Deserialize, Serialize};

/// Index of a role instance (controller, a loader, an encoder, a writer).
pub type Endpoint = u32;

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
    /// The host of each rank (MPI_Get_processor_name); empty when the placement is not known.
    #[serde(default)]
    pub hosts: Vec<String>,
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
                let (l, w) = split(workers, loaders, writers);
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
        Ok(Layout { world_size, ranks, loaders: l, encoders: e, writers: w, hosts: Vec::new() })
    }

    /// Lays roles out over ranks whose hosts are `hosts` (one per rank, in rank order). On one host this is
    /// [`Layout::new`]. On several, per node (rank 0 is the controller and nothing else):
    /// - with `--loaders`/`--writers`, they are dealt out over the nodes in turn (a node's lowest free rank
    ///   first), loaders before writers, and every other rank is an encoder;
    /// - by default a node with one free rank gets an encoder (fed by the other nodes' loaders), with two a
    ///   loader and an encoder, with more one loader per 4 and one writer per 8 of its encoders.
    ///
    /// A job left without a loader or writer runs one on rank 0, beside the controller.
    pub fn place(hosts: &[String], loaders: Option<usize>, writers: Option<usize>, local_encoders: usize) -> Result<Layout, String> {
        let mut nodes: Vec<(&str, Vec<usize>)> = Vec::new();
        for (rank, host) in hosts.iter().enumerate() {
            match nodes.iter_mut().find(|(h, _)| *h == host.as_str()) {
                Some((_, ranks)) => ranks.push(rank),
                None => nodes.push((host, vec![rank])),
            }
        }
        if nodes.len() <= 1 {
            let mut layout = Layout::new(hosts.len().max(1), loaders, writers, local_encoders)?;
            layout.hosts = hosts.to_vec();
            return Ok(layout);
        }
        // The same checks of the flags.
        Layout::new(hosts.len(), loaders, writers, 1)?;
        // Each node's free ranks, lowest first.
        let mut free: Vec<std::collections::VecDeque<usize>> = nodes.iter().map(|(_, r)| r.iter().copied().filter(|&r| r != 0).collect()).collect();
        let (mut lr, mut wr) = (Vec::new(), Vec::new());
        if loaders.is_some() || writers.is_some() {
            for (want, out) in [(loaders, &mut lr), (writers, &mut wr)] {
                let Some(want) = want else { continue };
                let mut node = 0;
                while out.len() < want && free.iter().any(|f| f.len() > 1) {
                    // Keep one rank per node for an encoder.
                    if free[node].len() > 1 {
                        out.push(free[node].pop_front().expect("non-empty"));
                    }
                    node = (node + 1) % free.len();
                }
                if out.len() < want {
                    return Err(format!(
                        "--loaders/--writers: {want} do not fit beside one encoder per node on {} ranks over {} nodes",
                        hosts.len(),
                        nodes.len()
                    ));
                }
            }
        }
        if loaders.is_none() || writers.is_none() {
            for f in free.iter_mut() {
                let (l, w) = match f.len() {
                    0 | 1 => (0, 0),
                    2 => (1, 0),
                    n => split(n, None, None),
                };
                if loaders.is_none() {
                    lr.extend((0..l).filter_map(|_| f.pop_front()));
                }
                if writers.is_none() {
                    wr.extend((0..w).filter_map(|_| f.pop_front()));
                }
            }
        }
        let mut er: Vec<usize> = free.into_iter().flatten().collect();
        if er.is_empty() {
            return Err(format!("no rank is left for an encoder among {} ranks (rank 0 is the controller)", hosts.len()));
        }
        if lr.is_empty() {
            lr.push(0);
        }
        if wr.is_empty() {
            wr.push(0);
        }
        lr.sort_unstable();
        er.sort_unstable();
        wr.sort_unstable();
        let mut ranks = vec![0];
        ranks.extend(lr.iter().chain(&er).chain(&wr));
        Ok(Layout { world_size: hosts.len(), ranks, loaders: lr.len(), encoders: er.len(), writers: wr.len(), hosts: hosts.to_vec() })
    }

    /// The host of endpoint `e`'s rank, when known.
    pub fn host_of(&self, e: Endpoint) -> Option<&str> {
        self.hosts.get(*self.ranks.get(e as usize)?).map(String::as_str)
    }

    /// The encoders (by index) loader `i` feeds: those on its host and those on hosts without a loader; every
    /// encoder when the hosts are not known or all the same.
    pub fn encoders_of_loader(&self, i: usize) -> Vec<usize> {
        let all: Vec<usize> = (0..self.encoders).collect();
        let Some(mine) = self.host_of(self.loader(i)) else { return all };
        let fed: std::collections::HashSet<&str> = (0..self.loaders).filter_map(|l| self.host_of(self.loader(l))).collect();
        if fed.len() <= 1 && self.hosts.iter().all(|h| h == mine) {
            return all;
        }
        all.into_iter().filter(|&k| self.host_of(self.encoder(k)).is_none_or(|h| h == mine || !fed.contains(h))).collect()
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

    /// "rank 3 (encoder 1)" for messages, with " on HOST" when the hosts are known.
    pub fn describe(&self, e: Endpoint) -> String {
        let (role, i) = self.role_of(e);
        let on = self.host_of(e).map_or(String::new(), |h| format!(" on {h}"));
        format!("rank {} ({} {}){on}", self.ranks[e as usize], role.name(), i)
    }

    /// "rank 3 (encoder 1, loader 0) on HOST" for a rank.
    pub fn describe_rank(&self, rank: usize) -> String {
        let on = self.hosts.get(rank).map_or(String::new(), |h| format!(" on {h}"));
        format!("rank {rank} ({}){on}", self.roles_of_rank(rank).join(", "))
    }

    /// "controller", "loader 0", ... for the roles `rank` hosts.
    pub fn roles_of_rank(&self, rank: usize) -> Vec<String> {
        self.local_endpoints(rank)
            .into_iter()
            .map(|e| match self.role_of(e) {
                (Role::Controller, _) => "controller".to_string(),
                (role, i) => format!("{} {i}", role.name()),
            })
            .collect()
    }

    /// One line per rank, for logs and the README: "rank 0: controller; rank 1: loader 0; ...", with
    /// " on HOST" after each rank when the ranks span several hosts.
    pub fn summary(&self) -> String {
        let many = self.hosts.iter().any(|h| Some(h) != self.hosts.first());
        (0..self.world_size)
            .map(|r| {
                let on = if many { self.hosts.get(r).map_or(String::new(), |h| format!(" on {h}")) } else { String::new() };
                format!("rank {r}{on}: {}", self.roles_of_rank(r).join(" + "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Loaders and writers for a pool of `workers` ranks (the rest are encoders): `--loaders`/`--writers`, else
/// loaders = ceil(e/4) and writers = ceil(e/8), at least one each, for the largest e that fits.
fn split(workers: usize, loaders: Option<usize>, writers: Option<usize>) -> (usize, usize) {
    let mut e = workers.saturating_sub(2);
    loop {
        let l = loaders.unwrap_or(e.div_ceil(4).max(1));
        let w = writers.unwrap_or(e.div_ceil(8).max(1));
        if l + w + e <= workers || e == 0 {
            return (l, w);
        }
        e -= 1;
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
pub fn loader_threads(requested: usize, layout: &Layout, device: crate::encoder::DeviceChoice) -> usize {
    if requested > 0 {
        return requested;
    }
    if let Some(n) = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0) {
        return n;
    }
    if device == crate::encoder::DeviceChoice::Cpu || !crate::encoder::cuda::CUDA_BUILT {
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

    fn hosts(spec: &[(&str, usize)]) -> Vec<String> {
        spec.iter().flat_map(|&(h, n)| std::iter::repeat_n(h.to_string(), n)).collect()
    }

    /// Each node's roles, "L" loader, "E" encoder, "W" writer, "C" controller, in rank order per node.
    fn per_node(l: &Layout) -> Vec<String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in 0..l.world_size {
            let tags: String = l
                .local_endpoints(r)
                .into_iter()
                .map(|e| match l.role_of(e).0 {
                    Role::Controller => 'C',
                    Role::Loader => 'L',
                    Role::Encoder => 'E',
                    Role::Writer => 'W',
                })
                .collect();
            match out.iter_mut().find(|(h, _)| *h == l.hosts[r]) {
                Some((_, v)) => *v = format!("{v} {tags}"),
                None => out.push((l.hosts[r].clone(), tags)),
            }
        }
        out.into_iter().map(|(h, v)| format!("{h}: {v}")).collect()
    }

    #[test]
    fn roles_are_placed_per_node_across_hosts() {
        // sbatch -N 2 --ntasks-per-node 3: each node loads for its own encoder; the writer is on node 2.
        let l = Layout::place(&hosts(&[("node1", 3), ("node2", 3)]), None, None, 1).unwrap();
        assert_eq!(per_node(&l), vec!["node1: C L E", "node2: L W E"]);
        assert_eq!(l.summary(), "rank 0 on node1: controller; rank 1 on node1: loader 0; rank 2 on node1: encoder 0; rank 3 on node2: loader 1; rank 4 on node2: writer 0; rank 5 on node2: encoder 1");
        assert_eq!(l.encoders_of_loader(0), vec![0]);
        assert_eq!(l.encoders_of_loader(1), vec![1]);
        // Three nodes of two: node 1's lone encoder is fed by both loaders; the writer falls back to rank 0.
        let l = Layout::place(&hosts(&[("a", 2), ("b", 2), ("c", 2)]), None, None, 1).unwrap();
        assert_eq!(per_node(&l), vec!["a: CW E", "b: L E", "c: L E"]);
        assert_eq!(l.encoders_of_loader(0), vec![0, 1]);
        assert_eq!(l.encoders_of_loader(1), vec![0, 2]);
        // Two nodes of six GPUs' worth: per node one loader and one writer, the rest encoders.
        let l = Layout::place(&hosts(&[("a", 6), ("b", 6)]), None, None, 1).unwrap();
        assert_eq!(per_node(&l), vec!["a: C L W E E E", "b: L W E E E E"]);
        assert_eq!((l.loaders, l.encoders, l.writers), (2, 7, 2));
        // Ranks of a node need not be contiguous (round-robin placement).
        let h: Vec<String> = (0..6).map(|r| if r % 2 == 0 { "x".to_string() } else { "y".to_string() }).collect();
        let l = Layout::place(&h, None, None, 1).unwrap();
        for i in 0..l.loaders {
            let host = l.host_of(l.loader(i)).unwrap();
            assert!(l.encoders_of_loader(i).iter().all(|&k| l.host_of(l.encoder(k)) == Some(host)));
            assert!(!l.encoders_of_loader(i).is_empty());
        }
    }

    #[test]
    fn role_flags_are_dealt_over_the_nodes() {
        let l = Layout::place(&hosts(&[("a", 4), ("b", 4)]), Some(1), Some(2), 1).unwrap();
        assert_eq!((l.loaders, l.encoders, l.writers), (1, 4, 2));
        assert_eq!(per_node(&l), vec!["a: C L W E", "b: W E E E"]);
        // Every encoder is fed: b has no loader, so a's loader feeds b's encoders too.
        assert_eq!(l.encoders_of_loader(0), vec![0, 1, 2, 3]);
        let e = Layout::place(&hosts(&[("a", 2), ("b", 2)]), Some(3), None, 1).unwrap_err();
        assert!(e.contains("--loaders"), "{e}");
        // One host: the single-node layout, with the host recorded.
        let one = Layout::place(&hosts(&[("a", 4)]), None, None, 1).unwrap();
        assert_eq!(one.summary(), Layout::new(4, None, None, 1).unwrap().summary());
        assert_eq!(one.describe(one.encoder(0)), "rank 2 (encoder 0) on a");
        assert_eq!(one.describe_rank(0), "rank 0 (controller) on a");
        assert_eq!(one.encoders_of_loader(0), vec![0]);
    }

    #[test]
    fn every_placement_is_complete_and_consistent() {
        for nodes in 2..=4 {
            for per in 1..=7 {
                let h: Vec<String> = (0..nodes * per).map(|r| format!("n{}", r / per)).collect();
                let Ok(l) = Layout::place(&h, None, None, 1) else {
                    assert!(nodes * per < 2, "{nodes}x{per}");
                    continue;
                };
                assert!(l.loaders >= 1 && l.encoders >= 1 && l.writers >= 1, "{nodes}x{per}");
                for r in 0..l.world_size {
                    assert!(!l.local_endpoints(r).is_empty(), "rank {r} idle for {nodes}x{per}");
                }
                let mut fed = vec![false; l.encoders];
                for i in 0..l.loaders {
                    for k in l.encoders_of_loader(i) {
                        fed[k] = true;
                    }
                }
                assert!(fed.iter().all(|&f| f), "an encoder without a loader for {nodes}x{per}");
            }
        }
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
        assert_eq!(loader_threads(3, &l, crate::encoder::DeviceChoice::Cuda), 3, "asked for");
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
