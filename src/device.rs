//! Where an encoder runs: the CPU, or the CUDA GPU its place on the node gives it (`--device`).
//!
//! GPUs are handed out per node: the encoders hosted by this node's ranks, in rank order, take the visible
//! devices round-robin. The CUDA runtime applies CUDA_VISIBLE_DEVICES, so under `--gpus-per-task=1` (Slurm
//! gives each task its own GPU) every encoder sees one device, ordinal 0. Which ranks share the node comes from
//! the hosts the ranks reported at start; without them, from the launcher's node-local rank, taking ranks as
//! placed in contiguous blocks (mpirun `--map-by slot`, srun block distribution), so that the node's first
//! rank is `rank - local_rank`.

use crate::encoder::cuda::{cuda_device_count, CUDA_BUILT};
use crate::layout::{Endpoint, Layout};

/// This rank's index on its node, from the launcher: Open MPI, Slurm, MPICH/Hydra or PMIx.
pub fn local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

/// The GPU for encoder endpoint `me` on `rank` (node-local rank `local_rank`), among `devices` visible ones.
pub fn gpu_ordinal(layout: &Layout, rank: usize, local_rank: usize, me: Endpoint, devices: usize) -> usize {
    if let Some(host) = layout.hosts.get(rank) {
        // The encoders on this host before `me`, in endpoint (so rank) order.
        let before = (0..layout.encoders).map(|i| layout.encoder(i)).filter(|&e| e < me && layout.host_of(e) == Some(host.as_str())).count();
        return before % devices.max(1);
    }
    let first = rank.saturating_sub(local_rank);
    let before = (0..layout.encoders)
        .map(|i| layout.encoder(i))
        .filter(|&e| {
            let r = layout.ranks[e as usize];
            r >= first && (r < rank || (r == rank && e < me))
        })
        .count();
    before % devices.max(1)
}

/// The GPU ordinal encoder `me` uses for `--device` (`None`: the CPU).
pub fn resolve(device: &str, layout: &Layout, me: Endpoint) -> Result<Option<usize>, String> {
    let rank = layout.ranks.get(me as usize).copied().unwrap_or(0);
    let pick = |count: usize| gpu_ordinal(layout, rank, local_rank().unwrap_or(if layout.world_size == 1 { 0 } else { rank }), me, count);
    match device {
        "cpu" => Ok(None),
        "auto" => Ok(Some(cuda_device_count()).filter(|&n| n > 0).map(pick)),
        "cuda" => match cuda_device_count() {
            0 if !CUDA_BUILT => Err("--device cuda: this binary was built without CUDA (scripts/build-cuda.sh builds one)".into()),
            0 => Err(format!(
                "--device cuda: rank {rank} sees no CUDA device (CUDA_VISIBLE_DEVICES={})",
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "unset".into())
            )),
            n => Ok(Some(pick(n))),
        },
        other => Err(format!("--device {other}: cpu, cuda or auto")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_go_round_robin_to_the_encoders_of_each_node() {
        // 16 ranks on 2 nodes of 8 ranks and 4 GPUs each (the default layout: controller, loaders, encoders,
        // writers in rank order). Node 0 holds ranks 0-7, node 1 ranks 8-15.
        let layout = Layout::new(16, None, None, 1).unwrap();
        let ordinal_of_rank = |rank: usize| {
            let me = (0..layout.encoders).map(|i| layout.encoder(i)).find(|&e| layout.ranks[e as usize] == rank).unwrap();
            gpu_ordinal(&layout, rank, rank % 8, me, 4)
        };
        let encoder_ranks: Vec<usize> = (0..layout.encoders).map(|i| layout.ranks[layout.encoder(i) as usize]).collect();
        assert!(encoder_ranks.iter().any(|&r| r < 8) && encoder_ranks.iter().any(|&r| r >= 8));
        let node0: Vec<usize> = encoder_ranks.iter().filter(|&&r| r < 8).map(|&r| ordinal_of_rank(r)).collect();
        let node1: Vec<usize> = encoder_ranks.iter().filter(|&&r| r >= 8).map(|&r| ordinal_of_rank(r)).collect();
        assert_eq!(node0, (0..node0.len()).map(|i| i % 4).collect::<Vec<_>>());
        assert_eq!(node1, (0..node1.len()).map(|i| i % 4).collect::<Vec<_>>());
        // One process (plain run): local encoder threads take GPUs in order.
        let plain = Layout::new(1, None, None, 3).unwrap();
        let ords: Vec<usize> = (0..3).map(|i| gpu_ordinal(&plain, 0, 0, plain.encoder(i), 2)).collect();
        assert_eq!(ords, vec![0, 1, 0]);
    }

    #[test]
    fn two_nodes_of_four_gpus_use_each_gpu_once() {
        // The README's layout: --nodes=2 --ntasks-per-node=6, --loaders 1 --writers 2. Node 0: controller,
        // loader, 4 encoders; node 1: 4 encoders, 2 writers.
        let layout = Layout::new(12, Some(1), Some(2), 1).unwrap();
        assert_eq!(layout.encoders, 8);
        for node in 0..2 {
            let mut ords: Vec<usize> = (0..layout.encoders)
                .map(|i| layout.encoder(i))
                .filter(|&e| layout.ranks[e as usize] / 6 == node)
                .map(|e| {
                    let rank = layout.ranks[e as usize];
                    gpu_ordinal(&layout, rank, rank % 6, e, 4)
                })
                .collect();
            ords.sort_unstable();
            assert_eq!(ords, vec![0, 1, 2, 3], "node {node}");
        }
    }

    #[test]
    fn gpus_follow_the_reported_hosts_whatever_the_local_rank_says() {
        // srun -N 2 --ntasks-per-node 6 with 4 GPUs per node: the hosts the ranks reported decide; the
        // launcher's local rank (here deliberately wrong) is not consulted.
        let hosts: Vec<String> = (0..12).map(|r| if r < 6 { "node1".into() } else { "node2".into() }).collect();
        let layout = Layout::place(&hosts, None, None, 1).unwrap();
        for node in ["node1", "node2"] {
            let mut ords: Vec<usize> = (0..layout.encoders)
                .map(|i| layout.encoder(i))
                .filter(|&e| layout.host_of(e) == Some(node))
                .map(|e| gpu_ordinal(&layout, layout.ranks[e as usize], 99, e, 4))
                .collect();
            ords.sort_unstable();
            assert_eq!(ords, (0..ords.len()).collect::<Vec<_>>(), "{node}: one GPU each, from 0");
        }
        // --gpus-per-task=1: Slurm's CUDA_VISIBLE_DEVICES shows each task one GPU, which is its ordinal 0.
        for i in 0..layout.encoders {
            let e = layout.encoder(i);
            assert_eq!(gpu_ordinal(&layout, layout.ranks[e as usize], 0, e, 1), 0);
        }
    }

    #[test]
    fn local_rank_comes_from_the_launcher() {
        // The only test here that touches these variables.
        let keys = ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMIX_LOCAL_RANK"];
        let saved: Vec<Option<String>> = keys.iter().map(|k| std::env::var(k).ok()).collect();
        let set = |vals: &[Option<&str>]| {
            for (k, v) in keys.iter().zip(vals) {
                // SAFETY: no other test reads or writes these variables.
                unsafe {
                    match v {
                        Some(v) => std::env::set_var(k, v),
                        None => std::env::remove_var(k),
                    }
                }
            }
        };
        set(&[None, Some("3"), None, None]);
        assert_eq!(local_rank(), Some(3), "srun");
        set(&[Some("1"), Some("3"), None, None]);
        assert_eq!(local_rank(), Some(1), "mpirun inside an allocation: Open MPI's own rank wins");
        set(&[None, None, None, Some("2")]);
        assert_eq!(local_rank(), Some(2), "PMIx");
        set(&[None, None, None, None]);
        assert_eq!(local_rank(), None);
        set(&saved.iter().map(Option::as_deref).collect::<Vec<_>>());
    }

    #[test]
    fn device_flag_resolution_without_a_gpu() {
        let layout = Layout::new(4, None, None, 1).unwrap();
        assert_eq!(resolve("cpu", &layout, layout.encoder(0)), Ok(None));
        if cuda_device_count() == 0 {
            assert_eq!(resolve("auto", &layout, layout.encoder(0)), Ok(None));
            assert!(resolve("cuda", &layout, layout.encoder(0)).unwrap_err().contains("--device cuda"));
        }
        assert!(resolve("tpu", &layout, layout.encoder(0)).is_err());
    }
}
