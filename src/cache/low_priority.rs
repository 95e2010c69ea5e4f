//! Threads for background CPU work (checksumming whole objects) that run at a lower scheduling
//! priority for their whole life.
//!
//! Lowering a thread's priority can only be undone with CAP_SYS_NICE, so a shared pool thread
//! (tokio's blocking pool) that was lowered for one job would stay low for the reads and cache
//! writes it runs next in a daemon without that capability. These threads are lowered once, when
//! they start, and never do anything else.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// The `nice` value the pool's threads run at: reads that jobs wait on go first.
pub const NICE: libc::c_int = 10;

/// A few threads at [`NICE`] that run jobs in the order they come.
pub struct LowPriorityPool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl LowPriorityPool {
    /// Starts `threads` threads named `name`; they end once the pool is dropped.
    pub fn start(name: &str, threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(name.to_string()).spawn(move || {
                // SAFETY: a plain syscall on the calling thread's own id. Failure (a seccomp
                // filter, say) only leaves the thread at normal priority.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE);
                }
                loop {
                    let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                }
            })?;
        }
        Ok(Self { jobs: Mutex::new(Some(tx)) })
    }

    /// Queues `work` for one of the pool's threads, without waiting for it (dropped if the
    /// pool is gone).
    pub fn submit(&self, work: impl FnOnce() + Send + 'static) {
        if let Some(jobs) = self.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = jobs.send(Box::new(work));
        }
    }

    /// Runs `work` on one of the pool's threads and waits (asynchronously) for its result.
    /// `None` if the pool is gone or the job panicked.
    pub async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref()?.send(job).ok()?;
        rx.await.ok()
    }
}

impl Drop for LowPriorityPool {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn my_nice() -> libc::c_int {
        // SAFETY: a plain syscall on the calling thread's own id.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[tokio::test]
    async fn jobs_run_at_low_priority_and_leave_other_threads_alone() {
        let pool = LowPriorityPool::start("test-low", 2).unwrap();
        let before = tokio::task::spawn_blocking(my_nice).await.unwrap();
        assert_eq!(pool.run(my_nice).await, Some(NICE));
        assert_eq!(tokio::task::spawn_blocking(my_nice).await.unwrap(), before);
        let results = futures::future::join_all((0..8u64).map(|i| pool.run(move || i * 2))).await;
        assert_eq!(results, (0..8u64).map(|i| Some(i * 2)).collect::<Vec<_>>());
    }
}
