//! The outbox: every session event the daemon has read from a child, kept
//! on disk until the control plane acknowledges that it is durable.
//!
//! One append-only log per session (`<outbox>/<session>.log`: records of a
//! u32 little-endian length and a protobuf `SessionEvent`), plus the highest
//! acknowledged seq (`<session>.ack`). A daemon restart (even SIGKILL: the
//! data is in the page cache) reloads the unacknowledged tail and resends it
//! after the next Welcome. The log is compacted once most of it is acked.
//!
//! Events are numbered one by one ([`SessionOutbox::push`]) but written in
//! batches ([`SessionOutbox::flush`]: one `write` for all the records
//! numbered since the last flush). The invariant the actor keeps: an event
//! is sent only once a flush has returned it, so it is in the file first.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};

use oma_proto::pb;
use prost::Message as _;

use crate::fsutil::{self, Durability, PRIVATE_FILE_MODE};

/// Unacknowledged bytes after which the session stops reading its child
/// until acks arrive (backpressure instead of unbounded memory).
pub const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

/// Rewrite the log when this many acknowledged records precede the tail.
const COMPACT_AFTER: usize = 4096;

/// The ack cursor is written to disk at most once per this many acked
/// events (and before every compaction). A stale cursor after a crash only
/// resends events the control plane already has, which it skips by seq;
/// writing it per ack cost a file rename per event.
const PERSIST_ACK_EVERY: u64 = 1024;

pub struct SessionOutbox {
    log_path: PathBuf,
    ack_path: PathBuf,
    file: File,
    /// The length of the file's whole records (a failed flush cuts back to it).
    file_len: u64,
    /// Records numbered since the last flush, and their events.
    unflushed_records: Vec<u8>,
    unflushed: Vec<pb::SessionEvent>,
    /// Stored events not yet acknowledged (flushed ones only).
    pending: VecDeque<pb::SessionEvent>,
    pending_bytes: usize,
    /// Records in the file that are already acknowledged.
    acked_in_file: usize,
    next_seq: u64,
    acked: u64,
    /// The cursor last written to the `.ack` file.
    persisted_ack: u64,
}

impl SessionOutbox {
    /// Opens (or creates) the outbox of a session, reloading what a previous
    /// run left unacknowledged.
    pub fn open(dir: &Path, session_id: &str) -> io::Result<SessionOutbox> {
        fsutil::create_private_dir(dir)?;
        let log_path = dir.join(format!("{session_id}.log"));
        let ack_path = dir.join(format!("{session_id}.ack"));
        let acked = fs::read_to_string(&ack_path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let mut pending = VecDeque::new();
        let mut pending_bytes = 0;
        let mut acked_in_file = 0;
        let mut max_seq = acked;
        let mut valid_len: u64 = 0;
        if let Ok(file) = File::open(&log_path) {
            let mut reader = BufReader::new(file);
            loop {
                let mut len = [0u8; 4];
                if reader.read_exact(&mut len).is_err() {
                    break;
                }
                let len = u32::from_le_bytes(len) as usize;
                let mut buf = vec![0u8; len];
                if reader.read_exact(&mut buf).is_err() {
                    break; // a torn final record (crash mid-write): dropped
                }
                let Ok(event) = pb::SessionEvent::decode(buf.as_slice()) else {
                    break;
                };
                valid_len += 4 + len as u64;
                max_seq = max_seq.max(event.seq);
                if event.seq > acked {
                    pending_bytes += len;
                    pending.push_back(event);
                } else {
                    acked_in_file += 1;
                }
            }
        }
        let file = fsutil::open_append(&log_path, PRIVATE_FILE_MODE)?;
        // Cut a torn tail so new records follow whole ones.
        if file.metadata()?.len() > valid_len {
            file.set_len(valid_len)?;
        }
        Ok(SessionOutbox {
            log_path,
            ack_path,
            file,
            file_len: valid_len,
            unflushed_records: Vec::new(),
            unflushed: Vec::new(),
            pending,
            pending_bytes,
            acked_in_file,
            next_seq: max_seq.saturating_add(1),
            acked,
            persisted_ack: acked,
        })
    }

    /// Numbers an event (the next seq) and buffers its record; it is stored
    /// by the next [`flush`](Self::flush), and must not be sent before.
    pub fn push(&mut self, mut event: pb::SessionEvent) -> u64 {
        event.seq = self.next_seq;
        let len = event.encoded_len();
        self.unflushed_records.reserve(4 + len);
        self.unflushed_records.extend_from_slice(&(len as u32).to_le_bytes());
        event
            .encode(&mut self.unflushed_records)
            .expect("a Vec grows as needed");
        self.next_seq += 1;
        self.unflushed.push(event);
        self.next_seq - 1
    }

    /// Events numbered and not yet flushed, and the bytes of their records.
    pub fn unflushed(&self) -> (usize, usize) {
        (self.unflushed.len(), self.unflushed_records.len())
    }

    /// Writes the buffered records with one write and returns their events,
    /// now stored and ready to send. On an error nothing of the batch is
    /// kept: the file is cut back to its last whole record and the seqs are
    /// numbered again (none of them was sent).
    pub fn flush(&mut self) -> io::Result<Vec<pb::SessionEvent>> {
        if self.unflushed.is_empty() {
            return Ok(Vec::new());
        }
        if let Err(e) = self.file.write_all(&self.unflushed_records) {
            // A torn record left here would also be cut at the next open.
            let _ = self.file.set_len(self.file_len);
            self.next_seq = self.unflushed[0].seq;
            self.unflushed.clear();
            self.unflushed_records.clear();
            return Err(e);
        }
        self.file_len += self.unflushed_records.len() as u64;
        self.pending_bytes += self.unflushed_records.len() - 4 * self.unflushed.len();
        self.unflushed_records.clear();
        // A burst's buffer is not kept for an idle session.
        self.unflushed_records.shrink_to(8 * 1024);
        let events = std::mem::take(&mut self.unflushed);
        self.pending.extend(events.iter().cloned());
        Ok(events)
    }

    /// The control plane has stored everything up to `seq`. An ack beyond
    /// the last event numbered counts up to that event only: kept as is, it
    /// would skip numbers (or, at `u64::MAX`, leave none) after a restart.
    pub fn ack(&mut self, seq: u64) -> io::Result<()> {
        let seq = seq.min(self.last_seq());
        if seq <= self.acked {
            return Ok(());
        }
        while self.pending.front().is_some_and(|e| e.seq <= seq) {
            let event = self.pending.pop_front().expect("front exists");
            self.pending_bytes = self.pending_bytes.saturating_sub(event.encoded_len());
            self.acked_in_file += 1;
        }
        self.acked = seq;
        if self.acked_in_file >= COMPACT_AFTER {
            self.compact()?;
        } else if seq - self.persisted_ack >= PERSIST_ACK_EVERY {
            self.persist_ack()?;
        }
        Ok(())
    }

    /// Everything not yet acknowledged, oldest first (to resend).
    pub fn pending(&self) -> impl Iterator<Item = &pb::SessionEvent> {
        self.pending.iter()
    }

    pub fn is_full(&self) -> bool {
        self.pending_bytes >= MAX_PENDING_BYTES
    }

    /// The control plane already holds events up to `seq` (from an earlier
    /// life of this machine): number after them.
    pub fn start_after(&mut self, seq: u64) -> io::Result<()> {
        if self.next_seq <= seq {
            self.next_seq = seq.saturating_add(1);
            self.acked = self.acked.max(seq);
            self.persist_ack()?;
        }
        Ok(())
    }

    /// The seq of the last event numbered (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn persist_ack(&mut self) -> io::Result<()> {
        fsutil::write_atomic(
            &self.ack_path,
            self.acked.to_string().as_bytes(),
            PRIVATE_FILE_MODE,
            Durability::Cached,
        )?;
        self.persisted_ack = self.acked;
        Ok(())
    }

    /// Drops acknowledged events from the log. The cursor is persisted
    /// first: once the acked records are gone from the file, only the
    /// cursor keeps numbering from reusing their seqs after a restart.
    fn compact(&mut self) -> io::Result<()> {
        self.persist_ack()?;
        let pending = &self.pending;
        fsutil::write_atomic_with(&self.log_path, PRIVATE_FILE_MODE, Durability::Synced, |out| {
            let mut out = io::BufWriter::new(out);
            for event in pending {
                let bytes = event.encode_to_vec();
                out.write_all(&(bytes.len() as u32).to_le_bytes())?;
                out.write_all(&bytes)?;
            }
            out.flush()
        })?;
        self.file = fsutil::open_append(&self.log_path, PRIVATE_FILE_MODE)?;
        self.file_len = self.file.metadata()?.len();
        self.acked_in_file = 0;
        Ok(())
    }

    /// Deletes the session's outbox files (the session was disposed).
    pub fn remove(self) -> io::Result<()> {
        let _ = fs::remove_file(&self.ack_path);
        match fs::remove_file(&self.log_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers and stores one event.
    fn store(outbox: &mut SessionOutbox, event: pb::SessionEvent) -> u64 {
        let seq = outbox.push(event);
        assert_eq!(outbox.flush().unwrap().len(), 1);
        seq
    }

    fn event(text: &str) -> pb::SessionEvent {
        pb::SessionEvent {
            session_id: "ses_x".into(),
            kind: Some(pb::session_event::Kind::Log(pb::SessionLog { message: text.into() })),
            ..Default::default()
        }
    }

    #[test]
    fn numbers_keeps_and_reloads_unacked_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_a").unwrap();
        for i in 0..5 {
            assert_eq!(store(&mut outbox, event(&i.to_string())), i + 1);
        }
        outbox.ack(2).unwrap();
        assert_eq!(outbox.pending().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        drop(outbox);

        // The cursor is persisted lazily: a restart may resend acked events
        // (the server skips them by seq) but never loses an unacked one and
        // never reuses a seq.
        let mut reopened = SessionOutbox::open(dir.path(), "ses_a").unwrap();
        let pending: Vec<u64> = reopened.pending().map(|e| e.seq).collect();
        assert!(pending.ends_with(&[3, 4, 5]), "{pending:?}");
        assert_eq!(store(&mut reopened, event("next")), 6, "numbering continues");
        reopened.ack(6).unwrap();
        assert_eq!(reopened.pending().count(), 0);
        drop(reopened);
        let again = SessionOutbox::open(dir.path(), "ses_a").unwrap();
        assert_eq!(again.last_seq(), 6);
    }

    #[test]
    fn the_cursor_is_persisted_every_so_often() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_p").unwrap();
        for i in 0..(PERSIST_ACK_EVERY + 10) {
            store(&mut outbox, event(&i.to_string()));
        }
        outbox.ack(PERSIST_ACK_EVERY + 5).unwrap();
        drop(outbox);
        let reopened = SessionOutbox::open(dir.path(), "ses_p").unwrap();
        assert_eq!(reopened.pending().count(), 5);
        assert_eq!(reopened.last_seq(), PERSIST_ACK_EVERY + 10);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_numbering_stays_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_b").unwrap();
        store(&mut outbox, event("a"));
        store(&mut outbox, event("b"));
        drop(outbox);
        let path = dir.path().join("ses_b.log");
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2]); // half a record
        fs::write(&path, bytes).unwrap();
        let mut reopened = SessionOutbox::open(dir.path(), "ses_b").unwrap();
        assert_eq!(reopened.pending().count(), 2);
        assert_eq!(store(&mut reopened, event("c")), 3);
        drop(reopened);
        let again = SessionOutbox::open(dir.path(), "ses_b").unwrap();
        assert_eq!(again.pending().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn compaction_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_c").unwrap();
        for i in 0..(COMPACT_AFTER as u64 + 10) {
            store(&mut outbox, event(&i.to_string()));
        }
        outbox.ack(COMPACT_AFTER as u64 + 5).unwrap();
        drop(outbox);
        let again = SessionOutbox::open(dir.path(), "ses_c").unwrap();
        assert_eq!(again.pending().count(), 5);
        assert_eq!(again.last_seq(), COMPACT_AFTER as u64 + 10);
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let outbox_dir = dir.path().join("outbox");
        let mut outbox = SessionOutbox::open(&outbox_dir, "ses_m").unwrap();
        for i in 0..(COMPACT_AFTER as u64 + 1) {
            store(&mut outbox, event(&i.to_string()));
        }
        outbox.ack(COMPACT_AFTER as u64).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&outbox_dir), 0o700);
        assert_eq!(mode(&outbox_dir.join("ses_m.log")), 0o600);
        assert_eq!(mode(&outbox_dir.join("ses_m.ack")), 0o600);
    }

    #[test]
    fn an_ack_beyond_what_was_numbered_counts_only_what_was() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_h").unwrap();
        for i in 0..3 {
            store(&mut outbox, event(&i.to_string()));
        }
        outbox.ack(u64::MAX).unwrap();
        assert_eq!(outbox.acked(), 3);
        assert_eq!(store(&mut outbox, event("next")), 4);
        outbox.ack(u64::MAX).unwrap();
        drop(outbox);
        let mut again = SessionOutbox::open(dir.path(), "ses_h").unwrap();
        assert_eq!(store(&mut again, event("after a restart")), 5);
    }

    #[test]
    fn a_batch_is_stored_with_one_flush_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_w").unwrap();
        store(&mut outbox, event("before"));
        for i in 0..100 {
            assert_eq!(outbox.push(event(&i.to_string())), i + 2);
        }
        assert_eq!(outbox.unflushed().0, 100);
        // Numbered but not flushed: not pending (not sendable), not in the file.
        assert_eq!(outbox.pending().count(), 1);
        let log = dir.path().join("ses_w.log");
        let before = fs::metadata(&log).unwrap().len();
        let flushed = outbox.flush().unwrap();
        assert_eq!(
            flushed.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (2..=101).collect::<Vec<_>>()
        );
        assert_eq!(outbox.unflushed(), (0, 0));
        assert!(fs::metadata(&log).unwrap().len() > before);
        assert_eq!(outbox.pending().count(), 101);
        assert!(outbox.flush().unwrap().is_empty(), "nothing twice");
        drop(outbox);

        let mut reopened = SessionOutbox::open(dir.path(), "ses_w").unwrap();
        let pending: Vec<u64> = reopened.pending().map(|e| e.seq).collect();
        assert_eq!(pending, (1..=101).collect::<Vec<_>>());
        assert_eq!(store(&mut reopened, event("next")), 102);
    }

    #[test]
    fn events_never_flushed_are_not_kept_and_their_seqs_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_u").unwrap();
        store(&mut outbox, event("a"));
        outbox.push(event("b"));
        outbox.push(event("c"));
        drop(outbox); // a crash before the flush: b and c were never sent
        let mut reopened = SessionOutbox::open(dir.path(), "ses_u").unwrap();
        assert_eq!(reopened.pending().count(), 1);
        assert_eq!(store(&mut reopened, event("b again")), 2);
    }

    #[test]
    fn a_batch_after_a_torn_tail_follows_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = SessionOutbox::open(dir.path(), "ses_t").unwrap();
        store(&mut outbox, event("a"));
        drop(outbox);
        let path = dir.path().join("ses_t.log");
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2]); // half a record
        fs::write(&path, bytes).unwrap();
        let mut reopened = SessionOutbox::open(dir.path(), "ses_t").unwrap();
        reopened.push(event("b"));
        reopened.push(event("c"));
        assert_eq!(reopened.flush().unwrap().len(), 2);
        drop(reopened);
        let again = SessionOutbox::open(dir.path(), "ses_t").unwrap();
        assert_eq!(again.pending().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}
