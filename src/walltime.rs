//! Time: the job's end time (from `--end-time` or Slurm) and when to start draining before it; durations as
//! people read them; a thread's CPU clock.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Parses squeue's `%L` (time left): `[days-]hours:minutes:seconds`, `minutes:seconds`; `None` for
/// `UNLIMITED`, `NOT_SET`, `INVALID` or anything else.
pub fn parse_time_left(s: &str) -> Option<f64> {
    let s = s.trim();
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<f64>().ok()?, r),
        None => (0.0, s),
    };
    let parts: Vec<f64> = rest.split(':').map(|p| p.parse::<f64>().ok()).collect::<Option<_>>()?;
    let secs = match parts.as_slice() {
        [h, m, s] => h * 3600.0 + m * 60.0 + s,
        [m, s] => m * 60.0 + s,
        [s] => *s,
        _ => return None,
    };
    Some(days * 86400.0 + secs)
}

/// The end time of the Slurm job this process runs in (Unix seconds), asked from `squeue`.
pub fn slurm_end_time() -> Option<f64> {
    let job = std::env::var("SLURM_JOB_ID").ok()?;
    let out = std::process::Command::new("squeue").args(["-h", "-j", &job, "-o", "%L"]).output().ok()?;
    if !out.status.success() {
        log::warn!("squeue -j {job}: {}", String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    let left = parse_time_left(&String::from_utf8_lossy(&out.stdout))?;
    Some(now_unix() + left)
}

/// A running estimate of how long a drain takes: the slowest batch seen (an encoder finishes the batch it
/// is on), twice for safety, plus time to write and commit shards.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainEstimate {
    slowest_batch: f64,
}

impl DrainEstimate {
    pub const COMMIT_SECONDS: f64 = 2.0;

    pub fn observe_batch(&mut self, seconds: f64) {
        self.slowest_batch = self.slowest_batch.max(seconds);
    }

    pub fn seconds(&self) -> f64 {
        2.0 * self.slowest_batch + Self::COMMIT_SECONDS
    }
}

/// Whether to start draining now, given the job's end time.
pub fn should_drain(now: f64, end: f64, stop_before: f64, estimate: &DrainEstimate) -> bool {
    end - now <= stop_before + estimate.seconds()
}

/// Seconds as h:mm:ss.
pub fn hms(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "?".into();
    }
    let s = seconds.round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// CPU time the calling thread has used, in seconds (0 where the clock is unavailable).
pub fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        return 0.0;
    }
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_time_left_formats() {
        assert_eq!(parse_time_left("1-02:03:04"), Some(86400.0 + 7384.0));
        assert_eq!(parse_time_left("02:03:04\n"), Some(7384.0));
        assert_eq!(parse_time_left("3:04"), Some(184.0));
        assert_eq!(parse_time_left("59"), Some(59.0));
        assert_eq!(parse_time_left("UNLIMITED"), None);
        assert_eq!(parse_time_left("INVALID"), None);
        assert_eq!(parse_time_left(""), None);
    }

    #[test]
    fn drain_starts_when_time_left_is_below_margin_plus_estimate() {
        let mut e = DrainEstimate::default();
        assert_eq!(e.seconds(), 2.0);
        e.observe_batch(1.5);
        e.observe_batch(0.5);
        assert_eq!(e.seconds(), 5.0);
        assert!(!should_drain(1000.0, 1040.0, 30.0, &e));
        assert!(should_drain(1000.0, 1035.0, 30.0, &e));
        assert!(should_drain(1000.0, 900.0, 0.0, &e), "past the deadline");
    }

    #[test]
    fn eta_is_hours_minutes_seconds() {
        assert_eq!(hms(0.0), "0:00:00");
        assert_eq!(hms(59.6), "0:01:00");
        assert_eq!(hms(3_723.0), "1:02:03");
        assert_eq!(hms(100.0 * 3600.0), "100:00:00");
        assert_eq!((hms(f64::NAN), hms(-1.0), hms(f64::INFINITY)), ("?".into(), "?".into(), "?".into()));
    }
}
