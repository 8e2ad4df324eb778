//! The engine: cycles and the schedule.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use shiftkey_auth::{Clock, TokioClock};
use shiftkey_shopfloor::{OperationRecord, ProcessRecord, Sink, SinkError};
use shiftkey_teamcenter::{Operation, ProcessPlan, ReadConfig, TcClient, TcError};

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    /// Time between cycle starts (15 min).
    pub interval: Duration,
    /// Teamcenter read settings (page, chunk, overlap 5 min).
    pub read: ReadConfig,
    /// Process revisions per sink transaction (50).
    pub batch: usize,
    /// Feedback rows pushed per cycle at most (100).
    pub feedback_limit: i64,
    /// Each slot is delayed by a random amount up to this (0: none), so many plants do not hit
    /// one Teamcenter at the same second.
    pub jitter: Duration,
    /// Seed of the jitter (`None`: from the OS).
    pub seed: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15 * 60),
            read: ReadConfig::default(),
            batch: 50,
            feedback_limit: 100,
            jitter: Duration::ZERO,
            seed: None,
        }
    }
}

/// What a cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Process revisions read from Teamcenter.
    pub read: usize,
    /// Inserted into the sink.
    pub inserted: u64,
    /// Updated in the sink.
    pub updated: u64,
    /// Unchanged (skipped by content hash).
    pub unchanged: u64,
    /// Feedback rows pushed to Teamcenter.
    pub feedback_pushed: u64,
    /// The watermark after the cycle.
    pub watermark: Option<SystemTime>,
    /// Wall time the cycle took (simulated time under a scaled clock).
    pub duration: Duration,
    /// Whether the cycle stopped early because a stop was requested.
    pub stopped: bool,
}

/// A cycle failed; nothing after the last committed batch was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Teamcenter failed (after the HTTP layer's healing and retries).
    #[error("Teamcenter: {0}")]
    Teamcenter(#[from] TcError),
    /// The sink failed.
    #[error("{0}")]
    Sink(#[from] SinkError),
}

impl SyncError {
    /// Whether retrying next cycle cannot help (refused credentials): stop cycling and alert.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Teamcenter(TcError::InvalidCredentials { .. }) => true,
            Self::Teamcenter(e) => e.http_error().is_some_and(
                |h| matches!(h, shiftkey_http::HttpError::Token(a) if a.is_permanent()),
            ),
            Self::Sink(_) => false,
        }
    }
}

/// A stop request, checked between batches.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks the engine to stop after the current batch.
    pub fn request(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a stop was requested.
    #[must_use]
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Leadership among several instances: only the holder syncs.
#[async_trait]
pub trait Lease: Send {
    /// Whether this instance may sync now (acquiring the lease if free, detecting a lost one).
    async fn ensure(&mut self) -> bool;
}

/// Maps a Teamcenter plan and its operations to shop-floor records.
#[must_use]
pub fn map_plan(plan: &ProcessPlan, operations: &[Operation]) -> ProcessRecord {
    ProcessRecord {
        uid: plan.uid.clone(),
        id: plan.id.clone(),
        revision: plan.revision.clone(),
        name: plan.name.clone(),
        plant: plan.plant.clone(),
        released: !plan.release_status.is_empty(),
        obsolete: plan.obsolete,
        last_modified: plan.last_modified,
        operations: operations
            .iter()
            .map(|o| OperationRecord {
                uid: o.uid.clone(),
                id: o.id.clone(),
                name: o.name.clone(),
                sequence: o.sequence,
                work_area: o.work_area.clone(),
                allocated_time_s: o.allocated_time_s,
                instructions: o.instructions.clone(),
                resources: o.resources.clone(),
                consumed_parts: o.consumed_parts.clone(),
                obsolete: o.obsolete,
            })
            .collect(),
    }
}

/// Called by [`Engine::run`] after every cycle with its outcome (status pages, metrics).
pub type CycleObserver = Arc<dyn Fn(Result<&CycleReport, &SyncError>) + Send + Sync>;

/// The sync engine.
#[derive(Clone)]
pub struct Engine {
    tc: TcClient,
    sink: Arc<dyn Sink>,
    cfg: EngineConfig,
    clock: Arc<dyn Clock>,
    observer: Option<CycleObserver>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("tc", &self.tc)
            .field("sink", &self.sink)
            .field("cfg", &self.cfg)
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine syncing `tc` into `sink`.
    pub fn new(tc: TcClient, sink: Arc<dyn Sink>, cfg: EngineConfig) -> Self {
        Self {
            tc,
            sink,
            cfg,
            clock: Arc::new(TokioClock::new()),
            observer: None,
        }
    }

    /// Calls `observer` after every cycle that [`Engine::run`] runs.
    #[must_use]
    pub fn on_cycle(mut self, observer: CycleObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The clock for scheduling (default [`TokioClock`]).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The Teamcenter client.
    #[must_use]
    pub fn teamcenter(&self) -> &TcClient {
        &self.tc
    }

    /// One cycle: read → apply in batches with their watermarks → push feedback.
    pub async fn cycle(&self, stop: &Stop) -> Result<CycleReport, SyncError> {
        let started = self.clock.now();
        let mut report = CycleReport::default();
        let watermark = self.sink.watermark().await?;
        let changes = self.tc.changed_since(watermark, &self.cfg.read).await?;
        report.read = changes.plans.len();
        for pe in &changes.partial_errors {
            tracing::warn!(uid = pe.uid.as_deref().unwrap_or("?"), errors = ?pe.errors, "Teamcenter reported a partial error");
        }
        // Plans come oldest first: each batch's watermark covers everything before it.
        let mut current = watermark;
        for batch in changes.plans.chunks(self.cfg.batch.max(1)) {
            if stop.requested() {
                report.stopped = true;
                break;
            }
            let records: Vec<ProcessRecord> = batch.iter().map(|(p, o)| map_plan(p, o)).collect();
            let newest = records.iter().map(|r| r.last_modified).max();
            let next = match (current, newest) {
                (Some(c), Some(n)) => Some(c.max(n)),
                (c, n) => c.or(n),
            };
            let applied = self
                .sink
                .apply(&records, next.unwrap_or(SystemTime::UNIX_EPOCH))
                .await?;
            current = next;
            report.inserted += applied.inserted;
            report.updated += applied.updated;
            report.unchanged += applied.unchanged;
        }
        report.watermark = current;
        if !report.stopped {
            report.feedback_pushed = self.push_feedback().await?;
        }
        report.duration = self.clock.now().saturating_duration_since(started);
        tracing::info!(
            read = report.read,
            inserted = report.inserted,
            updated = report.updated,
            unchanged = report.unchanged,
            feedback = report.feedback_pushed,
            "sync cycle done"
        );
        Ok(report)
    }

    async fn push_feedback(&self) -> Result<u64, SyncError> {
        let mut pushed = 0;
        for fb in self.sink.pending_feedback(self.cfg.feedback_limit).await? {
            let mut props = vec![
                ("mes0completed_count", vec![fb.completed_count.to_string()]),
                ("mes0deviation", vec![fb.deviation.clone()]),
            ];
            if let Some(t) = fb.actual_cycle_time_s {
                props.push(("mes0actual_cycle_time", vec![format!("{t}")]));
            }
            // The key makes a push interrupted between Teamcenter and the outbox harmless.
            let key = format!("shiftkey-feedback-{}", fb.id);
            if self
                .tc
                .set_properties_once(&fb.operation_uid, &props, &key)
                .await?
            {
                pushed += 1;
            }
            self.sink.mark_feedback_sent(fb.id).await?;
        }
        Ok(pushed)
    }

    /// Runs cycles every `interval` until `stop`: no overlap (a long cycle delays the next), one
    /// catch-up cycle after missed slots, a permanent error stops the loop and is returned.
    /// With a `lease`, cycles run only while this instance holds it.
    pub async fn run(
        &self,
        stop: &Stop,
        mut lease: Option<&mut (dyn Lease + '_)>,
    ) -> Result<u64, SyncError> {
        use rand::{Rng, SeedableRng};
        let mut rng = match self.cfg.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_entropy(),
        };
        let mut cycles = 0u64;
        let mut next = self.clock.now();
        while !stop.requested() {
            let now = self.clock.now();
            if now < next {
                self.clock
                    .sleep((next - now).min(Duration::from_secs(1)))
                    .await;
                continue;
            }
            let leader = match lease.as_deref_mut() {
                Some(l) => l.ensure().await,
                None => true,
            };
            if leader {
                let result = self.cycle(stop).await;
                if let Some(observe) = &self.observer {
                    observe(result.as_ref());
                }
                match result {
                    Ok(_) => cycles += 1,
                    Err(e) if e.is_permanent() => {
                        tracing::error!(error = %e, "sync stopped: a permanent error needs an operator");
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sync cycle failed; the next cycle retries from the last committed batch")
                    }
                }
            }
            // The next slot after now: missed slots collapse into one catch-up cycle.
            let interval = self.cfg.interval.max(Duration::from_millis(1));
            next += interval + self.cfg.jitter.mul_f64(rng.r#gen::<f64>());
            let now = self.clock.now();
            if next <= now {
                next = now;
            }
        }
        Ok(cycles)
    }
}
