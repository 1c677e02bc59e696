//! A session's changes as a unified diff, fetched from its machine when an
//! authorized user asks: file contents leave the machine only this way.

use std::time::Duration;

use futures::Stream;
use oma_proto::ids::SessionId;
use oma_proto::pb;

use crate::service::live::diffs::DiffGuard;
use crate::service::live::stream::frame;
use crate::service::rights;
use crate::service::{Caller, Service, ServiceError, ServiceResult};

/// The most diff one call returns.
pub const MAX_DIFF_BYTES: u64 = 8 * 1024 * 1024;

/// How long the machine may take for each piece of the diff.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// One piece of the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffPiece {
    pub data: Vec<u8>,
    /// The diff was cut at [`MAX_DIFF_BYTES`] (set on the last piece).
    pub truncated: bool,
}

impl Service {
    /// Asks the session's machine for its diff and streams the pieces.
    /// Needs the right to see the session.
    pub async fn session_diff(
        &self,
        caller: &Caller,
        session_id: SessionId,
    ) -> ServiceResult<impl Stream<Item = ServiceResult<DiffPiece>> + Send + 'static> {
        let caller = caller.clone();
        let sid = session_id.clone();
        let session = self
            .store
            .read("session_diff", move |conn| rights::session_to_see(conn, &caller, &sid))
            .await?;
        if session.workspace.is_none() {
            return Err(ServiceError::FailedPrecondition(format!(
                "session {session_id} has no workspace: it works in a private folder, so it has no diff"
            )));
        }
        let request_id = format!("diff_{}", uuid::Uuid::new_v4().simple());
        let (guard, rx) = self.live.diffs.expect(&session.runtime_id, &request_id, MAX_DIFF_BYTES);
        let request = pb::DiffRequest {
            request_id,
            session_id: session.id.clone(),
            max_bytes: MAX_DIFF_BYTES,
        };
        self.send_to_runtime(
            &session.runtime_id,
            frame(pb::control_frame::Frame::DiffRequest(request)),
        )
        .await?;
        Ok(pieces(rx, guard, session.id))
    }
}

/// The chunks as pieces, until the last one; an error chunk or silence
/// ends the stream with an error.
fn pieces(
    rx: tokio::sync::mpsc::UnboundedReceiver<pb::DiffChunk>,
    guard: DiffGuard,
    session_id: String,
) -> impl Stream<Item = ServiceResult<DiffPiece>> + Send + 'static {
    futures::stream::unfold(Some((rx, guard)), move |state| {
        let session_id = session_id.clone();
        async move {
            let (mut rx, guard) = state?;
            let chunk = match tokio::time::timeout(CHUNK_TIMEOUT, rx.recv()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    let e = ServiceError::Unavailable(format!(
                        "the machine of session {session_id} stopped sending its diff"
                    ));
                    return Some((Err(e), None));
                }
                Err(_) => {
                    let e = ServiceError::DeadlineExceeded(format!(
                        "the machine of session {session_id} sent no diff within {}s",
                        CHUNK_TIMEOUT.as_secs()
                    ));
                    return Some((Err(e), None));
                }
            };
            if !chunk.error.is_empty() {
                let e = ServiceError::FailedPrecondition(format!(
                    "the machine cannot diff session {session_id}: {}",
                    chunk.error
                ));
                return Some((Err(e), None));
            }
            let piece = DiffPiece {
                data: chunk.data,
                truncated: chunk.truncated,
            };
            let next = (!chunk.last).then_some((rx, guard));
            Some((Ok(piece), next))
        }
    })
}
