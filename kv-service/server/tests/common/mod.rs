//! What the end-to-end tests share: starting a server process and reading its startup lines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Spawns `cmd` (a `kv-service` command line) with its stdout piped, forwards every stdout line
/// to the returned channel from a thread of its own, and waits (20 s at most) for the line
/// starting with "ready". Returns the child, the channel of later lines, and the lines up to
/// and including "ready".
pub fn spawn_until_ready(cmd: &mut Command) -> (Child, mpsc::Receiver<String>, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut startup = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("server not ready; output so far: {startup:?}"));
        let ready = l.starts_with("ready");
        startup.push(l);
        if ready {
            break;
        }
    }
    (child, rx, startup)
}

/// Waits (polling every 10 ms) for `child` to exit; kills it and panics after `d`.
pub fn wait_timeout(child: &mut Child, d: Duration) -> ExitStatus {
    let end = Instant::now() + d;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("child did not exit within {d:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
