//! The rows of the session event log: the events themselves, and what a
//! commit reads and moves of their session (owner, cursor, stored bytes).
//! The event log's writer runs these for every batch, so each is shaped for
//! that: narrow reads, and statements of fixed text for the one-session,
//! one-event case (the connection keeps those prepared; a statement whose
//! text depends on a batch's size is prepared anew every time).

use diesel::prelude::*;

use super::DbConn;
use super::rows::QueryResult;
use super::schema::*;

/// What the event log's commit reads of a session: who owns it, whether it
/// is deleted, and its cursor. Narrow on purpose (the spec, prompt and
/// options columns can be kilobytes), and one id is looked up with a
/// statement of fixed text, which the connection keeps prepared.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct SessionCursorRow {
    pub id: String,
    pub tenant_id: String,
    pub runtime_id: String,
    pub status: String,
    pub last_seq: i64,
}

pub fn session_cursors(conn: &mut DbConn, ids: &[&str]) -> QueryResult<Vec<SessionCursorRow>> {
    if let [id] = ids {
        return Ok(sessions::table
            .filter(sessions::id.eq(*id))
            .select(SessionCursorRow::as_select())
            .load(conn)?);
    }
    let mut found = Vec::with_capacity(ids.len());
    // Bounded chunks keep each statement under SQLite's parameter limit.
    for chunk in ids.chunks(500) {
        found.extend(
            sessions::table
                .filter(sessions::id.eq_any(chunk))
                .select(SessionCursorRow::as_select())
                .load(conn)?,
        );
    }
    Ok(found)
}

/// The agent spec a session snapshotted (JSON), if the session exists.
pub fn session_spec(conn: &mut DbConn, id: &str) -> QueryResult<Option<String>> {
    Ok(sessions::table
        .find(id)
        .select(sessions::spec)
        .load(conn)?
        .into_iter()
        .next())
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = session_events)]
// Without this every field counts as "may be DEFAULT", and diesel then
// inserts a batch on SQLite one row per statement.
#[diesel(treat_none_as_default_value = false)]
pub struct EventRow {
    pub session_id: String,
    pub seq: i64,
    pub created_at: i64,
    pub payload: Vec<u8>,
}

pub fn insert_events(conn: &mut DbConn, rows: &[EventRow]) -> QueryResult<()> {
    // Bounded chunks keep each statement under the backends' parameter limits.
    // Multi-row inserts are not expressible through MultiConnection, so each
    // backend runs its own.
    if let [row] = rows {
        // One row: a statement of fixed text, kept prepared (a batch's
        // text depends on its length and is prepared every time).
        let insert = diesel::insert_into(session_events::table).values(row);
        match conn {
            DbConn::Sqlite(c) => insert.execute(c)?,
            DbConn::Postgres(c) => insert.execute(c)?,
        };
        return Ok(());
    }
    for chunk in rows.chunks(200) {
        let insert = diesel::insert_into(session_events::table).values(chunk);
        match conn {
            DbConn::Sqlite(c) => insert.execute(c)?,
            DbConn::Postgres(c) => insert.execute(c)?,
        };
    }
    Ok(())
}

/// Records appended events: the new last seq, and their bytes added to the
/// session's stored total (the tenant's quota sums these).
pub fn set_last_seq(conn: &mut DbConn, id: &str, last_seq: i64, added_bytes: i64, at: i64) -> QueryResult<()> {
    diesel::update(sessions::table.find(id))
        .set((
            sessions::last_seq.eq(last_seq),
            sessions::stored_bytes.eq(sessions::stored_bytes + added_bytes),
            sessions::updated_at.eq(at),
        ))
        .execute(conn)?;
    Ok(())
}

/// A session's new cursor after a commit: its last seq and the bytes its
/// new events added.
pub struct Cursor {
    pub session_id: String,
    pub last_seq: i64,
    pub added_bytes: i64,
}

/// [`set_last_seq`] for every session of a commit. On PostgreSQL one
/// statement updates them all (a round trip per session capped a commit of
/// 200 busy sessions near 10,000 events/s); SQLite runs in-process, where a
/// statement per session costs no round trip.
pub fn set_last_seqs(conn: &mut DbConn, cursors: &[Cursor], at: i64) -> QueryResult<()> {
    match conn {
        DbConn::Postgres(pg) if cursors.len() > 1 => {
            use diesel::sql_types::{Array, BigInt, Text};
            let ids: Vec<&str> = cursors.iter().map(|c| c.session_id.as_str()).collect();
            let seqs: Vec<i64> = cursors.iter().map(|c| c.last_seq).collect();
            let bytes: Vec<i64> = cursors.iter().map(|c| c.added_bytes).collect();
            diesel::sql_query(
                "UPDATE sessions AS s SET last_seq = v.last_seq, stored_bytes = s.stored_bytes + v.added_bytes, \
                 updated_at = $4 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v(id, last_seq, added_bytes) \
                 WHERE s.id = v.id",
            )
            .bind::<Array<Text>, _>(ids)
            .bind::<Array<BigInt>, _>(seqs)
            .bind::<Array<BigInt>, _>(bytes)
            .bind::<BigInt, _>(at)
            .execute(pg)?;
            Ok(())
        }
        _ => {
            for cursor in cursors {
                set_last_seq(conn, &cursor.session_id, cursor.last_seq, cursor.added_bytes, at)?;
            }
            Ok(())
        }
    }
}

#[diesel::declare_sql_function]
extern "SQL" {
    /// Bytes of a blob; both backends answer from the row header without
    /// reading the value.
    fn length(value: diesel::sql_types::Binary) -> diesel::sql_types::Integer;
}

pub fn events_from(conn: &mut DbConn, session_id: &str, from_seq: i64, limit: i64) -> QueryResult<Vec<EventRow>> {
    Ok(session_events::table
        .filter(
            session_events::session_id
                .eq(session_id)
                .and(session_events::seq.ge(from_seq)),
        )
        .order(session_events::seq.asc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)?)
}

/// Events from `from_seq` on: at most `max_rows`, and no more than
/// `max_bytes` of payload unless the first event alone is larger (it comes
/// alone then). The sizes are read first, so a page of large events never
/// loads more than it returns.
pub fn events_page(
    conn: &mut DbConn,
    session_id: &str,
    from_seq: i64,
    max_rows: i64,
    max_bytes: usize,
) -> QueryResult<Vec<EventRow>> {
    let of_session = session_events::session_id
        .eq(session_id)
        .and(session_events::seq.ge(from_seq));
    let sizes: Vec<(i64, i32)> = session_events::table
        .filter(of_session)
        .order(session_events::seq.asc())
        .limit(max_rows)
        .select((session_events::seq, length(session_events::payload)))
        .load(conn)?;
    let mut bytes = 0usize;
    let mut last = None;
    for (seq, size) in sizes {
        bytes += size.max(0) as usize;
        if last.is_some() && bytes > max_bytes {
            break;
        }
        last = Some(seq);
    }
    let Some(last) = last else {
        return Ok(Vec::new());
    };
    Ok(session_events::table
        .filter(of_session.and(session_events::seq.le(last)))
        .order(session_events::seq.asc())
        .select(EventRow::as_select())
        .load(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreError};

    /// diesel stores a batch row by row on SQLite when a row has a column it
    /// may leave to its DEFAULT (an `Option` field); events must go in one
    /// statement per chunk.
    #[test]
    fn events_are_inserted_in_one_statement_on_sqlite() {
        let rows: Vec<EventRow> = (1..=3)
            .map(|seq| EventRow {
                session_id: "ses_x".into(),
                seq,
                created_at: 0,
                payload: vec![1],
            })
            .collect();
        let insert = diesel::insert_into(session_events::table).values(&rows[..]);
        let sql = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&insert).to_string();
        assert_eq!(sql.matches("INSERT").count(), 1, "{sql}");
        assert!(!sql.contains("BEGIN"), "{sql}");
    }

    #[test]
    fn event_pages_are_bounded_by_bytes_but_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("oma.db")).unwrap();
        let sizes = [100, 100, 100, 1000, 10];
        let events: Vec<EventRow> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| EventRow {
                session_id: "ses_x".into(),
                seq: i as i64 + 1,
                created_at: 0,
                payload: vec![7; size],
            })
            .collect();
        store
            .write_blocking("event_pages_are_bounded_by_bytes_but_never_empty", |conn| {
                insert_events(conn, &events)
            })
            .unwrap();
        let page = |from, rows, bytes| {
            store
                .write_blocking("event_pages_are_bounded_by_bytes_but_never_empty", |conn| {
                    events_page(conn, "ses_x", from, rows, bytes)
                })
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(page(1, 100, 250), vec![1, 2]);
        assert_eq!(page(1, 100, 300), vec![1, 2, 3]);
        assert_eq!(page(1, 2, 10_000), vec![1, 2]);
        // An event larger than the budget comes alone rather than never.
        assert_eq!(page(4, 100, 50), vec![4]);
        assert_eq!(page(5, 100, 50), vec![5]);
        assert!(page(6, 100, 50).is_empty());
    }

    /// The commit's narrow lookup finds one session or several (the one-id
    /// statement differs from the batch one), leaves missing ids out, and
    /// the spec is read apart, only when asked for.
    #[test]
    fn session_cursors_and_spec_are_read_narrowly() {
        use crate::store::rows::{self, SessionRow, TenantRow};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("oma.db")).unwrap();
        store
            .write_blocking("test", |conn| {
                rows::insert_tenant(
                    conn,
                    &TenantRow {
                        id: "ten_a".into(),
                        name: "a".into(),
                        created_at: 0,
                    },
                )?;
                for (id, last_seq) in [("ses_a", 3), ("ses_b", 7)] {
                    rows::insert_session(
                        conn,
                        &SessionRow {
                            id: id.into(),
                            tenant_id: "ten_a".into(),
                            agent_id: "agt_a".into(),
                            runtime_id: "rt_a".into(),
                            acp_agent_id: "test".into(),
                            created_by_user_id: "usr_a".into(),
                            title: String::new(),
                            status: "idle".into(),
                            agent_version: 1,
                            spec: format!(r#"{{"name":"{id}"}}"#),
                            acp_session_id: None,
                            current_turn_id: None,
                            current_prompt: None,
                            last_seq,
                            created_at: 0,
                            updated_at: 0,
                            workspace: None,
                            options: None,
                            mode_id: String::new(),
                            model_id: String::new(),
                        },
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let (one, several, none, spec, no_spec) = store
            .write_blocking("test", |conn| {
                Ok::<_, StoreError>((
                    session_cursors(conn, &["ses_b"])?,
                    session_cursors(conn, &["ses_a", "ses_x", "ses_b"])?,
                    session_cursors(conn, &["ses_x"])?,
                    session_spec(conn, "ses_a")?,
                    session_spec(conn, "ses_x")?,
                ))
            })
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].id.as_str(), one[0].last_seq, one[0].runtime_id.as_str()),
            ("ses_b", 7, "rt_a")
        );
        let mut found: Vec<(String, i64)> = several.into_iter().map(|r| (r.id, r.last_seq)).collect();
        found.sort();
        assert_eq!(found, [("ses_a".to_owned(), 3), ("ses_b".to_owned(), 7)]);
        assert!(none.is_empty());
        assert_eq!(spec.as_deref(), Some(r#"{"name":"ses_a"}"#));
        assert_eq!(no_spec, None);
    }
}
