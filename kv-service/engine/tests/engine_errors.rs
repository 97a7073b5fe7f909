//! Every error case: key too large, value too large, wrong W, unknown format, disk full
//! (file-size cap), and real write errors from the kernel (RLIMIT_FSIZE in a child).
use std::process::Command;

use kv_engine::manifest::{self, MANIFEST_FILE};
use kv_engine::{open_workers, Engine, EngineConfig, Error, Op, MAX_KEY_LEN, MAX_VALUE_LEN};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

fn cfg(workers: usize) -> EngineConfig {
    EngineConfig {
        workers,
        ..EngineConfig::default()
    }
}

#[test]
fn size_limits_are_typed_errors_and_the_limits_themselves_work() {
    let dir = tempdir();
    let engine = Engine::open(dir.path(), cfg(2)).expect("open");
    let big_key = vec![b'k'; MAX_KEY_LEN + 1];
    assert!(matches!(
        engine.put(&big_key, b"v"),
        Err(Error::KeyTooLarge { len, max }) if len == MAX_KEY_LEN + 1 && max == MAX_KEY_LEN
    ));
    assert!(matches!(
        engine.get(&big_key),
        Err(Error::KeyTooLarge { .. })
    ));
    assert!(matches!(
        engine.delete(&big_key),
        Err(Error::KeyTooLarge { .. })
    ));
    let big_value = vec![1u8; MAX_VALUE_LEN + 1];
    assert!(matches!(
        engine.put(b"k", &big_value),
        Err(Error::ValueTooLarge { len, max }) if len == MAX_VALUE_LEN + 1 && max == MAX_VALUE_LEN
    ));
    // Exactly at the limits: stored and read back, also after a reopen.
    let key = vec![b'K'; MAX_KEY_LEN];
    let value: Vec<u8> = (0..MAX_VALUE_LEN).map(|i| (i % 251) as u8).collect();
    engine.put(&key, &value).expect("largest item");
    assert_eq!(engine.get(&key).expect("get").as_deref(), Some(&value[..]));
    engine.close();
    let engine = Engine::open(dir.path(), cfg(2)).expect("reopen");
    assert_eq!(engine.get(&key).expect("get").as_deref(), Some(&value[..]));
    // Shrinking it moves it back to a small class.
    engine.put(&key, b"small").expect("shrink");
    assert_eq!(engine.get(&key).expect("get"), Some(b"small".to_vec()));
}

#[test]
fn missing_keys_are_not_found_without_io() {
    let dir = tempdir();
    let mut opened = open_workers(dir.path(), &cfg(1)).expect("open");
    let w = &mut opened.workers[0];
    w.submit(
        Op::Get {
            key: b"nope".to_vec(),
        },
        7,
    );
    w.submit(
        Op::Delete {
            key: b"nope".to_vec(),
        },
        8,
    );
    let mut out = Vec::new();
    w.poll(&mut out);
    assert_eq!(out.len(), 2, "answered in the first poll");
    assert!(out
        .iter()
        .all(|c| matches!(c.result, Ok(kv_engine::Reply::NotFound))));
    let s = w.stats();
    assert_eq!((s.reads, s.writes), (0, 0), "no I/O for a missing key");
}

#[test]
fn wrong_worker_count_is_refused() {
    let dir = tempdir();
    let engine = Engine::open(dir.path(), cfg(3)).expect("open");
    engine.put(b"a", b"1").expect("put");
    engine.close();
    match Engine::open(dir.path(), cfg(2)) {
        Err(Error::WorkerCountMismatch {
            on_disk: 3,
            requested: 2,
        }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened with the wrong W"),
    }
    // The data is untouched and still opens with the right W.
    let engine = Engine::open(dir.path(), cfg(3)).expect("reopen");
    assert_eq!(engine.get(b"a").expect("get"), Some(b"1".to_vec()));
}

#[test]
fn unknown_format_is_refused() {
    let dir = tempdir();
    Engine::open(dir.path(), cfg(1)).expect("open").close();
    let path = dir.path().join(MANIFEST_FILE);
    // A well-formed manifest of a future version 3.
    let mut m = manifest::encode(1);
    m[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32c::crc32c(&m[0..20]);
    m[20..24].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, m).expect("write manifest");
    match Engine::open(dir.path(), cfg(1)) {
        Err(Error::UnknownFormat(msg)) => assert!(msg.contains("version 3"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened an unknown format"),
    }
    std::fs::write(&path, b"not a manifest at all").expect("write");
    assert!(matches!(
        Engine::open(dir.path(), cfg(1)),
        Err(Error::UnknownFormat(_))
    ));
    // Slab files but no manifest.
    std::fs::remove_file(&path).expect("rm");
    std::fs::write(dir.path().join("worker-0000-class-100.slab"), b"").expect("write");
    assert!(matches!(
        Engine::open(dir.path(), cfg(1)),
        Err(Error::UnknownFormat(_))
    ));
}

#[test]
fn invalid_config_is_refused() {
    let dir = tempdir();
    assert!(matches!(
        Engine::open(dir.path(), cfg(0)),
        Err(Error::InvalidConfig(_))
    ));
    let c = EngineConfig {
        queue_depth: 0,
        ..cfg(1)
    };
    assert!(matches!(
        Engine::open(dir.path(), c),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn full_disk_is_an_error_not_a_panic_and_space_is_reused() {
    let dir = tempdir();
    let config = EngineConfig {
        workers: 1,
        max_file_bytes: Some(256 << 10),
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir.path(), config.clone()).expect("open");
    let mut stored = 0u32;
    let err = loop {
        match engine.put(format!("k{stored:06}").as_bytes(), &[7u8; 900]) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 10_000, "the cap was never hit");
    };
    assert_eq!(stored, 256, "256 KiB of 1 KiB slots");
    match &err {
        Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
        e => panic!("wrong error: {e}"),
    }
    // Reads still work; a delete frees a slot that the next insert reuses.
    assert_eq!(engine.get(b"k000010").expect("get"), Some(vec![7u8; 900]));
    assert!(engine.delete(b"k000010").expect("delete"));
    engine
        .put(b"new", &[8u8; 900])
        .expect("reuses the freed slot");
    assert!(engine.put(b"newer", &[8u8; 900]).is_err());
    engine.close();
    let engine = Engine::open(dir.path(), config).expect("reopen");
    assert_eq!(engine.get(b"new").expect("get"), Some(vec![8u8; 900]));
    assert_eq!(engine.get(b"k000010").expect("get"), None);
}

#[test]
fn kernel_write_errors_surface_and_are_undone() {
    // Page mode: the page write fails; periodic mode: the staging area's write does.
    for mode in ["page", "periodic"] {
        kernel_write_errors_in(mode);
    }
}

fn kernel_write_errors_in(mode: &str) {
    let dir = tempdir();
    let out = Command::new(env!("CARGO_BIN_EXE_engine-crash-child"))
        .args(["fsize", dir.path().to_str().expect("utf-8"), mode])
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("WRITE_ERR") && l.contains("File too large")),
        "{stdout}"
    );
    assert!(
        stdout.contains("OLD_VALUE_KEPT"),
        "failed write undone in memory: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("GROW_ERR") && l.contains("File too large")),
        "{stdout}"
    );
    assert!(stdout.contains("READS_OK"), "{stdout}");
    // After the child is gone the data opens and holds the old value.
    let engine = Engine::open(dir.path(), cfg(1)).expect("reopen");
    assert_eq!(
        engine.get(b"k00590").expect("get"),
        Some(vec![b'o'; 900]),
        "{mode}"
    );
}

/// Where a seccomp filter refuses io_uring (as some container profiles do), `IoMode::Uring`
/// is a clear error and the default `IoMode::Auto` falls back to pread / pwrite — and works.
#[cfg(target_arch = "x86_64")]
#[test]
fn without_io_uring_the_engine_falls_back_to_pread_pwrite() {
    let dir = tempdir();
    let out = Command::new(env!("CARGO_BIN_EXE_engine-crash-child"))
        .arg("no-uring")
        .arg(dir.path())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("URING_ERR") && l.contains("io_uring")),
        "{stdout}"
    );
    assert!(stdout.contains("BACKEND pread/pwrite"), "{stdout}");
    assert!(stdout.contains("READ_BACK"), "{stdout}");
}
