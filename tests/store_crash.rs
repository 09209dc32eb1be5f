//! G3 under kill -9: a child process learns and forgets in a loop, logging each call before it
//! starts ("try") and after it returns OK ("ok"); the parent kills it with SIGKILL at random
//! moments and reopens the state dir, which must hold exactly the acknowledged samples, or
//! those plus the one call in flight. 10 kills by default; `LETHE_STRESS=1` makes it 1 000
//! and reports the acknowledged calls, the acknowledged calls lost (their effect missing after
//! reopening) and the corrupt states (reopening failed, or weights that differ from a fresh
//! head's); the test fails unless both are 0.
//! The child is this test binary itself, running this same test with `LETHE_CRASH_CHILD` set
//! to the state dir: it then never returns (it calls until it is killed), so it cannot pass.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::store::*;
use lethe::Error;
use rand::Rng;

const CHILD_DIR: &str = "LETHE_CRASH_CHILD";
const CHILD_SEED: &str = "LETHE_CRASH_SEED";
const TEST: &str = "kill_9_at_random_moments_loses_no_acknowledged_call";

/// One call, as logged: `learn 1 2 3`, `forget 4 5`, `forget-all`, `reopen`.
fn apply(state: &mut BTreeSet<u64>, line: &str) {
    let mut words = line.split_whitespace();
    let op = words.next().unwrap();
    let ids = words.map(|w| w.parse::<u64>().unwrap());
    match op {
        "learn" => state.extend(ids),
        "forget" => ids.for_each(|id| assert!(state.remove(&id))),
        "forget-all" => state.clear(),
        "reopen" => {}
        _ => panic!("bad log line {line:?}"),
    }
}

/// The child: learns and forgets in `dir` until it is killed.
fn child(dir: &Path) -> ! {
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .unwrap();
    let mut rng = common::rng(seed);
    let mut next_id = seed << 32;
    let mut head = Some(open(dir).unwrap());
    loop {
        let h = head.as_ref().unwrap();
        let present = h.ids();
        let line = match rng.random_range(0..20) {
            0 => "reopen".to_string(),
            1 if present.len() > 40 => "forget-all".to_string(),
            k if k < 9 && !present.is_empty() => {
                let n = 1 + rng.random_range(0..4.min(present.len() as u64)) as usize;
                let mut chosen = BTreeSet::new();
                while chosen.len() < n {
                    chosen.insert(present[rng.random_range(0..present.len() as u64) as usize]);
                }
                let ids: Vec<String> = chosen.iter().map(u64::to_string).collect();
                format!("forget {}", ids.join(" "))
            }
            _ => {
                let n = 1 + rng.random_range(0..6);
                let ids: Vec<String> = (0..n).map(|i| (next_id + i).to_string()).collect();
                next_id += n;
                format!("learn {}", ids.join(" "))
            }
        };
        // One write per line, so that a kill never leaves half a line.
        log.write_all(format!("try {line}\n").as_bytes()).unwrap();
        let mut words = line.split_whitespace();
        let op = words.next().unwrap();
        let ids: Vec<u64> = words.map(|w| w.parse().unwrap()).collect();
        match op {
            "learn" => learn(h, &ids).unwrap(),
            "forget" => h.forget(&ids).unwrap(),
            "forget-all" => h.forget_all().unwrap(),
            _ => {
                head.take().unwrap().close().unwrap();
                head = Some(open(dir).unwrap());
            }
        }
        log.write_all(b"ok\n").unwrap();
    }
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_call() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
    }
    let stress = std::env::var_os("LETHE_STRESS").is_some_and(|v| v == "1");
    let kills = if stress { 1000 } else { 10 };
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let log_path = dir.with_extension("log");
    let exe = std::env::current_exe().unwrap();
    let mut rng = common::rng(0x5eed);
    // The acknowledged samples, and for every id the acknowledged call that last changed it.
    let mut state = BTreeSet::new();
    let mut owner: HashMap<u64, usize> = HashMap::new();
    let started = Instant::now();
    let (mut calls, mut lost, mut corrupt) = (0usize, 0usize, 0usize);
    for round in 1..=kills {
        std::fs::write(&log_path, "").unwrap();
        let mut child = Command::new(&exe)
            .args([TEST, "--exact", "--test-threads=1"])
            .env(CHILD_DIR, &dir)
            .env(CHILD_SEED, round.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if round == 1 {
            // One writer: while the child has it open, nobody else may open it.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !std::fs::read_to_string(&log_path).unwrap().contains("ok") {
                assert!(Instant::now() < deadline, "the child made no call");
                std::thread::sleep(Duration::from_millis(5));
            }
            match open(&dir) {
                Err(Error::State { message, .. }) => {
                    assert!(message.contains("another"), "{message}")
                }
                other => panic!(
                    "opened a state dir held by another process: {}",
                    other.is_ok()
                ),
            }
        }
        std::thread::sleep(Duration::from_millis(30 + rng.random_range(0..300)));
        child.kill().unwrap();
        child.wait().unwrap();

        let log = std::fs::read_to_string(&log_path).unwrap();
        let mut in_flight = None;
        for line in log.lines() {
            match line.strip_prefix("try ") {
                Some(call) => in_flight = Some(call.to_string()),
                None => {
                    assert_eq!(line, "ok", "bad log line");
                    let call = in_flight.take().expect("ok after try");
                    calls += 1;
                    let before = state.clone();
                    apply(&mut state, &call);
                    for id in before.symmetric_difference(&state) {
                        owner.insert(*id, calls);
                    }
                }
            }
        }
        let reopened = open(&dir).and_then(|head| {
            let ids: BTreeSet<u64> = head.ids().into_iter().collect();
            let list: Vec<u64> = ids.iter().copied().collect();
            let sound = head.verify()?.ok() && head.weights()? == fresh_weights(&list);
            head.close()?;
            Ok((ids, sound))
        });
        let ids = match reopened {
            Ok((ids, true)) => ids,
            outcome => {
                eprintln!(
                    "round {round}: a corrupt state: {:?}",
                    outcome.map(|(_, s)| s)
                );
                corrupt += 1;
                lethe::store::erase(&dir).unwrap();
                state.clear();
                owner.clear();
                continue;
            }
        };
        if ids != state {
            let mut after = state.clone();
            if let Some(call) = &in_flight {
                apply(&mut after, call);
            }
            if ids != after {
                let missed: HashSet<usize> = ids
                    .symmetric_difference(&state)
                    .filter_map(|id| owner.get(id).copied())
                    .collect();
                eprintln!(
                    "round {round}: lost acknowledged calls {missed:?} (in flight: {in_flight:?})"
                );
                lost += missed.len().max(1);
            }
            // Changes of the call in flight (0: no acknowledged call owns them).
            for id in ids.symmetric_difference(&state) {
                owner.insert(*id, 0);
            }
            state = ids;
        }
    }
    eprintln!(
        "{kills} kills: {calls} acknowledged calls, {lost} lost, {corrupt} corrupt states; {} \
         samples at the end, {:.1} s",
        state.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (lost, corrupt),
        (0, 0),
        "lost acknowledged calls, corrupt states"
    );
    assert!(
        calls > kills,
        "only {calls} calls were acknowledged in {kills} rounds"
    );
}
