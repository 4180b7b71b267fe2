//! Samples of a process's CPU time and resident memory from `/proc`.

use std::io;

/// CPU time and memory of one process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// CPU time of every live thread, in nanoseconds, from the scheduler's exact run
    /// time (`/proc/<pid>/task/*/schedstat`); where that is missing, utime + stime from
    /// `stat`, which the kernel samples once per clock tick, and which misjudges a process
    /// that runs in short bursts by a factor of two either way.
    pub cpu_ns: u64,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/statm` (`"self"` for this process).
///
/// # Errors
/// When the process is gone or its files cannot be parsed.
pub fn sample(pid: &str) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat"));
    // The command name may hold spaces and parentheses: fields restart after the last ')'.
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of stat(5), so utime (14) and stime (15) are at 11, 12.
    let ticks = |i: usize| -> io::Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(bad)
    };
    let cpu_ns = match run_time_ns(pid) {
        Some(ns) => ns,
        None => (ticks(11)? + ticks(12)?) * 1_000_000_000 / ticks_per_sec(),
    };
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Ok(ProcSample {
        cpu_ns,
        rss_bytes: pages * page,
    })
}

/// This process's CPU time so far, its ended threads' included (which `/proc/self/task`
/// no longer lists: a `connect` run's workers have all ended when its window closes).
pub fn self_cpu_ns() -> Option<u64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    (rc == 0).then(|| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

/// The summed scheduler run time of `pid`'s live threads, if the kernel reports it.
fn run_time_ns(pid: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Per-CPU (steal, total) clock ticks since boot, from `/proc/stat`: time the hypervisor
/// ran something else while this machine's CPU wanted to run.
pub fn steal_ticks() -> Vec<(u64, u64)> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            (v.get(7).copied().unwrap_or(0), v.iter().take(8).sum())
        })
        .collect()
}

/// The largest share of any CPU's time stolen by the hypervisor between two
/// [`steal_ticks`] samples (0 to 1).
pub fn max_steal(before: &[(u64, u64)], after: &[(u64, u64)]) -> f64 {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            match total {
                0 => 0.0,
                t => a.0.saturating_sub(b.0) as f64 / t as f64,
            }
        })
        .fold(0.0, f64::max)
}

/// How many CPUs this process may run on (`taskset -c 1` makes it 1).
pub fn allowed_cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is valid, and sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            (libc::CPU_COUNT(&set) as usize).max(1)
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_itself() {
        let a = sample("self").unwrap();
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let b = sample(&std::process::id().to_string()).unwrap();
        assert!(b.cpu_ns >= a.cpu_ns);
        assert!(a.rss_bytes > 100_000, "rss {}", a.rss_bytes);
        assert!(allowed_cpus() >= 1);
        let t = steal_ticks();
        assert!(!t.is_empty() && t.iter().all(|&(steal, total)| steal <= total));
        assert_eq!(
            max_steal(&[(1, 100), (0, 100)], &[(11, 200), (50, 200)]),
            0.5
        );
    }
}
