//! Opens of many new small cache objects from several threads at once, as a cold walk over
//! small files with 8 readers makes them: prints opens per second (scripts/bench.sh, part 7).
//!
//! usage: cache_opens DIR [THREADS] [OBJECTS_PER_THREAD]

use std::sync::Arc;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: cache_opens DIR [THREADS] [OBJECTS_PER_THREAD]"));
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let per_thread: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let cache = Arc::new(datumfs::cache::Cache::open(&dir, 1 << 20).expect("cache"));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut kept = Vec::with_capacity(per_thread);
                for i in 0..per_thread {
                    let key = format!("t{t}/f{i}.jpg");
                    let size = 100_000 + (i as u64 % 7) * 1000;
                    kept.push(cache.object("s3://bench", &key, "v1", size, &key).expect("open"));
                }
                kept.len()
            })
        })
        .collect();
    let opened: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"threads\": {threads}, \"objects\": {opened}, \"seconds\": {secs:.3}, \"opens_per_second\": {:.0}}}",
        opened as f64 / secs
    );
}
