//! The engine: cycles and the schedule.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use shiftkey_auth::{Clock, TokioClock};
use shiftkey_shopfloor::{CurrentMark, Document, OperationRecord, ProcessRecord, Sink, SinkError};
use shiftkey_teamcenter::{
    CurrentRevisions, FeedbackConfig, FeedbackValues, Operation, ProcessPlan, ReadConfig, TcClient,
    TcError, Transient,
};

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Time between cycle starts (15 min).
    pub interval: Duration,
    /// Teamcenter read settings: the site mapping (query, window, properties, overlap 5 min).
    pub read: ReadConfig,
    /// Where feedback goes in Teamcenter (`None`: no feedback writes; rows stay in the outbox).
    pub feedback: Option<FeedbackConfig>,
    /// Every this long one cycle reads every plan, not only those whose `last_mod_date` moved:
    /// a structure-only edit may not move it (`docs/teamcenter-reads.md` §2.8). Unchanged plans
    /// cost the reads but no sink writes. `None`: never.
    pub reconcile_every: Option<Duration>,
    /// Process revisions per sink transaction (50).
    pub batch: usize,
    /// Feedback rows pushed per cycle at most (100).
    pub feedback_limit: i64,
    /// Each slot is delayed by a random amount up to this (0: none), so many plants do not hit
    /// one Teamcenter at the same second.
    pub jitter: Duration,
    /// Seed of the jitter (`None`: from the OS).
    pub seed: Option<u64>,
    /// Under a [`Lease`], a follower asks for it again this often (10 s; never longer than
    /// `interval`), so it takes over within this long of the leader's death, not a whole
    /// interval later, and syncs at once.
    pub lease_check: Duration,
    /// A Teamcenter read that fails on a transient cause after the HTTP layer's own retries (a
    /// 503 burst longer than them, a lost connection) is resumed at most this many times per
    /// cycle (3), from where it failed: the cycle goes on instead of failing. Waiting for an
    /// open server circuit to let a probe through does not count (nothing is sent). Writes are
    /// never resent this way.
    pub resume_attempts: u32,
    /// Each resumption waits what the server (`Retry-After`) or the circuit breaker asks, or
    /// this long (30 s).
    pub resume_wait: Duration,
    /// Resumptions happen only within this long of the cycle's start (5 min); past it the cycle
    /// fails and the next one catches up.
    pub resume_within: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15 * 60),
            read: ReadConfig::default(),
            feedback: None,
            reconcile_every: Some(Duration::from_secs(24 * 3600)),
            batch: 50,
            feedback_limit: 100,
            jitter: Duration::ZERO,
            seed: None,
            lease_check: Duration::from_secs(10),
            resume_attempts: 3,
            resume_wait: Duration::from_secs(30),
            resume_within: Duration::from_secs(5 * 60),
        }
    }
}

/// What a cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleReport {
    /// Process revisions read from Teamcenter.
    pub read: usize,
    /// Process revisions Teamcenter could not open (left out; see the log).
    pub skipped: usize,
    /// Process revisions the change query returned (the watermark overlap) whose version the
    /// sink already holds: not read again.
    pub already_synced: usize,
    /// Whether this cycle read every plan (a reconcile).
    pub reconciled: bool,
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
    /// Whether the cycle ended early because its leader lease was lost (see
    /// [`Engine::cycle_leased`]): what it had not applied is left to the new leader.
    pub lease_lost: bool,
    /// What looks wrong although the cycle succeeded (a setting that syncs nothing or misses
    /// changes); each is logged as a warning too.
    pub warnings: Vec<CycleWarning>,
}

/// Something a successful cycle found wrong with the setup: it would otherwise sync nothing, or
/// miss changes, with exit 0.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CycleWarning {
    /// `nothing_found` (a full read found no plan of a configured type), `utc_offset` (a
    /// fixed offset the server's dates disagree with) or `no_current_revision` (the revision
    /// rule configures no revision of an item read, so none of its revisions is offered).
    pub kind: &'static str,
    /// What to check, for the log and `/status`.
    pub detail: String,
}

impl CycleWarning {
    /// Every kind a cycle can report (for metrics that show each kind from the start).
    pub const KINDS: [&'static str; 3] = ["nothing_found", "utc_offset", "no_current_revision"];

    /// A warning of `kind` (one of [`CycleWarning::KINDS`]).
    #[must_use]
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for CycleWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// A cycle failed; nothing after the last committed batch was applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Teamcenter failed (after the HTTP layer's healing and retries), in its own words.
    #[error(transparent)]
    Teamcenter(#[from] TcError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl SyncError {
    /// Whether retrying next cycle cannot help (refused credentials): stop cycling and alert.
    #[must_use]
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Teamcenter(e) => e.is_permanent(),
            Self::Sink(_) => false,
        }
    }
}

/// A stop request. It cancels the Teamcenter call in flight at once (its windows are closed in
/// the background); a shop-floor batch already being applied finishes, so the sink never holds
/// half a batch.
#[derive(Debug, Clone)]
pub struct Stop(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Stop {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Stop {
    /// Asks the engine to stop: the call in flight is cancelled, the batch being applied finishes.
    pub fn request(&self) {
        self.0.send_replace(true);
    }

    /// Whether a stop was requested.
    #[must_use]
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is requested.
    pub async fn stopped(&self) {
        let mut rx = self.0.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Runs `work` unless a stop comes first (then `None`, and `work` is dropped).
    pub async fn or_stop<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = self.stopped() => None,
            out = work => Some(out),
        }
    }
}

/// Leadership among several instances: only the holder syncs.
#[async_trait]
pub trait Lease: Send {
    /// Whether this instance may sync now (acquiring the lease if free, detecting a lost one).
    async fn ensure(&mut self) -> bool;
}

/// Maps a Teamcenter plan and its operations to shop-floor records; `current` says which
/// revision of its item is current.
#[must_use]
pub fn map_plan(
    plan: &ProcessPlan,
    operations: &[Operation],
    current: &CurrentRevisions,
) -> ProcessRecord {
    ProcessRecord {
        current: current.of(plan),
        uid: plan.uid.clone(),
        id: plan.id.clone(),
        revision: plan.revision.clone(),
        name: plan.name.clone(),
        plant: plan.plant.clone(),
        released: !plan.release_status.is_empty() && !plan.obsolete,
        obsolete: plan.obsolete,
        last_modified: plan.last_modified,
        operations: operations
            .iter()
            .map(|o| OperationRecord {
                uid: o.uid.clone(),
                occurrence: o.occurrence.clone(),
                id: o.id.clone(),
                name: o.name.clone(),
                sequence: o.sequence,
                work_area: o.work_area.clone(),
                allocated_time_s: o.allocated_time_s,
                work_instructions: o
                    .work_instructions
                    .iter()
                    .map(|w| Document {
                        uid: w.uid.clone(),
                        name: w.name.clone(),
                        kind: w.type_name.clone(),
                    })
                    .collect(),
                resources: o.resources.clone(),
                consumed_parts: o.consumed_parts.clone(),
                obsolete: o.obsolete,
            })
            .collect(),
    }
}

/// Called by [`Engine::run`] after every cycle with its outcome (status pages, metrics).
pub type CycleObserver = Arc<dyn Fn(Result<&CycleReport, &SyncError>) + Send + Sync>;

/// A point inside a cycle where a crash is most telling (see [`Engine::on_phase`]). Feature
/// `test-util`.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Feedback row `row` was written to Teamcenter and is not yet marked sent in the outbox: a
    /// crash here must not write it twice (the idempotency key holds).
    FeedbackWritten {
        /// The outbox row.
        row: i64,
        /// Whether this push wrote it; `false` when Teamcenter already held its idempotency key
        /// (an earlier push reached Teamcenter and the outbox was not told).
        fresh: bool,
    },
}

/// Called at each [`Phase`] of a cycle.
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub type PhaseHook = Arc<dyn Fn(Phase) + Send + Sync>;

/// The sync engine.
#[derive(Clone)]
pub struct Engine {
    tc: TcClient,
    sink: Arc<dyn Sink>,
    cfg: EngineConfig,
    clock: Arc<dyn Clock>,
    observer: Option<CycleObserver>,
    #[cfg(feature = "test-util")]
    phase: Option<PhaseHook>,
    /// When the last full read (a reconcile) of this process started, in wall time.
    last_reconcile: Arc<std::sync::Mutex<Option<SystemTime>>>,
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
        if cfg.feedback.is_none() {
            tracing::info!(
                "no Teamcenter feedback target configured: shop-floor feedback stays in the outbox"
            );
        }
        Self {
            tc,
            sink,
            cfg,
            clock: Arc::new(TokioClock::new()),
            observer: None,
            #[cfg(feature = "test-util")]
            phase: None,
            last_reconcile: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Calls `observer` after every cycle that [`Engine::run`] runs.
    #[must_use]
    pub fn on_cycle(mut self, observer: CycleObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Calls `hook` at each [`Phase`] of a cycle (crash tests kill the process there; tracers time
    /// it). It must not block long. A test hook: feature `test-util`.
    #[cfg(feature = "test-util")]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    #[must_use]
    pub fn on_phase(mut self, hook: PhaseHook) -> Self {
        self.phase = Some(hook);
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

    /// Whether this cycle reads every plan: `reconcile_every` after the last full read, which
    /// the sink keeps across restarts (and `sync --once` from cron) where it can, and this
    /// process remembers otherwise. A sink that was never fully read is due at once.
    async fn reconcile_due(&self, now: SystemTime) -> Result<bool, SyncError> {
        let Some(every) = self.cfg.reconcile_every else {
            return Ok(false);
        };
        let kept = self.sink.reconciled().await?;
        let remembered = self.last_reconcile.lock().ok().and_then(|l| *l);
        Ok(match kept.max(remembered) {
            None => true,
            Some(t) => now.duration_since(t).is_ok_and(|age| age >= every),
        })
    }

    /// One cycle: find changed plans → per batch: read their bills of process, apply with the
    /// batch's watermark → push feedback.
    pub async fn cycle(&self, stop: &Stop) -> Result<CycleReport, SyncError> {
        self.cycle_leased(stop, None).await
    }

    /// [`Engine::cycle`] under a leader lease: the lease is asked again before each batch is
    /// applied and before feedback is pushed, and a cycle that lost it ends there
    /// ([`CycleReport::lease_lost`]), so a leader cut off mid-cycle does not write beside the new
    /// one for the rest of a long cycle. [`Engine::run`] cycles this way.
    pub async fn cycle_leased(
        &self,
        stop: &Stop,
        mut lease: Option<&mut (dyn Lease + '_)>,
    ) -> Result<CycleReport, SyncError> {
        let started = self.clock.now();
        let mut report = CycleReport::default();
        let watermark = self.sink.watermark().await?;
        let wall = self.clock.wall();
        // A first read (no watermark) reads everything: it is a full read too.
        report.reconciled = watermark.is_none() || self.reconcile_due(wall).await?;
        let since = if report.reconciled { None } else { watermark };
        let mut resumed = 0;
        let Some(changed) = self
            .resuming(stop, started, &mut resumed, || {
                self.tc.changed_plans(since, &self.cfg.read)
            })
            .await
        else {
            report.stopped = true;
            return Ok(self.finish(report, started));
        };
        let mut changed = changed?;
        if report.reconciled {
            // A full read that finds no plan of a configured type: a wrong type name (or a
            // saved query that cannot see them) would sync nothing, every cycle, with exit 0.
            for t in &self.cfg.read.process_types {
                if !changed.plans.iter().any(|p| &p.plan_type == t) {
                    report.warnings.push(CycleWarning {
                        kind: "nothing_found",
                        detail: format!(
                            "a full read found no plan of the type `{t}`: check `teamcenter.read.types` against the site's types (a revision type, e.g. `MEProcessRevision`) and that the saved query finds them (`shiftkey doctor`)"
                        ),
                    });
                }
            }
        }
        if let Some(detail) = self.tc.offset_disagreement(&self.cfg.read) {
            report.warnings.push(CycleWarning {
                kind: "utc_offset",
                detail,
            });
        }
        for w in &report.warnings {
            tracing::warn!(kind = w.kind, "{w}");
        }
        if !report.reconciled {
            let uids: Vec<String> = changed.plans.iter().map(|p| p.uid.clone()).collect();
            let stored = self.sink.stored_versions(&uids).await?;
            let ms = |t: &SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
            };
            let before = changed.plans.len();
            changed.plans.retain(|p| {
                stored
                    .get(&p.uid)
                    .is_none_or(|s| ms(s) != ms(&p.last_modified))
            });
            report.already_synced = before - changed.plans.len();
        }
        report.read = changed.plans.len();
        for pe in &changed.partial_errors {
            tracing::warn!("Teamcenter reported a partial error: {pe}");
        }
        // Plans come oldest first: each batch's watermark covers everything before it.
        let mut current = watermark;
        for batch in changed.plans.chunks(self.cfg.batch.max(1)) {
            if stop.requested() {
                report.stopped = true;
                break;
            }
            let Some(read) = self
                .resuming(stop, started, &mut resumed, || {
                    self.tc.read_operations(batch, &self.cfg.read)
                })
                .await
            else {
                report.stopped = true;
                break;
            };
            let mut read = read?;
            for pe in &read.partial_errors {
                tracing::warn!("Teamcenter reported a partial error: {pe}");
            }
            report.skipped += read.skipped.len();
            let Some(revisions) = self
                .resuming(stop, started, &mut resumed, || {
                    self.tc.current_revisions(batch, &self.cfg.read)
                })
                .await
            else {
                report.stopped = true;
                break;
            };
            let revisions = revisions?;
            // Why a revision is not current goes to the log; the cycle's warning (below) says
            // which items are left with none, from what the sink holds.
            for pe in &revisions.unresolved {
                tracing::warn!(
                    "the revision rule configures no revision here, so it is not offered as work: {pe}"
                );
            }
            let records: Vec<ProcessRecord> = batch
                .iter()
                .filter_map(|p| {
                    read.operations
                        .remove(&p.uid)
                        .map(|ops| map_plan(p, &ops, &revisions))
                })
                .collect();
            // An item whose current revision is not in this batch (the rule went back to one
            // read earlier): the sink marks that one current and the others superseded.
            let mut marks = Vec::new();
            for (item, rev) in &revisions.by_item {
                if batch.iter().any(|p| &p.uid == rev) {
                    continue;
                }
                let Some(plan) = batch.iter().find(|p| p.item_uid.as_ref() == Some(item)) else {
                    continue;
                };
                if self
                    .sink
                    .stored_versions(std::slice::from_ref(rev))
                    .await?
                    .is_empty()
                {
                    tracing::warn!(
                        "{}: the revision the rule makes current ({rev}) is not synced (not of a configured plan type?), so none is offered as work",
                        plan.id
                    );
                }
                marks.push(CurrentMark {
                    item_id: plan.id.clone(),
                    uid: rev.clone(),
                });
            }
            // Skipped plans count for the watermark too: they are retried when they change
            // again or at the next reconcile, never in a loop.
            let newest = batch.iter().map(|p| p.last_modified).max();
            let next = match (current, newest) {
                (Some(c), Some(n)) => Some(c.max(n)),
                (c, n) => c.or(n),
            };
            if let Some(l) = lease.as_deref_mut()
                && !l.ensure().await
            {
                tracing::warn!(
                    "leader lease lost in the middle of a cycle; the new leader goes on"
                );
                report.lease_lost = true;
                break;
            }
            // Not cancelled by a stop: one transaction, applied whole.
            let applied = self
                .sink
                .apply_marked(&records, &marks, next.unwrap_or(SystemTime::UNIX_EPOCH))
                .await?;
            current = next;
            report.inserted += applied.inserted;
            report.updated += applied.updated;
            report.unchanged += applied.unchanged;
        }
        report.watermark = current;
        // Items the shop floor gets no work for: a state of the sink, reported every cycle (not
        // only by the cycle that read them), so the warning holds as long as it is true.
        let orphans = self.sink.items_without_current().await?;
        if !orphans.is_empty() {
            let shown: Vec<&str> = orphans.iter().take(10).map(String::as_str).collect();
            let w = CycleWarning {
                kind: "no_current_revision",
                detail: format!(
                    "{} item(s) have no current revision under the revision rule, so none of their revisions is offered as work: {}{} (the log says why; check `teamcenter.read.revision_rule`)",
                    orphans.len(),
                    shown.join(", "),
                    if orphans.len() > shown.len() {
                        ", …"
                    } else {
                        ""
                    }
                ),
            };
            tracing::warn!(kind = w.kind, "{w}");
            report.warnings.push(w);
        }
        if !report.stopped
            && !report.lease_lost
            && let Some(l) = lease
            && !l.ensure().await
        {
            tracing::warn!("leader lease lost before the feedback push; the new leader pushes it");
            report.lease_lost = true;
        }
        if report.lease_lost {
            return Ok(self.finish(report, started));
        }
        if report.reconciled && !report.stopped {
            self.sink.mark_reconciled(wall).await?;
            if let Ok(mut last) = self.last_reconcile.lock() {
                *last = Some(wall);
            }
        }
        if !report.stopped {
            let (pushed, stopped) = self.push_feedback(stop).await?;
            report.feedback_pushed = pushed;
            report.stopped = stopped;
        }
        Ok(self.finish(report, started))
    }

    fn finish(&self, mut report: CycleReport, started: tokio::time::Instant) -> CycleReport {
        report.duration = self.clock.now().saturating_duration_since(started);
        tracing::info!(
            read = report.read,
            inserted = report.inserted,
            updated = report.updated,
            unchanged = report.unchanged,
            feedback = report.feedback_pushed,
            stopped = report.stopped,
            "sync cycle done"
        );
        report
    }

    /// Runs a Teamcenter read, resuming it after a transient failure (see
    /// [`EngineConfig::resume_attempts`]): `None` when a stop was requested. `resumed` counts
    /// the cycle's resumptions so far.
    async fn resuming<T, Fut>(
        &self,
        stop: &Stop,
        started: tokio::time::Instant,
        resumed: &mut u32,
        mut read: impl FnMut() -> Fut,
    ) -> Option<Result<T, TcError>>
    where
        Fut: std::future::Future<Output = Result<T, TcError>>,
    {
        loop {
            let e = match stop.or_stop(read()).await? {
                Ok(v) => return Some(Ok(v)),
                Err(e) => e,
            };
            let Some(wait) = self.transient_wait(&e) else {
                return Some(Err(e));
            };
            let late = self.clock.now() + wait > started + self.cfg.resume_within;
            // Waiting out an open circuit sends nothing: it costs time, not an attempt.
            let breaker = matches!(e.transient(), Some(Transient::CircuitOpen { .. }));
            if late || (!breaker && *resumed >= self.cfg.resume_attempts) {
                return Some(Err(e));
            }
            if !breaker {
                *resumed += 1;
            }
            tracing::warn!(error = %e, wait_s = wait.as_secs_f64(), attempt = *resumed, "a Teamcenter read failed for now; the cycle resumes it after a pause");
            stop.or_stop(self.clock.sleep(wait)).await?;
        }
    }

    /// How long to wait before resuming after `e`, if `e` is transient.
    fn transient_wait(&self, e: &TcError) -> Option<Duration> {
        let base = self.cfg.resume_wait;
        Some(match e.transient()? {
            Transient::Unavailable { retry_after } => retry_after.unwrap_or(base),
            Transient::CircuitOpen { retry_in } => retry_in + Duration::from_millis(100),
            // No token for now, or no answer (no connection, a timeout, a dropped answer); and
            // whatever a later version adds.
            _ => base,
        })
    }

    /// Pushes the outbox; the count written, and whether a stop cut it short.
    async fn push_feedback(&self, stop: &Stop) -> Result<(u64, bool), SyncError> {
        let Some(cfg) = &self.cfg.feedback else {
            return Ok((0, false));
        };
        let mut pushed = 0;
        for fb in self.sink.pending_feedback(self.cfg.feedback_limit).await? {
            let values = FeedbackValues {
                completed_count: fb.completed_count,
                actual_cycle_time_s: fb.actual_cycle_time_s,
                deviation: &fb.deviation,
            };
            // The key records the newest row applied: a push interrupted between Teamcenter and
            // the outbox, replayed, writes no row twice.
            let Some(written) = stop
                .or_stop(
                    self.tc
                        .write_feedback(cfg, &fb.operation_uid, values, fb.id),
                )
                .await
            else {
                // Written or not, the key makes the next push of this row harmless.
                return Ok((pushed, true));
            };
            let written = match written {
                Ok(w) => w,
                // This row cannot be written (the operation is gone, no write access, a missing
                // property): it stays in the outbox, the others go on.
                Err(e @ TcError::Site { .. }) => {
                    tracing::warn!(row = fb.id, operation = %fb.operation_uid, error = %e, "feedback row not written; kept in the outbox");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if written {
                pushed += 1;
            }
            #[cfg(feature = "test-util")]
            if let Some(hook) = &self.phase {
                hook(Phase::FeedbackWritten {
                    row: fb.id,
                    fresh: written,
                });
            }
            self.sink.mark_feedback_sent(fb.id).await?;
        }
        Ok((pushed, false))
    }

    /// Runs cycles every `interval` until `stop`: no overlap (a long cycle delays the next), one
    /// catch-up cycle after missed slots, a permanent error stops the loop and is returned.
    /// With a `lease`, cycles run only while this instance holds it; without it, the lease is
    /// asked for again every `lease_check`, and the first cycle runs as soon as it is held.
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
                stop.or_stop(self.clock.sleep(next - now)).await;
                continue;
            }
            let leader = match lease.as_deref_mut() {
                Some(l) => l.ensure().await,
                None => true,
            };
            if !leader {
                // A follower: ask again soon; the cycle runs as soon as the lease is ours.
                let check = self
                    .cfg
                    .lease_check
                    .min(self.cfg.interval)
                    .max(Duration::from_millis(1));
                next = self.clock.now() + check;
                continue;
            }
            {
                let result = self.cycle_leased(stop, lease.as_deref_mut()).await;
                if let Some(observe) = &self.observer {
                    observe(result.as_ref());
                }
                match result {
                    Ok(_) => cycles += 1,
                    Err(e) if e.is_permanent() => {
                        tracing::error!(error = %shiftkey_auth::causes(&e), "sync stopped: a permanent error needs an operator");
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(error = %shiftkey_auth::causes(&e), "sync cycle failed; the next cycle retries from the last committed batch")
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
