//! Memory a run needs against memory the machine gives it, so a size that cannot fit is refused with one
//! line before any work, instead of the process aborting on an allocation mid-run.
//!
//! Two lines of defence: the plan's buffer sizes are known before anything is allocated
//! ([`crate::graph::Executor::memory_need`]) and checked against [`available`]; and the large buffers are
//! allocated fallibly ([`zeroed`]), so an estimate that is off still ends in an error, never an abort.

use crate::error::{Error, Result};

/// The memory this process may still take, and what limits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    /// Bytes.
    pub bytes: u64,
    /// Where the figure comes from, in words.
    pub source: &'static str,
}

/// The smallest of what Linux reports as available: `MemAvailable` in `/proc/meminfo`, the
/// address-space limit (`ulimit -v`, `setrlimit(RLIMIT_AS)`) less the address space already mapped, and
/// the cgroup's `memory.max` less its `memory.current`. `None` where none of them can be read.
pub fn available() -> Option<Available> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let free = meminfo
        .as_deref()
        .and_then(|t| kib_field(t, "MemAvailable:"))
        .map(|bytes| Available {
            bytes,
            source: "MemAvailable in /proc/meminfo",
        });
    let address_space = address_space_left().map(|bytes| Available {
        bytes,
        source: "under this process's address-space limit (ulimit -v)",
    });
    let cgroup = cgroup_left().map(|bytes| Available {
        bytes,
        source: "under the cgroup's memory.max",
    });
    [free, address_space, cgroup]
        .into_iter()
        .flatten()
        .min_by_key(|a| a.bytes)
}

/// A `kB` field of `/proc/meminfo` or `/proc/self/status`, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The soft address-space limit less the process's mapped address space (`VmSize`).
fn address_space_left() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    let soft: u64 = line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mapped = kib_field(&status, "VmSize:")?;
    Some(soft.saturating_sub(mapped))
}

/// The cgroup (v2) limit less its current use, when a limit is set.
fn cgroup_left() -> Option<u64> {
    let max: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let current: u64 = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(current))
}

/// `bytes` in GiB, for messages: one decimal, or two below 1 GiB.
pub fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g < 1.0 {
        format!("{g:.2} GiB")
    } else {
        format!("{g:.1} GiB")
    }
}

/// What a planned run allocates, in bytes, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Activations, max-pool argmaxes and dropout masks, softmax probabilities.
    pub activations: u64,
    /// Activation gradients and parameter gradients (training only).
    pub gradients: u64,
    /// The ops' scratch.
    pub workspace: u64,
    /// Parameters, their packed and transformed copies, and the optimizer's state.
    pub parameters: u64,
    /// Batches of input images held at once (the loader's queue, evaluation's batch).
    pub inputs: u64,
}

/// What a run allocates beyond its planned buffers, at most: the ops' own temporaries, the threads'
/// stacks and allocator arenas (which count against an address-space limit). 256 MiB and 5% of the
/// planned buffers: under `ulimit -v`, googlenet-d2l's eval at the largest batch the plan alone fitted
/// aborted on a 0.6 MB allocation, and measured peak RSS sits 100-300 MiB above the plan (inception-v3
/// inference, googlenet-d2l training); the per-image part matches within 1% (inception-v3 inference
/// 84.4 MiB per image planned, 84.3 MiB measured between batch 8 and 64; googlenet-d2l training 7.65
/// against 7.62, between 32 and 256).
pub fn unplanned(planned: u64) -> u64 {
    (256u64 << 20).saturating_add(planned / 20)
}

impl MemoryNeed {
    /// The planned buffers.
    pub fn planned(&self) -> u64 {
        self.activations
            .saturating_add(self.gradients)
            .saturating_add(self.workspace)
            .saturating_add(self.parameters)
            .saturating_add(self.inputs)
    }

    /// All of it: the planned buffers and what the run allocates beyond them ([`unplanned`]).
    pub fn total(&self) -> u64 {
        let planned = self.planned();
        planned.saturating_add(unplanned(planned))
    }

    /// The kinds it is for, in words ("activations and gradients" for a training run).
    pub fn what(&self) -> &'static str {
        if self.gradients > 0 {
            "activations and gradients"
        } else {
            "activations"
        }
    }
}

/// Checks that a run of `batch` images fits: `need(b)` is what the run needs at batch `b`. `what`
/// describes the run for the message ("batch 128 at 96x96"), `hint` turns the largest batch that fits
/// into advice ("try --batch 24"), or says what to change when not even one image fits (`None`). An
/// error naming the need, what is available and that advice when it does not fit.
pub fn check_batch(
    batch: usize,
    what: &str,
    need: impl Fn(usize) -> Result<MemoryNeed>,
    hint: impl Fn(Option<usize>) -> String,
) -> Result<()> {
    match available() {
        Some(available) => check_batch_within(available, batch, what, need, hint),
        None => Ok(()),
    }
}

/// [`check_batch`] against `available`.
fn check_batch_within(
    available: Available,
    batch: usize,
    what: &str,
    need: impl Fn(usize) -> Result<MemoryNeed>,
    hint: impl Fn(Option<usize>) -> String,
) -> Result<()> {
    let needed = need(batch)?;
    if needed.total() <= available.bytes {
        return Ok(());
    }
    // The batch suggested leaves room for what the process maps before the run checks again (its
    // worker threads' stacks and allocator arenas: a suggestion made without it was refused by the
    // run's own check, 0.1 GiB later).
    let for_suggestion = Available {
        bytes: available.bytes.saturating_sub(SUGGESTION_SPARE),
        ..available
    };
    let advice = match largest_batch_within(for_suggestion, batch, &need)? {
        Some(fits) => hint(Some(fits)),
        None => format!("even one image needs {}; {}", gib(need(1)?.total()), hint(None)),
    };
    Err(Error::Memory {
        reason: format!(
            "{what} needs {} for {}; {} are available ({}); {advice}",
            gib(needed.total()),
            needed.what(),
            gib(available.bytes),
            available.source
        ),
    })
}

/// What a suggested batch leaves spare of the memory available: 256 MiB.
const SUGGESTION_SPARE: u64 = 256 << 20;

/// The largest batch up to `batch` whose `need` fits in the memory available less the spare a
/// suggestion leaves ([`SUGGESTION_SPARE`]: the run checks again after the process has mapped more),
/// `batch` itself when nothing says how much is available, `None` when not even one image fits.
pub fn largest_batch(batch: usize, need: impl Fn(usize) -> Result<MemoryNeed>) -> Result<Option<usize>> {
    match available() {
        Some(available) => {
            let spared = Available {
                bytes: available.bytes.saturating_sub(SUGGESTION_SPARE),
                ..available
            };
            largest_batch_within(spared, batch, &need)
        }
        None => Ok(Some(batch)),
    }
}

/// [`largest_batch`] within `available`: the need grows with the batch, so by bisection.
fn largest_batch_within(
    available: Available,
    batch: usize,
    need: &impl Fn(usize) -> Result<MemoryNeed>,
) -> Result<Option<usize>> {
    let fits = |b: usize| -> Result<bool> { Ok(need(b)?.total() <= available.bytes) };
    if fits(batch)? {
        return Ok(Some(batch));
    }
    if batch <= 1 || !fits(1)? {
        return Ok(None);
    }
    let (mut fitting, mut too_big) = (1, batch);
    while too_big - fitting > 1 {
        let mid = fitting + (too_big - fitting) / 2;
        if fits(mid)? {
            fitting = mid;
        } else {
            too_big = mid;
        }
    }
    Ok(Some(fitting))
}

/// Values whose all-zero bytes are zero: what [`zeroed`] may allocate.
pub trait ZeroBits: Copy {}
impl ZeroBits for f32 {}
impl ZeroBits for f64 {}
impl ZeroBits for u32 {}
impl ZeroBits for u8 {}

/// `len` zeros, allocated fallibly: an error naming `what` and the size when the allocator refuses,
/// instead of an abort. Zeroed by the allocator (`calloc`), so pages are only touched when written, as
/// with `vec![0.0; len]`.
pub fn zeroed<T: ZeroBits>(len: usize, what: &str) -> Result<Vec<T>> {
    let refused = || Error::Memory {
        reason: format!(
            "{what}: could not allocate {} ({len} values)",
            gib((len as u64).saturating_mul(std::mem::size_of::<T>() as u64))
        ),
    };
    if len == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(len).map_err(|_| refused())?;
    // SAFETY: the layout's size is not zero (len > 0 and T is not zero-sized), as alloc_zeroed requires.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(refused());
    }
    // SAFETY: `ptr` comes from the global allocator with T's alignment and the size of `len` Ts (the
    // layout Vec would use for capacity `len`), and all `len` values are initialized: zero bytes are a
    // valid T (the ZeroBits promise).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_is_zero_and_refuses_what_cannot_exist() {
        let v: Vec<f32> = zeroed(1000, "test").unwrap();
        assert!(v.len() == 1000 && v.iter().all(|&x| x == 0.0));
        let err = zeroed::<f32>(usize::MAX / 2, "huge buffer").unwrap_err().to_string();
        assert!(
            err.contains("huge buffer") && err.contains("could not allocate"),
            "{err}"
        );
    }

    #[test]
    fn available_memory_is_read_on_linux() {
        let a = available().expect("Linux reports MemAvailable");
        assert!(a.bytes > 0, "{a:?}");
    }

    #[test]
    fn the_largest_batch_that_fits_is_suggested() {
        let available = Available {
            bytes: 10 << 30,
            source: "a test's",
        };
        // 1 MiB fixed plus 10 MiB per image.
        let need = |b: usize| {
            Ok(MemoryNeed {
                activations: (1 << 20) + (10 << 20) * b as u64,
                ..MemoryNeed::default()
            })
        };
        let hint = |k: Option<usize>| match k {
            Some(k) => format!("try --batch {k}"),
            None => "try a smaller size".to_string(),
        };
        let err = check_batch_within(available, 5000, "batch 5000", need, hint)
            .unwrap_err()
            .to_string();
        // With the unplanned 256 MiB + 5%: 1 + 10 b MiB + 256 + (1 + 10 b) / 20 <= 10240 for b <= 950,
        // and the suggestion's spare 256 MiB, <= 9984 for b <= 926.
        assert_eq!(
            err,
            "batch 5000 needs 51.5 GiB for activations; 10.0 GiB are available (a test's); try --batch 926"
        );
        assert!(check_batch_within(available, 950, "batch 950", need, hint).is_ok());
        assert!(check_batch_within(available, 951, "batch 951", need, hint).is_err());
        let err = check_batch_within(available, 2, "batch 2", |b| need(b * 2000), hint)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("even one image needs 20.8 GiB; try a smaller size"),
            "{err}"
        );
    }
}
