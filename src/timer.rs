//! Sleeps that end within tens of microseconds of their deadline.
//!
//! tokio's timer wheel has millisecond slots and rounds up, so a 1 ms delay lands anywhere up
//! to 1 ms late: fine for timeouts, not for a latency toxic that promises "1 ms". Busy-waiting
//! the last millisecond would be exact but burns a core per delayed chunk.
//!
//! So a sleep has two legs: tokio's wheel for everything but the last [`COARSE_MARGIN`], then
//! one dedicated thread that keeps a heap of deadlines. It parks with a timeout (a futex wait;
//! the thread's timer slack is set to 1 µs, as Linux's default 50 µs would be most of the
//! error budget), spins the rest, and completes a oneshot, which wakes the task.
//!
//! Two latencies sit between "the deadline passed" and "the task runs", and on a machine whose
//! cores doze between events they are long (100 µs and more on a virtual machine): the timer
//! thread's own wake-up from its park, and the hand-off to the tokio worker. Both are measured
//! as the timer runs (moving averages), and the thread plans around them: it parks until
//! `oversleep + SPIN` before it must fire, and fires `hand-off` before the deadline; the task,
//! if it runs early, spins the few microseconds left. Each lead is capped at [`MAX_LEAD`], so
//! the CPU spent spinning stays bounded. The thread costs nothing while no sleep is pending.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// What tokio's wheel may be trusted with: it rounds up to its 1 ms slots and its driver may
/// run a little late on a busy machine, so it is asked to wake this much before the real
/// deadline (1.5 ms measured noticeably worse tails than 3 ms on a shared 2-core machine).
pub const COARSE_MARGIN: Duration = Duration::from_millis(3);

/// Spin margin on top of the measured oversleep: covers the futex wake-up jitter.
pub const SPIN: Duration = Duration::from_micros(20);

/// The most either measured lead may be, whatever is measured: bounds the spinning.
pub const MAX_LEAD: Duration = Duration::from_micros(300);

/// Moving averages, in nanoseconds, of how late the timer thread wakes from a timed park, and
/// of how long a fired sleep takes to resume its task.
static OVERSLEEP_NS: AtomicU64 = AtomicU64::new(0);
static HANDOFF_NS: AtomicU64 = AtomicU64::new(0);

/// Folds a sample into a moving average (weight 1/8); a lost race between updates only loses
/// one sample.
fn observe(avg: &AtomicU64, sample: Duration) {
    let sample = sample.min(MAX_LEAD).as_nanos() as u64;
    let old = avg.load(Ordering::Relaxed);
    avg.store(old - old / 8 + sample / 8, Ordering::Relaxed);
}

fn lead(avg: &AtomicU64) -> Duration {
    Duration::from_nanos(avg.load(Ordering::Relaxed)).min(MAX_LEAD)
}

/// Waits until `deadline`, to within tens of microseconds. Cancel-safe: dropping the future
/// abandons the wait (the timer thread finds the receiver gone and moves on).
pub async fn sleep_until(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(COARSE_MARGIN) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse).await;
        }
    }
    if Instant::now() >= deadline {
        return;
    }
    let (tx, rx) = oneshot::channel();
    match timer() {
        Some(timer) => timer.register(deadline.into_std(), tx),
        // No timer thread could be started: fall back to the wheel.
        None => return tokio::time::sleep_until(deadline).await,
    }
    if let Ok(fired) = rx.await {
        let now = std::time::Instant::now();
        observe(&HANDOFF_NS, now.saturating_duration_since(fired));
        // Fired early by the expected hand-off: spin what is left (at most MAX_LEAD).
        let deadline = deadline.into_std();
        while std::time::Instant::now() < deadline {
            std::hint::spin_loop();
        }
    }
}

/// The heap of pending deadlines and the thread that serves it.
struct Timer {
    heap: Mutex<Heap>,
    thread: std::thread::Thread,
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl Timer {
    /// Adds a deadline. The thread is woken only when the new deadline is the earliest: a
    /// stream of later deadlines (a busy delayed connection) costs no wake-ups.
    fn register(&self, at: std::time::Instant, tx: oneshot::Sender<std::time::Instant>) {
        let earliest = {
            let mut heap = self.heap.lock().unwrap_or_else(|e| e.into_inner());
            heap.seq += 1;
            let seq = heap.seq;
            let before = heap.entries.peek().map(|Reverse(e)| e.at);
            heap.entries.push(Reverse(Entry { at, seq, tx }));
            before.is_none_or(|b| at < b)
        };
        if earliest {
            self.thread.unpark();
        }
    }
}

static TIMER_CELL: OnceLock<Option<Timer>> = OnceLock::new();

fn timer() -> Option<&'static Timer> {
    TIMER_CELL
        .get_or_init(|| {
            let spawned = std::thread::Builder::new().name("fallacy-timer".into()).spawn(run);
            match spawned {
                Ok(handle) => Some(Timer { heap: Mutex::default(), thread: handle.thread().clone() }),
                Err(err) => {
                    tracing::warn!(%err, "cannot start the precise timer thread; delays fall back to 1 ms resolution");
                    None
                }
            }
        })
        .as_ref()
}

/// A pending wake-up, ordered by deadline, then by arrival.
struct Entry {
    at: std::time::Instant,
    seq: u64,
    tx: oneshot::Sender<std::time::Instant>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

fn run() {
    #[cfg(target_os = "linux")]
    if let Err(err) = nix::sys::prctl::set_timerslack(1_000) {
        tracing::debug!(%err, "cannot cut the timer slack; delays may land ~50 µs later");
    }
    // The Timer is published right after this thread starts; wait for it.
    let timer = loop {
        if let Some(Some(timer)) = timer_if_ready() {
            break timer;
        }
        std::thread::park_timeout(Duration::from_millis(1));
    };
    let mut due = Vec::new();
    loop {
        let handoff = lead(&HANDOFF_NS);
        let next = {
            let mut heap = timer.heap.lock().unwrap_or_else(|e| e.into_inner());
            // Fire each entry `handoff` early, so its task runs on time.
            let fire_by = std::time::Instant::now() + handoff;
            while heap
                .entries
                .peek()
                .is_some_and(|Reverse(e)| e.at <= fire_by)
            {
                if let Some(Reverse(entry)) = heap.entries.pop() {
                    due.push(entry.tx);
                }
            }
            heap.entries
                .peek()
                .map(|Reverse(e)| e.at.checked_sub(handoff).unwrap_or(e.at))
        };
        // Outside the lock: a dropped receiver (an abandoned sleep) is fine.
        let fired = std::time::Instant::now();
        for tx in due.drain(..) {
            let _ = tx.send(fired);
        }
        match next {
            None => std::thread::park(),
            Some(fire_at) => {
                let margin = lead(&OVERSLEEP_NS) + SPIN;
                let now = std::time::Instant::now();
                if fire_at.saturating_duration_since(now) > margin {
                    let wake_at = fire_at - margin;
                    // Woken early by a new earliest deadline, or by the timeout.
                    std::thread::park_timeout(wake_at - now);
                    let woke = std::time::Instant::now();
                    if woke >= wake_at {
                        observe(&OVERSLEEP_NS, woke - wake_at);
                    }
                } else {
                    // Close enough: spin to it rather than risk a late wake-up.
                    while std::time::Instant::now() < fire_at {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }
}

fn timer_if_ready() -> Option<&'static Option<Timer>> {
    TIMER_CELL.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_land_just_after_their_deadline() {
        let mut late = Vec::new();
        for micros in [200u64, 1_000, 1_700, 3_300, 10_000] {
            for _ in 0..5 {
                let deadline = Instant::now() + Duration::from_micros(micros);
                sleep_until(deadline).await;
                let now = Instant::now();
                assert!(now >= deadline, "woke {:?} early", deadline - now);
                late.push(now - deadline);
            }
        }
        late.sort();
        // Generous for a shared CI machine; bench/fidelity measures the real figure.
        let median = late[late.len() / 2];
        assert!(
            median < Duration::from_micros(500),
            "median lateness {median:?}: {late:?}"
        );
    }

    #[tokio::test]
    async fn many_concurrent_sleeps_all_complete_in_order_of_deadline() {
        let start = Instant::now();
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let deadline = start + Duration::from_micros(500 + (i * 37) % 3000);
                tokio::spawn(async move {
                    sleep_until(deadline).await;
                    Instant::now() >= deadline
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
    }

    #[tokio::test]
    async fn dropping_a_sleep_is_fine() {
        let deadline = Instant::now() + Duration::from_micros(800);
        let _ = tokio::time::timeout(Duration::from_micros(100), sleep_until(deadline)).await;
        sleep_until(Instant::now() + Duration::from_micros(300)).await;
    }
}

#[cfg(test)]
mod diag {
    use super::*;

    #[tokio::test]
    #[ignore = "diagnostic: prints lateness percentiles"]
    async fn lateness_percentiles() {
        for micros in [1_000u64, 10_000, 100_000] {
            let mut late = Vec::new();
            let n = if micros >= 100_000 { 30 } else { 300 };
            for _ in 0..n {
                let deadline = Instant::now() + Duration::from_micros(micros);
                sleep_until(deadline).await;
                late.push((Instant::now() - deadline).as_micros());
            }
            late.sort();
            println!(
                "{micros}us: p50 {}us p99 {}us max {}us",
                late[n / 2],
                late[n * 99 / 100],
                late[n - 1]
            );
        }
    }
}
