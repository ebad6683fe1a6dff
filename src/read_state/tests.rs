use super::*;

fn id(seq: u64) -> StreamId {
    StreamId { ms: 1, seq }
}

fn ids(seqs: &[u64]) -> Vec<StreamId> {
    seqs.iter().map(|&seq| id(seq)).collect()
}

#[test]
fn reads_own_pending_entries_first_then_new_ones() {
    let mut state = ReadState::default();
    assert!(matches!(state.mode(), Mode::Pending(after) if after == START));
    state.on_page("1-7", &ids(&[5, 7]), &[]);
    assert_eq!(state.on_stored(), Next::ReadAgain);
    assert!(matches!(state.mode(), Mode::Pending(after) if after == id(7)));
    // Own pending list exhausted: new entries from now on.
    assert_eq!(state.on_empty("0-0".into()), Next::ReadAgain);
    assert!(matches!(state.mode(), Mode::New));
    // Nothing new: wait after the group's last delivered id.
    assert_eq!(state.on_empty("1-9".into()), Next::WaitForNew("1-9".into()));
    assert!(matches!(state.mode(), Mode::New));
}

#[test]
fn an_unparsable_next_id_keeps_the_cursor_where_it_was() {
    let mut state = ReadState::default();
    state.on_page("1-3", &ids(&[3]), &[]);
    state.on_page("garbage", &ids(&[4]), &[]);
    assert!(matches!(state.mode(), Mode::Pending(after) if after == id(3)));
}

#[test]
fn a_refused_page_is_kept_and_reloaded_as_it_is() {
    let mut state = ReadState::default();
    state.on_empty("0-0".into());
    state.on_page("1-3", &ids(&[1, 2, 3]), &[]);
    assert_eq!(state.on_refused(&ids(&[1, 2, 3])), Next::RetryKept);
    assert_eq!(state.kept(), 3);
    assert_eq!(state.max_count(100), 3);
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&[1, 2, 3])));
    // The retry brought only the first two (the third did not fit): it stays
    // kept, and is reloaded next.
    state.on_page("0-0", &ids(&[1, 2]), &[]);
    assert_eq!(state.kept(), 1);
    assert_eq!(state.on_stored(), Next::ReadAgain);
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&[3])));
    state.on_page("0-0", &ids(&[3]), &[]);
    assert_eq!(state.kept(), 0);
    assert!(matches!(state.mode(), Mode::New), "back to new entries");
}

#[test]
fn kept_entries_acked_by_hand_are_let_go() {
    let mut state = ReadState::default();
    state.on_refused(&ids(&[1, 2, 3]));
    // Entry 2 was acked by hand: the reload brings 1 and 3 only.
    state.on_page("0-0", &ids(&[1, 3]), &[]);
    assert_eq!(state.kept(), 0);
    state.on_refused(&ids(&[4]));
    // All acked by hand: the reload brings nothing.
    assert_eq!(state.on_empty("0-0".into()), Next::ReadAgain);
    assert_eq!(state.kept(), 0);
}

#[test]
fn a_second_refusal_keeps_the_new_page_ahead_of_the_rest() {
    let mut state = ReadState::default();
    state.on_refused(&ids(&[1, 2, 3]));
    state.on_page("0-0", &ids(&[1]), &[]);
    state.on_refused(&ids(&[1]));
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&[1, 2, 3])));
}

#[test]
fn a_page_not_stored_restarts_at_own_pending_entries() {
    let mut state = ReadState::default();
    state.on_empty("0-0".into());
    state.on_refused(&ids(&[1]));
    assert_eq!(state.on_not_stored(), Next::Backoff);
    assert_eq!(state, ReadState::default());
    state.on_empty("0-0".into());
    assert_eq!(state.on_writer_gone(), Next::Stop);
    assert_eq!(state, ReadState::default());
}

#[test]
fn a_failed_read_changes_nothing() {
    let mut state = ReadState::default();
    state.on_refused(&ids(&[1]));
    let before = state.clone();
    assert_eq!(state.on_read_failed(), Next::Backoff);
    assert_eq!(state, before);
    assert_eq!(state.on_group_recreated(), Next::ReadAgain);
}

#[test]
fn entries_delivered_past_the_budget_are_reloaded_next_and_not_counted_as_kept() {
    let mut state = ReadState::default();
    state.on_empty("0-0".into());
    state.on_page("1-4", &ids(&[1, 2]), &ids(&[3, 4]));
    assert_eq!(state.on_stored(), Next::ReadAgain);
    assert_eq!(state.kept(), 0, "not poison protection's");
    assert_eq!(state.max_count(100), 2);
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&[3, 4])));
    // The reload brought the first (the second did not fit): it stays.
    state.on_page("0-0", &ids(&[3]), &[]);
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&[4])));
    state.on_page("0-0", &ids(&[4]), &[]);
    assert!(matches!(state.mode(), Mode::New));
}

#[test]
fn a_refused_page_goes_before_entries_not_loaded() {
    let mut state = ReadState::default();
    state.on_empty("0-0".into());
    state.on_page("1-4", &ids(&[1, 2]), &ids(&[3, 4]));
    state.on_refused(&ids(&[1, 2]));
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&[1, 2])));
    state.on_page("0-0", &ids(&[1, 2]), &[]);
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&[3, 4])));
    // Claimed by another replica meanwhile: nothing comes back.
    assert_eq!(state.on_empty("0-0".into()), Next::ReadAgain);
    assert!(matches!(state.mode(), Mode::New));
}

#[test]
fn a_long_unloaded_tail_is_reloaded_a_slice_at_a_time() {
    let mut state = ReadState::default();
    state.on_empty("0-0".into());
    let tail: Vec<u64> = (2..200).collect();
    state.on_page("1-199", &ids(&[1]), &ids(&tail));
    assert_eq!(state.max_count(1000), UNLOADED_AT_ONCE);
    assert!(matches!(state.mode(), Mode::Held(held) if held == ids(&tail[..UNLOADED_AT_ONCE])));
    // Ten of them fit: the next slice starts after them.
    state.on_page("0-0", &ids(&tail[..10]), &[]);
    assert!(matches!(state.mode(), Mode::Held(held) if held[0] == id(12)));
}

#[test]
fn a_slice_of_unloaded_entries_claimed_elsewhere_leaves_the_rest_to_reload() {
    let mut state = ReadState::default();
    state.on_empty("0-0".into());
    let tail: Vec<u64> = (2..200).collect();
    state.on_page("1-199", &ids(&[1]), &ids(&tail));
    // The first slice came back empty: the next one is asked for.
    assert_eq!(state.on_empty("0-0".into()), Next::ReadAgain);
    let next = UNLOADED_AT_ONCE as u64 + 2;
    assert!(matches!(state.mode(), Mode::Held(held) if held[0] == id(next)));
}
