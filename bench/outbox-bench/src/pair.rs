//! The shape every store's emit and relay comparison shares: the outbox and its baseline run
//! side by side, alternating which goes first, their times summed per side.

use std::future::Future;
use std::time::{Duration, Instant};

use outbox_core::OutboxStore;
use outbox_worker::{ClaimMode, Worker};

use crate::memory::NoopTransport;
use crate::{BenchError, per_second};

/// Rounds of each side after the warm-up.
pub const ROUNDS: usize = 4;

/// `producers` concurrent producers, alternating outbox and raw rounds after a warm-up of
/// each (a quarter round); `produce(raw, txs, base)` runs one producer's share of a round.
/// Returns the total time of each side (outbox, raw) over the measured rounds.
pub async fn emit_pair<F, Fut>(
    producers: usize,
    txs_each: usize,
    produce: F,
) -> Result<(Duration, Duration), BenchError>
where
    F: Fn(bool, usize, usize) -> Fut,
    Fut: Future<Output = Result<(), BenchError>> + Send + 'static,
{
    let mut totals = [Duration::ZERO; 2];
    let per_round = (txs_each / ROUNDS).max(1);
    for round in 0..=ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for raw in order {
            let txs = if round == 0 {
                (per_round / 4).max(1)
            } else {
                per_round
            };
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for p in 0..producers {
                let base = (round * producers + p) * per_round;
                tasks.spawn(produce(raw, txs, base));
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            if round > 0 {
                totals[usize::from(raw)] += start.elapsed();
            }
        }
    }
    Ok((totals[0], totals[1]))
}

/// How many transactions [`emit_pair`] measures per side.
pub fn emitted(producers: usize, txs_each: usize) -> u64 {
    ((txs_each / ROUNDS).max(1) * ROUNDS * producers) as u64
}

/// `workers` workers claiming `batch` at a time under `mode`, draining `store` to idle with a
/// no-op transport; returns how many they delivered and how long it took.
pub async fn drain<S: OutboxStore + Clone + 'static>(
    store: &S,
    mode: ClaimMode,
    workers: usize,
    batch: usize,
) -> Result<(u64, Duration), BenchError> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let worker = Worker::builder(store.clone(), NoopTransport)
            .worker_id(format!("bench-{w}"))
            .batch_size(batch)
            .concurrency(32)
            .claim_mode(mode)
            .retention(None)
            .build()?;
        tasks.spawn(async move { worker.run_until_idle().await });
    }
    let mut delivered = 0;
    while let Some(done) = tasks.join_next().await {
        delivered += done??.delivered;
    }
    Ok((delivered, start.elapsed()))
}

/// Two rounds of draining half the `backlog` each with the outbox and with the baseline,
/// each side going first once; `refill` empties and refills both tables with half the backlog,
/// `side(raw)` drains one side. Returns both rates (outbox, raw) in events/s.
pub async fn relay_pair<R, RF, D, DF>(
    backlog: usize,
    refill: R,
    side: D,
) -> Result<(f64, f64), BenchError>
where
    R: Fn() -> RF,
    RF: Future<Output = Result<(), BenchError>>,
    D: Fn(bool) -> DF,
    DF: Future<Output = Result<(u64, Duration), BenchError>>,
{
    let mut times = [Duration::ZERO; 2];
    let mut counts = [0u64; 2];
    for round in 0..2 {
        refill().await?;
        for raw in [round == 1, round == 0] {
            let (n, t) = side(raw).await?;
            counts[usize::from(raw)] += n;
            times[usize::from(raw)] += t;
        }
    }
    if counts != [backlog as u64 / 2 * 2; 2] {
        return Err(format!("relay delivered {counts:?} of {backlog} each").into());
    }
    Ok((
        per_second(counts[0], times[0]),
        per_second(counts[1], times[1]),
    ))
}
