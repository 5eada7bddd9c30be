//! The data plane: TCP connections run on one single-threaded runtime per thread, each with its
//! own epoll, instead of on the work-stealing runtime that serves the admin API.
//!
//! Why: on the shared runtime every readiness event goes through one I/O driver, which a
//! worker polls only when its run queue is empty, and the other worker is woken to steal half
//! of what it found. A connection's bytes then wait behind other connections' work on a queue,
//! and that wait is the tail. With a runtime per thread, a connection lives on one thread from
//! accept to close, as in haproxy: measured with wrk at 64 connections on 2 cores, p99 went
//! from 1.1-1.6x haproxy's to 1.0x (docs/performance.md, "A runtime per thread").
//!
//! A proxy's accept loop runs on one data thread and deals connections to the threads in turn
//! (see `listener`); one dealt elsewhere moves between the two epolls (one `epoll_ctl` each
//! way).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The most data-plane threads `--threads` and `[server] threads` accept.
pub const MAX_THREADS: usize = 256;

/// The data-plane threads. Dropping the last reference stops them; the connections still on
/// them are dropped with their runtime (closing their sockets).
pub struct DataPlane {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Cancelled on drop, which ends every thread's `block_on`.
    _stop: DropGuard,
}

impl DataPlane {
    /// Starts `threads` threads (at least one), each running a single-threaded runtime.
    pub fn start(threads: usize) -> io::Result<Arc<DataPlane>> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let until = stop.clone().cancelled_owned();
            let spawned = std::thread::Builder::new()
                .name(format!("fallacy-data-{i}"))
                .spawn(move || runtime.block_on(until));
            if let Err(err) = spawned {
                // The threads already started would otherwise wait forever.
                stop.cancel();
                return Err(err);
            }
        }
        Ok(Arc::new(DataPlane {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop.drop_guard(),
        }))
    }

    /// How many threads there are.
    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    /// The thread the next connection (or accept loop) goes to: round robin, so each thread
    /// gets an equal share of connections (as haproxy spreads them over its threads).
    pub(crate) fn next(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// Every thread's runtime, in order.
    pub(crate) fn runtimes(&self) -> &[Handle] {
        &self.handles
    }

    /// Tasks alive on all the threads (connections and what they spawned).
    pub fn tasks_alive(&self) -> usize {
        self.handles
            .iter()
            .map(|h| h.metrics().num_alive_tasks())
            .sum()
    }
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("threads", &self.threads())
            .finish()
    }
}

/// The default thread count: one per CPU this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_work_over_every_thread_and_stops_when_dropped() {
        let plane = DataPlane::start(3).unwrap();
        assert_eq!(plane.threads(), 3);
        let names: Vec<String> = (0..6)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                plane.runtimes()[plane.next()].spawn(async move {
                    let _ = tx.send(std::thread::current().name().unwrap_or("").to_owned());
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(
            names,
            [0, 1, 2, 0, 1, 2].map(|i| format!("fallacy-data-{i}"))
        );
        let handle = plane.runtimes()[plane.next()].clone();
        drop(plane);
        // The runtime shuts down once its thread returns; spawning then fails.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            drop(handle.spawn(async move {
                let _ = tx.send(());
            }));
            if rx
                .recv_timeout(std::time::Duration::from_millis(100))
                .is_err()
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the thread did not stop"
            );
        }
    }
}
