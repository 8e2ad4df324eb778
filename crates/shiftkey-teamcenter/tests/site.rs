//! The read path as a real site serves it (saved queries, windows, line properties, relations),
//! the site mapping, and feedback — against the emulator, which refuses what Teamcenter refuses.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shiftkey_sim::{Sim, SimConfig};
use shiftkey_teamcenter::{
    ChangeSet, CurrentRevision, FeedbackConfig, FeedbackValues, ReadConfig, TcError, WindowMode,
};
use tokio::time::sleep;

use super::reads::{H, client, quiet, secs, sim};

/// Every plan's operations equal the data set's truth, field by field.
fn assert_truth(s: &Sim, got: &ChangeSet) {
    s.with_data(|d| {
        for (plan, ops) in &got.plans {
            let p = d.get(&plan.uid).unwrap();
            assert_eq!(Some(plan.id.as_str()), p.get("item_id"));
            assert_eq!(Some(plan.revision.as_str()), p.get("item_revision_id"));
            assert_eq!(Some(plan.name.as_str()), p.get("object_name"));
            assert_eq!(
                plan.release_status.is_empty(),
                p.props["release_status_list"].is_empty()
            );
            let truth = d.operations_of(&plan.uid);
            assert_eq!(ops.len(), truth.len(), "operations of {}", plan.id);
            for t in &truth {
                let op = ops
                    .iter()
                    .find(|o| o.uid == t.revision)
                    .unwrap_or_else(|| panic!("operation {} of {} missing", t.id, plan.id));
                assert_eq!(op.id, t.id);
                assert_eq!(op.name, t.name);
                assert_eq!(op.occurrence, t.occurrence);
                assert_eq!(op.sequence.to_string(), t.sequence);
                assert_eq!(op.work_area, t.work_area);
                assert_eq!(op.resources, t.equipment);
                assert_eq!(op.consumed_parts, t.consumed);
                assert_eq!(
                    op.allocated_time_s,
                    t.allocated_time.as_deref().map(|v| v.parse().unwrap())
                );
                let mut wi: Vec<&str> = op
                    .work_instructions
                    .iter()
                    .map(|w| w.uid.as_str())
                    .collect();
                let mut want: Vec<&str> = t.instructions.iter().map(String::as_str).collect();
                wi.sort_unstable();
                want.sort_unstable();
                assert_eq!(wi, want, "work instructions of {}", op.id);
                for w in &op.work_instructions {
                    assert_eq!(w.type_name, "PDF");
                    assert_eq!(
                        Some(w.name.as_str()),
                        d.get(&w.uid).unwrap().get("object_name")
                    );
                }
            }
            assert!(ops.windows(2).all(|w| w[0].sequence <= w[1].sequence));
        }
    });
}

/// The read path's windows alone: no revision rule is asked (its windows are counted in
/// `the_revision_rule_is_asked_once_per_batch_of_items_and_its_windows_are_closed`).
fn plans_only() -> ReadConfig {
    ReadConfig::default().with_current(CurrentRevision::Every)
}

fn floor_minute(t: SystemTime) -> SystemTime {
    let s = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    UNIX_EPOCH + Duration::from_secs(s / 60 * 60)
}

#[tokio::test(start_paused = true)]
async fn a_full_then_incremental_read_equals_the_truth_and_closes_every_window() {
    let s = sim(quiet()).await;
    let tc = client(&s, "mfg_sync_pw");
    let cfg = plans_only().with_chunk(9);
    let all = tc.changed_since(None, &cfg).await.unwrap();
    assert_eq!(all.plans.len(), 20);
    assert!(all.partial_errors.is_empty(), "{:?}", all.partial_errors);
    assert_truth(&s, &all);
    let st = s.stats();
    assert_eq!(st.windows_opened, 20);
    assert_eq!(st.windows_closed, 20);
    assert_eq!(s.leaked_windows(), 0);
    assert_eq!(st.stale_lines, 0);
    for op in [
        "Query-2010-04-SavedQuery/findSavedQueries",
        "Query-2006-03-SavedQuery/describeSavedQueries",
        "Query-2008-06-SavedQuery/executeSavedQueries",
        "Manufacturing-2011-06-DataManagement/openContexts",
        "Manufacturing-2011-06-DataManagement/closeContexts",
        "Cad-2007-01-StructureManagement/expandPSOneLevel",
        "Core-2007-09-DataManagement/expandGRMRelationsForPrimary",
    ] {
        assert!(
            st.requests.contains_key(op),
            "{op} was called: {:?}",
            st.requests
        );
    }

    // Every plan was last modified at the initial watermark: the first incremental read sees all
    // of them again (the overlap), and moves the watermark to the newest edit.
    sleep(secs(2 * H)).await;
    let w = tc
        .changed_since(all.high_watermark, &cfg)
        .await
        .unwrap()
        .high_watermark
        .unwrap();
    assert!(Some(w) > all.high_watermark);
    // Two simulated hours later: exactly the plans modified since watermark − 5 min (to the minute).
    sleep(secs(2 * H)).await;
    let changed = tc.changed_since(Some(w), &cfg).await.unwrap();
    let truth: Vec<String> = s.with_data(|d| {
        d.changed_processes(floor_minute(w - secs(300)))
            .iter()
            .map(|o| o.uid.clone())
            .collect()
    });
    assert!(
        !truth.is_empty() && truth.len() < 20,
        "the planner edited some plans in two hours: {}",
        truth.len()
    );
    let got: Vec<String> = changed.plans.iter().map(|(p, _)| p.uid.clone()).collect();
    assert_eq!(got.len(), truth.len());
    assert!(truth.iter().all(|u| got.contains(u)));
    assert_truth(&s, &changed);
    assert!(changed.high_watermark > Some(w));
    assert_eq!(s.leaked_windows(), 0);
}

#[tokio::test(start_paused = true)]
async fn finding_changes_costs_two_calls_once_the_query_is_known() {
    let s = sim(quiet()).await;
    s.pause_changes(true);
    let tc = client(&s, "mfg_sync_pw");
    let cfg = ReadConfig::default();
    let first = tc.changed_plans(None, &cfg).await.unwrap();
    assert_eq!(tc.calls(), 4, "find, describe, execute, load");
    let w = first.plans.iter().map(|p| p.last_modified).max();
    let before = tc.calls();
    let again = tc.changed_plans(w, &cfg).await.unwrap();
    // The overlap returns the newest plans again (the engine skips what the sink already has).
    assert_eq!(again.plans.len(), first.plans.len());
    assert_eq!(
        tc.calls() - before,
        2,
        "execute and load: the query UID is cached for the session"
    );
    // Nothing modified after the window: one call.
    let before = tc.calls();
    let none = tc
        .changed_plans(w.map(|w| w + secs(3600)), &cfg)
        .await
        .unwrap();
    assert!(none.plans.is_empty());
    assert_eq!(tc.calls() - before, 1);
}

#[tokio::test(start_paused = true)]
async fn bom_windows_use_a_revision_rule_checked_against_the_site() {
    let s = sim(quiet()).await;
    let tc = client(&s, "mfg_sync_pw");
    let cfg = ReadConfig::default().with_window(WindowMode::BomWindows {
        revision_rule: Some("Latest Working".into()),
    });
    let all = tc.changed_since(None, &cfg).await.unwrap();
    assert_eq!(all.plans.len(), 20);
    assert_truth(&s, &all);
    let st = s.stats();
    assert!(
        st.requests
            .contains_key("Cad-2007-01-StructureManagement/createBOMWindows")
    );
    assert_eq!(st.windows_closed, st.windows_opened);
    assert_eq!(s.leaked_windows(), 0);

    let wrong = ReadConfig::default().with_window(WindowMode::BomWindows {
        revision_rule: Some("Latest Released".into()),
    });
    let err = tc.changed_since(None, &wrong).await.unwrap_err();
    assert!(matches!(err, TcError::Site { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("Latest Released") && text.contains("`Latest Working`"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_business_object_query_finds_what_the_saved_query_finds() {
    let s = sim(quiet()).await;
    s.pause_changes(true);
    let tc = client(&s, "mfg_sync_pw");
    let saved = tc
        .changed_since(None, &ReadConfig::default())
        .await
        .unwrap();
    let bo = tc
        .changed_since(None, &ReadConfig::default().with_business_object_query())
        .await
        .unwrap();
    let uids = |c: &ChangeSet| {
        c.plans
            .iter()
            .map(|(p, _)| p.uid.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(uids(&saved), uids(&bo));
    assert!(
        s.stats()
            .requests
            .contains_key("Query-2010-09-SavedQuery/executeBusinessObjectQueries")
    );
    // Incremental too: from a watermark after every plan's date, nothing.
    let later = bo.high_watermark.map(|w| w + secs(3600));
    let none = tc
        .changed_plans(later, &ReadConfig::default().with_business_object_query())
        .await
        .unwrap();
    assert!(none.plans.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_localized_site_needs_its_own_entry_names_and_says_which_it_has() {
    let mut cfg = quiet();
    cfg.tc.entry_names.insert("Type".into(), "Typ".into());
    cfg.tc
        .entry_names
        .insert("Modified After".into(), "Geändert nach".into());
    let s = sim(cfg).await;
    let tc = client(&s, "mfg_sync_pw");
    let err = tc
        .changed_since(None, &ReadConfig::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TcError::Site { .. }), "{err}");
    assert!(
        text.contains("`Type`")
            && text.contains("`Modified After`")
            && text.contains("`Geändert nach`"),
        "names what is missing and what exists: {text}"
    );
    let local = ReadConfig::default().with_saved_query("Item Revision...", "Typ", "Geändert nach");
    let all = tc.changed_since(None, &local).await.unwrap();
    assert_eq!(all.plans.len(), 20);
    sleep(secs(H)).await;
    tc.changed_since(all.high_watermark, &local).await.unwrap();

    let missing =
        ReadConfig::default().with_saved_query("Process Revision...", "Type", "Modified After");
    let err = tc
        .changed_since(None, &missing)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Process Revision...") && err.contains("Query Builder"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn query_dates_are_written_in_the_servers_time_zone() {
    for (server, client_offset, exact) in [(120, 120, true), (120, 0, false)] {
        let mut cfg = quiet();
        cfg.tc.utc_offset_minutes = server;
        let s = sim(cfg).await;
        let tc = client(&s, "mfg_sync_pw");
        let read = ReadConfig::default().with_utc_offset_minutes(client_offset);
        let all = tc.changed_plans(None, &read).await.unwrap();
        sleep(secs(3 * H)).await;
        let w0 = all.plans.iter().map(|p| p.last_modified).max();
        let step = tc.changed_plans(w0, &read).await.unwrap();
        let w = step.plans.iter().map(|p| p.last_modified).max().unwrap();
        sleep(secs(3 * H)).await;
        let changed = tc.changed_plans(Some(w), &read).await.unwrap();
        let truth = s.with_data(|d| d.changed_processes(floor_minute(w - secs(300))).len());
        if exact {
            assert_eq!(
                changed.plans.len(),
                truth,
                "server +{server} min, client +{client_offset}"
            );
        } else {
            // A client offset below the server's starts the query earlier: more, never fewer.
            assert!(
                changed.plans.len() > truth,
                "{} vs {truth}",
                changed.plans.len()
            );
        }
    }
}

/// `UtcOffset::Auto` (the default) reads the server's offset from the dates it returns: after
/// one read the query dates are exact in any zone; before any (a fresh client with a
/// watermark) the query starts early, never late. A fixed offset the dates disagree with is
/// reported.
#[tokio::test(start_paused = true)]
async fn the_servers_offset_is_read_from_its_dates() {
    for server in [-300, 330, 0] {
        let mut cfg = quiet();
        cfg.tc.utc_offset_minutes = server;
        let s = sim(cfg).await;
        let read = ReadConfig::default();
        let tc = client(&s, "mfg_sync_pw");
        assert_eq!(tc.server_utc_offsets(), None);
        let all = tc.changed_plans(None, &read).await.unwrap();
        assert_eq!(tc.server_utc_offsets(), Some((server, server)));
        sleep(secs(3 * H)).await;
        let w = all.plans.iter().map(|p| p.last_modified).max().unwrap();
        let truth = s.with_data(|d| d.changed_processes(floor_minute(w - secs(300))).len());
        let exact = tc.changed_plans(Some(w), &read).await.unwrap();
        assert_eq!(exact.plans.len(), truth, "server {server:+} min");
        // A client that has seen no date yet starts as early as any zone could need.
        let fresh = client(&s, "mfg_sync_pw");
        let early = fresh.changed_plans(Some(w), &read).await.unwrap();
        assert!(early.plans.len() >= truth, "server {server:+} min");
        assert_eq!(fresh.server_utc_offsets(), Some((server, server)));
        // A fixed offset that disagrees is said to; the right one, or auto, is not.
        let wrong = ReadConfig::default().with_utc_offset_minutes(server + 60);
        let why = tc.offset_disagreement(&wrong).expect("a disagreement");
        assert!(why.contains("late"), "{why}");
        assert!(
            tc.offset_disagreement(&ReadConfig::default().with_utc_offset_minutes(server))
                .is_none()
        );
        assert!(tc.offset_disagreement(&read).is_none());
        assert!(
            tc.offset_disagreement(&ReadConfig::default().with_utc_offset_minutes(server - 120))
                .is_some_and(|w| w.contains("early"))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_session_death_inside_a_window_reopens_and_never_resends_stale_lines() {
    // Every call takes a simulated second; the server restarts while the plans are expanded.
    let mut slow = quiet();
    slow.faults.latency_ms = 1000;
    let s = Arc::new(sim(slow).await);
    s.pause_changes(true);
    let tc = client(&s, "mfg_sync_pw");
    let cfg = ReadConfig::default();
    let plans = tc.changed_plans(None, &cfg).await.unwrap().plans;
    let restarter = {
        let s = Arc::clone(&s);
        // The open answers after 1 s; the expansion is in flight at 1.5 s.
        tokio::spawn(async move {
            sleep(Duration::from_millis(1500)).await;
            s.restart();
        })
    };
    let read = tc.read_operations(&plans, &cfg).await.unwrap();
    restarter.await.unwrap();
    assert_eq!(read.operations.len(), 20);
    assert!(read.skipped.is_empty());
    let st = s.stats();
    assert_eq!(st.killed.get("restart"), Some(&1));
    assert_eq!(
        st.stale_lines, 0,
        "no line of the dead session was sent again"
    );
    assert_eq!(
        st.windows_opened, 40,
        "twenty windows opened again after the restart"
    );
    assert_eq!(st.windows_died, 20);
    assert_eq!(s.leaked_windows(), 0);
    assert_eq!(tc.middleware().stats().surfaced, 0);
}

#[tokio::test(start_paused = true)]
async fn windows_are_closed_when_a_read_fails_or_is_cancelled() {
    let s = sim(quiet()).await;
    let tc = client(&s, "mfg_sync_pw");
    // A referenced-line property the site lacks: the read fails inside the window.
    let mut fields = shiftkey_teamcenter::FieldMap::default();
    fields.reference_id = "xx4_no_such_property".into();
    let bad = ReadConfig::default().with_fields(fields);
    let err = tc.changed_since(None, &bad).await.unwrap_err().to_string();
    assert!(err.contains("xx4_no_such_property"), "{err}");
    assert!(s.stats().windows_opened > 0);
    assert_eq!(s.leaked_windows(), 0, "closed on the error path");

    // A read dropped mid-way (a stop, a deadline): the guard closes in the background.
    let mut slow = quiet();
    slow.faults.latency_ms = 1000;
    let s = sim(slow).await;
    let tc = client(&s, "mfg_sync_pw");
    let plans = tc
        .changed_plans(None, &ReadConfig::default())
        .await
        .unwrap()
        .plans;
    let cancelled = tokio::time::timeout(
        Duration::from_millis(1500),
        tc.read_operations(&plans, &ReadConfig::default()),
    )
    .await;
    assert!(cancelled.is_err(), "dropped inside the window");
    assert_eq!(s.stats().windows_opened, 20);
    assert_eq!(s.leaked_windows(), 20, "open while the read runs");
    sleep(secs(5)).await;
    assert_eq!(s.leaked_windows(), 0, "closed after the drop");
}

#[tokio::test(start_paused = true)]
async fn nested_processes_are_read_to_the_configured_depth() {
    let mut cfg = quiet();
    cfg.data.nested_processes = 1;
    let s = sim(cfg).await;
    s.pause_changes(true);
    let tc = client(&s, "mfg_sync_pw");
    let deep = tc
        .changed_since(None, &ReadConfig::default())
        .await
        .unwrap();
    let top_plans: Vec<_> = deep
        .plans
        .iter()
        .filter(|(p, _)| !p.id.contains("-S"))
        .collect();
    assert_eq!(top_plans.len(), 20);
    for (p, ops) in &top_plans {
        assert_eq!(
            ops.len(),
            8 + 2,
            "{}: its own 8 and the sub-process's 2",
            p.id
        );
    }
    assert_truth(&s, &deep);
    let shallow = tc
        .changed_since(None, &ReadConfig::default().with_depth(1))
        .await
        .unwrap();
    let (_, ops) = shallow
        .plans
        .iter()
        .find(|(p, _)| p.uid == top_plans[0].0.uid)
        .unwrap();
    assert_eq!(ops.len(), 8, "depth 1 stops above the sub-process");
}

#[tokio::test(start_paused = true)]
async fn work_instruction_relations_are_configurable() {
    let s = sim(quiet()).await;
    s.pause_changes(true);
    let tc = client(&s, "mfg_sync_pw");
    let mut cfg = ReadConfig::default();
    let default = tc.changed_since(None, &cfg).await.unwrap();
    let first = |c: &ChangeSet| {
        c.plans[0]
            .1
            .iter()
            .find(|o| o.id.ends_with("OP010"))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        first(&default).work_instructions.len(),
        1,
        "the work instruction only"
    );
    cfg.work_instruction_relations
        .push("IMAN_specification".into());
    let both = tc.changed_since(None, &cfg).await.unwrap();
    let docs = first(&both).work_instructions;
    assert_eq!(docs.len(), 2);
    assert!(
        docs.iter()
            .any(|d| d.type_name == "Text" && d.name.starts_with("SPEC-"))
    );
}

#[tokio::test(start_paused = true)]
async fn feedback_needs_site_properties_and_is_written_once_per_key() {
    // A standard site has no feedback property: a clear error naming it, nothing written.
    let s = sim(quiet()).await;
    let tc = client(&s, "mfg_sync_pw");
    let all = tc
        .changed_since(None, &ReadConfig::default())
        .await
        .unwrap();
    let op = all.plans[0].1[0].uid.clone();
    let mut fb = FeedbackConfig::new("xx4_mes_feedback_key");
    fb.completed_count = Some("xx4_completed_count".into());
    fb.actual_cycle_time = Some("xx4_actual_cycle_time".into());
    let values = FeedbackValues {
        completed_count: 7,
        actual_cycle_time_s: Some(42.5),
        deviation: "",
    };
    let err = tc.write_feedback(&fb, &op, values, 1).await.unwrap_err();
    assert!(matches!(err, TcError::Site { .. }), "{err}");
    assert!(err.to_string().contains("xx4_mes_feedback_key"), "{err}");

    // With the BMIDE properties in place: once per key.
    let mut cfg: SimConfig = quiet();
    cfg.tc.site_properties.insert(
        "MEOPRevision".into(),
        vec![
            "xx4_mes_feedback_key".into(),
            "xx4_completed_count".into(),
            "xx4_actual_cycle_time".into(),
        ],
    );
    let s = sim(cfg).await;
    let tc = client(&s, "mfg_sync_pw");
    let all = tc
        .changed_since(None, &ReadConfig::default())
        .await
        .unwrap();
    let op = all.plans[0].1[0].uid.clone();
    assert!(tc.write_feedback(&fb, &op, values, 1).await.unwrap());
    assert!(
        !tc.write_feedback(&fb, &op, values, 1).await.unwrap(),
        "same key: nothing written"
    );
    s.with_data(|d| {
        let o = d.get(&op).unwrap();
        assert_eq!(o.get("xx4_completed_count"), Some("7"));
        assert_eq!(o.get("xx4_actual_cycle_time"), Some("42.5"));
        assert_eq!(o.get("xx4_mes_feedback_key"), Some("shiftkey-feedback-1"));
    });
    // A property the site lacks (deviation was not created): the write names it.
    fb.deviation = Some("xx4_deviation".into());
    let err = tc.write_feedback(&fb, &op, values, 2).await.unwrap_err();
    assert!(err.to_string().contains("xx4_deviation"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn referenced_lines_come_along_or_are_read_with_get_properties() {
    for follow in [true, false] {
        let mut cfg = quiet();
        cfg.tc.follow_line_references = follow;
        let s = sim(cfg).await;
        let tc = client(&s, "mfg_sync_pw");
        let all = tc.changed_since(None, &plans_only()).await.unwrap();
        assert_truth(&s, &all);
        let reads = s
            .stats()
            .requests
            .get("Core-2006-03-DataManagement/getProperties")
            .copied()
            .unwrap_or(0);
        if follow {
            assert_eq!(reads, 0, "withProperties brought every referenced line");
        } else {
            assert!(reads > 0, "the lines the server left out were read");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_line_that_does_not_map_leaves_only_its_plan_out() {
    let s = sim(quiet()).await;
    s.pause_changes(true);
    let tc = client(&s, "mfg_sync_pw");
    let plans = tc
        .changed_plans(None, &ReadConfig::default())
        .await
        .unwrap()
        .plans;
    let victim = plans[3].clone();
    s.with_data(|d| {
        let occ = d.structure(&victim.uid).unwrap()[0].clone();
        d.occurrence_mut(&occ).unwrap().sequence = "10a".into();
    });
    let read = tc
        .read_operations(&plans, &ReadConfig::default())
        .await
        .unwrap();
    assert_eq!(read.skipped, vec![victim.uid.clone()]);
    assert_eq!(read.operations.len(), 19, "the other plans are read");
    let pe = read
        .partial_errors
        .iter()
        .find(|p| p.uid.as_deref() == Some(victim.uid.as_str()))
        .unwrap();
    assert!(pe.errors[0].message.contains("10a"), "{pe:?}");
    assert_eq!(s.leaked_windows(), 0);
}

/// Real time: a hang is only a hang if the client's deadline is a real one (paused time could
/// also jump to it while a loopback answer is on its way). The deadline bounds answered requests
/// too, so it is generous for a busy machine; each hung attempt costs it once.
#[tokio::test]
async fn a_hung_read_is_retried_a_hung_write_is_sent_once_and_answers_are_bounded() {
    let mut cfg: SimConfig = quiet();
    cfg.tc
        .site_properties
        .insert("MEOPRevision".into(), vec!["xx4_mes_feedback_key".into()]);
    let s = sim(cfg).await;
    let tc = client(&s, "mfg_sync_pw").with_read_timeout(Duration::from_secs(2));
    let all = tc
        .changed_since(None, &ReadConfig::default())
        .await
        .unwrap();
    let op = all.plans[0].1[0].uid.clone();

    // A read that hangs times out and is sent again (reads are idempotent).
    s.hang_next(shiftkey_sim::HangTarget::Reads, 1);
    tc.session_info().await.unwrap();
    assert_eq!(s.stats().hung, 1);

    // A write that hangs times out and is not sent again: the key is not written.
    let fb = FeedbackConfig::new("xx4_mes_feedback_key");
    let values = FeedbackValues {
        completed_count: 1,
        actual_cycle_time_s: None,
        deviation: "",
    };
    s.hang_next(shiftkey_sim::HangTarget::Feedback, 1);
    let err = tc.write_feedback(&fb, &op, values, 1).await.unwrap_err();
    assert!(matches!(err, TcError::Http(_)), "{err}");
    assert_eq!(s.stats().hung, 2);
    s.with_data(|d| {
        assert_eq!(d.get(&op).unwrap().get("xx4_mes_feedback_key"), None);
    });
    // The next attempt, by the caller (the next cycle), writes it once.
    assert!(tc.write_feedback(&fb, &op, values, 1).await.unwrap());

    // An answer over the limit is an error naming the operation and the limit.
    let small = client(&s, "mfg_sync_pw").with_max_answer(64);
    let err = small.session_info().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("getTCSessionInfo") && msg.contains("64 byte limit"),
        "{msg}"
    );
}

/// A close that cannot get through (every attempt hangs) leaves windows open: the client closes
/// them before its next open; when that fails too, it retires the session and the windows die
/// with it. Real time: a hang needs a real deadline (generous: it bounds answered requests too;
/// each hung close costs it once).
#[tokio::test]
async fn windows_a_failed_close_left_open_are_closed_later_or_die_with_the_session() {
    let s = sim(quiet()).await;
    let mut cfg = shiftkey_teamcenter::SessionConfig::new(
        s.url().parse().unwrap(),
        "mfg_sync",
        "mfg_sync_pw".into(),
    );
    cfg.retire_after = Duration::from_millis(100);
    let tc = shiftkey_teamcenter::TcClient::session(reqwest::Client::new(), cfg)
        .unwrap()
        .with_read_timeout(Duration::from_secs(1));
    let read = || async {
        let all = tc.changed_since(None, &plans_only()).await.unwrap();
        assert!(!all.plans.is_empty());
    };
    // Every attempt of the close hangs: the windows stay open, remembered.
    s.hang_next(shiftkey_sim::HangTarget::WindowClose, 3);
    read().await;
    assert_eq!(s.stats().hung, 3);
    assert!(s.leaked_windows() > 0);
    // The next read closes them first.
    read().await;
    assert_eq!(
        s.leaked_windows(),
        0,
        "the remembered close was not tried again"
    );
    let logins = s.stats().logins;
    // The close fails, and so does the second try: the session is retired.
    s.hang_next(shiftkey_sim::HangTarget::WindowClose, 6);
    read().await;
    read().await;
    // The retired session is logged out in the background: wait for it (up to 30 s).
    for _ in 0..600 {
        if s.leaked_windows() == 0 {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.leaked_windows(), 0, "windows outlived two failed closes");
    assert_eq!(
        s.stats().logins,
        logins + 1,
        "one new session, not a login storm"
    );
}

/// A server without `getTypeDescriptions`: the site check still reports every other part, reads
/// the plan type's properties from one plan instead, says the others cannot be checked here, and
/// asks for the missing operation once (its 500 answer is final, not retried).
#[tokio::test(start_paused = true)]
async fn the_site_check_goes_on_without_type_descriptions_and_asks_once() {
    let mut cfg = quiet();
    cfg.tc.missing_operations = vec!["Core-2011-06-Session/getTypeDescriptions".into()];
    let s = sim(cfg).await;
    let tc = client(&s, "mfg_sync_pw");
    let findings = tc.check_site(&ReadConfig::default(), None).await.unwrap();
    let line = |check: &str, has: &str| {
        findings
            .iter()
            .find(|f| f.check == check && f.detail.contains(has))
            .unwrap_or_else(|| panic!("no {check} line with {has:?}: {findings:#?}"))
    };
    assert!(line("saved-query", "has the entries").ok);
    assert!(line("query-finds", "`MEProcessRevision`").ok);
    let plan = line("types", "`MEProcessRevision` has");
    assert!(plan.ok && plan.checked, "{plan:?}");
    assert!(plan.detail.contains("read from one plan"), "{plan:?}");
    let op = line("types", "`Mfg0BvrOperation`: cannot check on this server");
    assert!(!op.checked, "{op:?}");
    assert_eq!(
        s.stats()
            .requests
            .get("Core-2011-06-Session/getTypeDescriptions"),
        Some(&1),
        "a final answer is not asked again"
    );
    // A wrong property on the plan type is still found by the other route.
    let mut wrong = ReadConfig::default();
    wrong.fields.plan_name = "xx4_no_such_name".into();
    let findings = tc.check_site(&wrong, None).await.unwrap();
    assert!(
        findings
            .iter()
            .any(|f| f.check == "types" && !f.ok && f.detail.contains("xx4_no_such_name")),
        "{findings:#?}"
    );
}

/// The revision rule is asked for a batch of items in one round: one `createBOMWindows` (on the
/// items, with the rule), one `getProperties` (`bl_revision` of the top lines), one
/// `closeBOMWindows`; every window is closed; an unknown rule is a site error naming the rules
/// the site has.
#[tokio::test(start_paused = true)]
async fn the_revision_rule_is_asked_once_per_batch_of_items_and_its_windows_are_closed() {
    let s = sim(quiet()).await;
    s.pause_changes(true);
    let tc = client(&s, "mfg_sync_pw");
    let plans = tc.changed_plans(None, &plans_only()).await.unwrap().plans;
    assert_eq!(plans.len(), 20);
    assert!(plans.iter().all(|p| p.item_uid.is_some()), "items_tag read");
    let before = s.stats();
    let cfg = ReadConfig::default().with_current(CurrentRevision::ByRule {
        revision_rule: Some("Any Status; Working".into()),
    });
    let current = tc.current_revisions(&plans, &cfg).await.unwrap();
    assert!(current.unresolved.is_empty(), "{:?}", current.unresolved);
    assert!(
        plans.iter().all(|p| current.is_current(p)),
        "one revision each"
    );
    let after = s.stats();
    let delta = |op: &str| {
        after.requests.get(op).copied().unwrap_or(0) - before.requests.get(op).copied().unwrap_or(0)
    };
    for op in [
        "Cad-2007-01-StructureManagement/getRevisionRules",
        "Cad-2007-01-StructureManagement/createBOMWindows",
        "Core-2006-03-DataManagement/getProperties",
        "Cad-2007-01-StructureManagement/closeBOMWindows",
    ] {
        assert_eq!(delta(op), 1, "{op}");
    }
    assert_eq!(after.windows_opened - before.windows_opened, 20);
    assert_eq!(s.leaked_windows(), 0);
    // Every: no call at all.
    let every = tc.current_revisions(&plans, &plans_only()).await.unwrap();
    assert!(
        plans
            .iter()
            .all(|p| every.is_current(p) && every.of(p).is_none())
    );
    assert_eq!(s.stats().windows_opened, after.windows_opened);
    // A rule the site does not have.
    let wrong = ReadConfig::default().with_current(CurrentRevision::ByRule {
        revision_rule: Some("Latest Released".into()),
    });
    match tc.current_revisions(&plans, &wrong).await {
        Err(TcError::Site { detail }) => {
            assert!(
                detail.contains("`Latest Released`") && detail.contains("`Latest Working`"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
}
