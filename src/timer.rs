//! Sleeps that end within tens of microseconds of their deadline.
//!
//! tokio's timer wheel has millisecond slots and rounds up, so a 1 ms delay lands anywhere up
//! to 1 ms late: fine for timeouts, not for a latency toxic that promises "1 ms". Busy-waiting
//! the last millisecond would be exact but burns a core per delayed chunk.
//!
//! So a sleep has two legs: tokio's wheel for everything but the last [`COARSE_MARGIN`], then
//! one dedicated thread that keeps the pending deadlines in order. It parks with a timeout (a futex wait;
//! the thread's timer slack is set to 1 µs, as Linux's default 50 µs would be most of the
//! error budget), spins the rest, and completes a oneshot, which wakes the task.
//!
//! Two latencies sit between "the deadline passed" and "the task runs", and on a machine whose
//! cores doze between events they are long (100 µs and more on a virtual machine): the timer
//! thread's own wake-up from its park, and the hand-off to the tokio worker. Both are measured
//! as the timer runs (moving averages), and the thread plans around them: it parks until
//! `oversleep + SPIN` before it must fire, and fires `hand-off` before the deadline; the task,
//! if it runs early, spins the few microseconds left. A run of equal deadlines (100
//! connections behind one constant `latency` toxic) is sent one wake-up after another, so the
//! thread also measures what a wake-up costs it and starts such a run that much earlier per
//! entry. Each lead is capped at [`MAX_LEAD`], so the CPU spent spinning stays bounded. The
//! thread costs nothing while no sleep is pending.

use std::collections::BTreeMap;
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

/// Moving average, in nanoseconds, of what one wake-up costs the timer thread (completing a
/// oneshot whose task sits on a tokio worker): a batch of n sleeps takes about n times this to
/// send, so the thread starts that much earlier.
static WAKE_NS: AtomicU64 = AtomicU64::new(0);

/// The newest batch whose hand-off was sampled (see [`sleep_until`]).
static SAMPLED_BATCH: AtomicU64 = AtomicU64::new(0);

/// What the timer thread sends a due sleep: when it fired, and which pass fired it.
struct Fired {
    at: std::time::Instant,
    batch: u64,
}

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
    if let Ok(Fired { at: fired, batch }) = rx.await {
        let now = std::time::Instant::now();
        // Only the first sleep of a batch to resume measures the hand-off: the others also
        // waited behind it (and behind its spin below), and counting that wait fed back into
        // an ever earlier fire time, up to MAX_LEAD, for a burst of equal deadlines.
        if SAMPLED_BATCH.fetch_max(batch, Ordering::Relaxed) < batch {
            observe(&HANDOFF_NS, now.saturating_duration_since(fired));
        }
        // Fired early by the expected hand-off: spin what is left (at most MAX_LEAD).
        let deadline = deadline.into_std();
        while std::time::Instant::now() < deadline {
            std::hint::spin_loop();
        }
    }
}

/// The pending deadlines and the thread that serves them.
struct Timer {
    pending: Mutex<Pending>,
    thread: std::thread::Thread,
}

/// Pending deadlines in order (the sequence number keeps equal deadlines apart): the thread
/// reads the front run of them to plan a batch, which a binary heap cannot show it.
#[derive(Default)]
struct Pending {
    entries: BTreeMap<(std::time::Instant, u64), oneshot::Sender<Fired>>,
    seq: u64,
}

impl Timer {
    /// Adds a deadline. The thread is woken only when the new deadline is the earliest: a
    /// stream of later deadlines (a busy delayed connection) costs no wake-ups.
    fn register(&self, at: std::time::Instant, tx: oneshot::Sender<Fired>) {
        let earliest = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.seq += 1;
            let seq = pending.seq;
            let before = pending.entries.first_key_value().map(|(&(at, _), _)| at);
            pending.entries.insert((at, seq), tx);
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
                Ok(handle) => Some(Timer { pending: Mutex::default(), thread: handle.thread().clone() }),
                Err(err) => {
                    tracing::warn!(%err, "cannot start the precise timer thread; delays fall back to 1 ms resolution");
                    None
                }
            }
        })
        .as_ref()
}

/// How early the timer thread sends a sleep's wake-up, read once per pass.
#[derive(Clone, Copy)]
struct Lead {
    /// From the send to the task running (measured).
    handoff: Duration,
    /// What each send costs the thread (measured).
    per_wake: Duration,
}

/// What the thread does in one pass: send the first `due` entries now, then be ready to
/// start the next batch at `start_next`.
struct Plan {
    due: usize,
    start_next: Option<std::time::Instant>,
}

/// The most entries one plan looks at: with a wake-up costing about 1 µs, more than this many
/// equal deadlines cannot all be sent within [`MAX_LEAD`] anyway.
const PLAN_SCAN: usize = 512;

impl Lead {
    fn now() -> Self {
        Self {
            handoff: lead(&HANDOFF_NS),
            per_wake: lead(&WAKE_NS),
        }
    }

    /// Entry i of a run of close deadlines is sent i wake-ups after the first, so the run
    /// must start by the earliest of `at_i - handoff - i * per_wake`; without this, the last of
    /// 100 sleeps sharing a deadline was woken 100 wake-ups late. Entries due by then are sent
    /// now, in order; the lead is capped at [`MAX_LEAD`], which bounds the spin in the task.
    fn plan<V>(
        self,
        entries: &BTreeMap<(std::time::Instant, u64), V>,
        now: std::time::Instant,
    ) -> Plan {
        let mut due = 0;
        let mut start = None::<std::time::Instant>;
        let mut front = None;
        for (i, &(at, _)) in entries.keys().take(PLAN_SCAN).enumerate() {
            let first = *front.get_or_insert(at);
            // The lead is capped, so later entries cannot need an earlier start.
            if at > first + MAX_LEAD {
                break;
            }
            let ahead = (self.handoff + self.per_wake * i as u32).min(MAX_LEAD);
            let must_start = at.checked_sub(ahead).unwrap_or(at);
            if must_start <= now {
                // This one must go now, and so must every one before it.
                due = i + 1;
            }
            start = Some(start.map_or(must_start, |s| s.min(must_start)));
        }
        // After sending, the thread plans again at once for whatever is left.
        let start_next = if due > 0 {
            (entries.len() > due).then_some(now)
        } else {
            start
        };
        Plan { due, start_next }
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
    let mut batch = 0u64;
    loop {
        let leads = Lead::now();
        let next = {
            let mut pending = timer.pending.lock().unwrap_or_else(|e| e.into_inner());
            let plan = leads.plan(&pending.entries, std::time::Instant::now());
            for _ in 0..plan.due {
                if let Some((_, tx)) = pending.entries.pop_first() {
                    due.push(tx);
                }
            }
            plan.start_next
        };
        // Outside the lock: a dropped receiver (an abandoned sleep) is fine.
        if !due.is_empty() {
            batch += 1;
            let n = due.len() as u32;
            let at = std::time::Instant::now();
            for tx in due.drain(..) {
                let _ = tx.send(Fired { at, batch });
            }
            if n > 1 {
                observe(&WAKE_NS, at.elapsed() / n);
            }
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

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn entries(ats: &[std::time::Instant]) -> BTreeMap<(std::time::Instant, u64), ()> {
        ats.iter()
            .enumerate()
            .map(|(i, &at)| ((at, i as u64), ()))
            .collect()
    }

    #[test]
    fn a_run_of_equal_deadlines_starts_one_wake_up_earlier_per_entry() {
        let t = std::time::Instant::now() + Duration::from_secs(1);
        let lead = Lead {
            handoff: us(10),
            per_wake: us(1),
        };
        let run = entries(&[t; 100]);
        // The 100th is sent 99 wake-ups after the first: the run starts 10 + 99 µs early.
        let early = lead.plan(&run, t - us(200));
        assert_eq!(early.due, 0);
        assert_eq!(early.start_next, Some(t - us(109)));
        // At that instant the whole run goes, and nothing is left to plan.
        let on_time = lead.plan(&run, t - us(109));
        assert_eq!(on_time.due, 100);
        assert_eq!(on_time.start_next, None);
    }

    #[test]
    fn the_lead_is_capped_and_far_deadlines_wait_their_turn() {
        let t = std::time::Instant::now() + Duration::from_secs(1);
        let lead = Lead {
            handoff: us(10),
            per_wake: us(5),
        };
        // 1,000 sharing a deadline would want 5 ms of lead; the spin is bounded instead.
        let plan = lead.plan(&entries(&[t; 1000]), t - Duration::from_secs(1) + us(1));
        assert_eq!(plan.start_next, Some(t - MAX_LEAD));
        // Two deadlines 1 ms apart: the first goes alone, then the thread plans again at once.
        let now = t - us(10);
        let plan = lead.plan(&entries(&[t, t + Duration::from_millis(1)]), now);
        assert_eq!(plan.due, 1);
        assert_eq!(plan.start_next, Some(now));
        let plan = lead.plan(&entries(&[]), now);
        assert_eq!((plan.due, plan.start_next), (0, None));
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "diagnostic: prints how late 100 tasks sharing one deadline wake"]
    async fn equal_deadline_burst() {
        for round in 0..10 {
            let deadline = Instant::now() + Duration::from_millis(10);
            let tasks: Vec<_> = (0..100)
                .map(|_| {
                    tokio::spawn(async move {
                        sleep_until(deadline).await;
                        (Instant::now() - deadline).as_micros()
                    })
                })
                .collect();
            let mut late = Vec::new();
            for t in tasks {
                late.push(t.await.unwrap());
            }
            late.sort();
            println!(
                "round {round}: min {}us p50 {}us max {}us; handoff {:?}, per wake {:?}",
                late[0],
                late[50],
                late[99],
                lead(&HANDOFF_NS),
                lead(&WAKE_NS)
            );
        }
    }
}
