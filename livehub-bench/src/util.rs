//! Small helpers: a latency histogram, command-line options, `/proc` readers, medians.

use std::collections::HashMap;
use std::str::FromStr;

/// The error type of the tool: anything printable.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;
/// A result with [`Error`].
pub(crate) type Res<T> = Result<T, Error>;

/// Builds an [`Error`] from text.
pub(crate) fn err(msg: impl Into<String>) -> Error {
    msg.into().into()
}

/// A latency histogram with 1 µs buckets up to ~1 s (larger values land in the last bucket,
/// and the exact maximum is kept aside).
#[derive(Debug, Clone)]
pub(crate) struct Hist {
    counts: Vec<u64>,
    n: u64,
    max_us: u64,
}

/// Buckets of [`Hist`] (1 µs each).
const HIST_BUCKETS: usize = 1 << 20;

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl Hist {
    /// An empty histogram.
    pub(crate) fn new() -> Hist {
        Hist {
            counts: vec![0; HIST_BUCKETS],
            n: 0,
            max_us: 0,
        }
    }

    /// Records one value in microseconds.
    #[inline]
    pub(crate) fn record(&mut self, us: u64) {
        self.record_n(us, 1);
    }

    /// Records `n` equal values.
    pub(crate) fn record_n(&mut self, us: u64, n: u64) {
        let i = usize::try_from(us)
            .unwrap_or(usize::MAX)
            .min(HIST_BUCKETS - 1);
        self.counts[i] += n;
        self.n += n;
        self.max_us = self.max_us.max(us);
    }

    /// How many values were recorded.
    pub(crate) fn len(&self) -> u64 {
        self.n
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return if i == HIST_BUCKETS - 1 {
                    self.max_us
                } else {
                    i as u64
                };
            }
        }
        self.max_us
    }

    /// The largest value recorded.
    pub(crate) fn max(&self) -> u64 {
        self.max_us
    }

    /// The non-empty buckets as `[value_us, count]` pairs (to send between processes).
    pub(crate) fn to_sparse(&self) -> Vec<[u64; 2]> {
        let mut v: Vec<[u64; 2]> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| [i as u64, c])
            .collect();
        // Keep the exact maximum for the overflow bucket.
        if let Some(last) = v.last_mut() {
            if last[0] == (HIST_BUCKETS - 1) as u64 {
                last[0] = self.max_us;
            }
        }
        v
    }

    /// Adds sparse pairs from [`Hist::to_sparse`].
    pub(crate) fn add_sparse(&mut self, pairs: &[[u64; 2]]) {
        for p in pairs {
            self.record_n(p[0], p[1]);
        }
    }
}

/// `--name value` options after the subcommand.
#[derive(Debug, Clone, Default)]
pub(crate) struct Opts {
    map: HashMap<String, String>,
}

impl Opts {
    /// Parses `--name value` pairs (and bare `--flag`, which reads as `true`).
    pub(crate) fn parse(args: &[String]) -> Res<Opts> {
        let mut map = HashMap::new();
        let mut i = 0;
        while i < args.len() {
            let Some(name) = args[i].strip_prefix("--") else {
                return Err(err(format!("unexpected argument {:?}", args[i])));
            };
            if let Some((k, v)) = name.split_once('=') {
                map.insert(k.to_owned(), v.to_owned());
                i += 1;
            } else if i + 1 < args.len() && !args[i + 1].starts_with("--") {
                map.insert(name.to_owned(), args[i + 1].clone());
                i += 2;
            } else {
                map.insert(name.to_owned(), "true".to_owned());
                i += 1;
            }
        }
        Ok(Opts { map })
    }

    /// These options, overridden by `other`'s.
    pub(crate) fn merged(mut self, other: &Opts) -> Opts {
        self.map
            .extend(other.map.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// The raw value of an option.
    pub(crate) fn str(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// The value of an option parsed as `T`, or `default`.
    pub(crate) fn get<T: FromStr>(&self, name: &str, default: T) -> Res<T> {
        match self.map.get(name) {
            None => Ok(default),
            Some(v) => v
                .replace('_', "")
                .parse()
                .map_err(|_| err(format!("bad value for --{name}: {v:?}"))),
        }
    }

    /// A comma-separated list option.
    pub(crate) fn list(&self, name: &str, default: &str) -> Vec<String> {
        self.str(name)
            .unwrap_or(default)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Memory of a process from `/proc/<pid>/status`: (VmRSS, VmHWM) in KiB.
pub(crate) fn proc_mem(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat`.
pub(crate) fn proc_cpu(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = text.rfind(')').map(|i| &text[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name and state.
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 if unknown.
fn clock_ticks() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The median of some values (the mean of the middle two for an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hist_quantiles() {
        let mut h = Hist::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        h.record(5_000_000);
        assert_eq!(h.max(), 5_000_000);
        let mut g = Hist::new();
        g.add_sparse(&h.to_sparse());
        assert_eq!(g.len(), 101);
        assert_eq!(g.max(), 5_000_000);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
