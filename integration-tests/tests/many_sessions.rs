//! Many sessions on one daemon: SIGTERM stops every session's ACP child,
//! the ones that ignore their stdin closing too, side by side (each may take
//! the whole grace) and leaves no process behind. (What an idle session
//! costs the daemon is `oma-bench --only idle`.)

use std::time::Duration;

use oma_integration_tests::one_machine::{self, gone};

/// Generous: one grace (5 s) for all children at once, not one each.
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn sigterm_stops_children_that_ignore_stdin_close_and_leaves_none() {
    let mut s = one_machine::start("OMA_TEST_AGENT_IGNORE_EOF = \"1\"", &[])
        .await
        .unwrap();
    let pids = s.start_sessions(10).await.unwrap();
    assert!(
        pids.iter().all(|pid| !gone(*pid)),
        "a child died before the daemon stopped"
    );

    let process = s.machine.process.as_mut().unwrap();
    process.signal("TERM").unwrap();
    let status = process.wait_exit(EXIT_DEADLINE).unwrap();
    assert!(status.success(), "oma-agent exited with {status}");
    let left: Vec<i32> = pids.into_iter().filter(|pid| !gone(*pid)).collect();
    assert!(
        left.is_empty(),
        "children left running after the daemon exited: {left:?}"
    );
}
