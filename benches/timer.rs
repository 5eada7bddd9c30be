//! The precise timer behind every delay: how late `fallacy::timer::sleep_until` wakes a task
//! past its deadline, for one sleep at a time and for 100 at once, against tokio's own
//! `sleep_until` measured in the same run.
//!
//! `cargo bench --bench timer`. The figure criterion reports as "time" is the mean lateness per
//! sleep (wake-up minus deadline), not the sleep itself.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::time::Instant;

/// Total lateness of `iters` sleeps of `delay`, `concurrent` at a time.
async fn lateness(delay: Duration, concurrent: usize, iters: u64, precise: bool) -> Duration {
    let mut late = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        let deadline = Instant::now() + delay;
        let wakes = futures_util::future::join_all((0..concurrent).map(|_| async move {
            if precise {
                fallacy::timer::sleep_until(deadline).await;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
            Instant::now().saturating_duration_since(deadline)
        }))
        .await;
        for w in wakes {
            late += w;
        }
        done += concurrent as u64;
    }
    // Per sleep, scaled back to what criterion counts as iterations.
    late * iters as u32 / done as u32
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let mut group = c.benchmark_group("timer_lateness");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    for (label, delay, concurrent) in [
        ("1ms", Duration::from_millis(1), 1),
        ("10ms", Duration::from_millis(10), 1),
        ("10ms_x100", Duration::from_millis(10), 100),
    ] {
        for (who, precise) in [("fallacy", true), ("tokio", false)] {
            group.bench_function(format!("{who}/{label}"), |b| {
                b.iter_custom(|iters| rt.block_on(lateness(delay, concurrent, iters, precise)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
