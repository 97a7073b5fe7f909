//! Child process for the engine's crash and disk-full tests (`tests/engine_crash.rs`,
//! `tests/engine_errors.rs`); not a user tool.
//!
//! - `engine-crash-child crash DIR SEED MODE`: opens the engine in DIR (2 workers, 1 MiB cache,
//!   durability MODE: `page`, `periodic` or `sync`) and runs puts and deletes from 4 threads,
//!   each on its own keys, forever. Before each operation it prints `I <key> P <counter>
//!   <len>` or `I <key> D`, after its acknowledgement `A <key>`, one line each, flushed. The
//!   parent SIGKILLs it.
//! - `engine-crash-child fsize DIR MODE`: fills a slab, lowers RLIMIT_FSIZE below the file's
//!   length (SIGXFSZ ignored), overwrites an item that lies past the limit and prints
//!   `WRITE_ERR <error>` and whether the old value is still read back (`OLD_VALUE_KEPT`);
//!   then grows a file past the limit and prints `GROW_ERR <error>`. (In `periodic` mode the
//!   write that fails is the staging area's, which lies past the limit too.)
//! - `engine-crash-child no-uring DIR`: installs a seccomp filter that refuses
//!   `io_uring_setup` (EPERM), as a container profile may; opens the engine with
//!   `IoMode::Uring` and prints `URING_ERR <error>`, then with `IoMode::Auto` and prints
//!   `BACKEND <name>`, writes, reopens and prints `READ_BACK` if the data survived.
use std::io::Write;
use std::sync::{Arc, Mutex};

use kv_engine::{Durability, Engine, EngineConfig, IoMode};

/// The durability mode named on the command line.
fn mode(arg: Option<&String>) -> Result<Durability, Box<dyn std::error::Error>> {
    Ok(match arg.map(String::as_str) {
        None | Some("page") => Durability::Page,
        Some("periodic") => Durability::Periodic {
            interval: std::time::Duration::from_millis(20),
        },
        Some("sync") => Durability::Sync,
        Some(other) => return Err(format!("unknown durability {other:?}").into()),
    })
}

/// Number of keys used by the crash test; key `i` is `format!("key-{i:04}")`.
pub const KEYS: u64 = 240;

/// The value written for (key, counter) with length `len`: deterministic, so the parent
/// can recompute it.
fn value_for(key: u64, counter: u64, len: usize) -> Vec<u8> {
    let seed = format!("{key}:{counter}:");
    seed.bytes().cycle().take(len).collect()
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn crash(dir: &str, seed: u64, durability: Durability) -> Result<(), Box<dyn std::error::Error>> {
    let config = EngineConfig {
        workers: 2,
        cache_bytes: 1 << 20,
        durability,
        stage_bytes: 8 << 20,
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::open(dir, config)?);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let out = Arc::clone(&out);
            std::thread::spawn(move || -> Result<(), String> {
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t + 1);
                let say = |line: String| -> Result<(), String> {
                    let mut o = out.lock().map_err(|e| e.to_string())?;
                    o.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
                    o.flush().map_err(|e| e.to_string())
                };
                loop {
                    // Thread t owns keys with key % 4 == t.
                    let key = (xorshift(&mut rng) % (KEYS / 4)) * 4 + t;
                    let name = format!("key-{key:04}");
                    if xorshift(&mut rng).is_multiple_of(5) {
                        say(format!("I {key} D\n"))?;
                        engine.delete(name.as_bytes()).map_err(|e| e.to_string())?;
                    } else {
                        let counter = xorshift(&mut rng);
                        let len = match xorshift(&mut rng) % 4 {
                            0 => 10,
                            1 => 500,
                            2 => 2000,
                            _ => 9000,
                        };
                        say(format!("I {key} P {counter} {len}\n"))?;
                        engine
                            .put(name.as_bytes(), &value_for(key, counter, len))
                            .map_err(|e| e.to_string())?;
                    }
                    say(format!("A {key}\n"))?;
                }
            })
        })
        .collect();
    for t in threads {
        match t.join() {
            Ok(Err(e)) => eprintln!("thread failed: {e}"),
            Err(_) => eprintln!("thread panicked"),
            Ok(Ok(())) => {}
        }
    }
    Err("writer threads stopped".into())
}

fn fsize(dir: &str, durability: Durability) -> Result<(), Box<dyn std::error::Error>> {
    let config = EngineConfig {
        workers: 1,
        cache_bytes: 64 << 10,
        durability,
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir, config)?;
    // 600 items of ~1 KiB: the 1 KiB-class file grows to 1 MiB (256 KiB, 512 KiB, 1 MiB).
    for i in 0..600u32 {
        engine.put(format!("k{i:05}").as_bytes(), &[b'o'; 900])?;
    }
    // Evict the cached pages so the overwrite below needs its read and write.
    for i in 0..100u32 {
        let _ = engine.get(format!("k{i:05}").as_bytes())?;
    }
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let limit = libc::rlimit {
        rlim_cur: 256 << 10,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // Item 590 lies at ~590 KiB, beyond the 256 KiB limit: its page write fails.
    match engine.put(b"k00590", &[b'n'; 900]) {
        Ok(()) => println!("WRITE_OK"),
        Err(e) => println!("WRITE_ERR {e}"),
    }
    if engine.get(b"k00590")? == Some(vec![b'o'; 900]) {
        println!("OLD_VALUE_KEPT");
    }
    // A new class: its file must be created and grown to 256 KiB; 16 KiB items fill it.
    let mut grow_err = None;
    for i in 0..40u32 {
        if let Err(e) = engine.put(format!("big{i}").as_bytes(), &[b'b'; 12000]) {
            grow_err = Some(e);
            break;
        }
    }
    match grow_err {
        Some(e) => println!("GROW_ERR {e}"),
        None => println!("GROW_OK"),
    }
    // Reads still work.
    if engine.get(b"k00001")? == Some(vec![b'o'; 900]) {
        println!("READS_OK");
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// Makes `io_uring_setup` fail with EPERM in this process from now on (x86_64 numbering).
fn refuse_io_uring() -> Result<(), Box<dyn std::error::Error>> {
    const SYS_IO_URING_SETUP: u32 = 425;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut filter = [
        // Load the system call number (offset 0 of struct seccomp_data).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // io_uring_setup: fall through to EPERM; anything else: skip to ALLOW.
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: SYS_IO_URING_SETUP,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `prog` points to `filter`, a valid BPF program that outlives the call (the
    // kernel copies it).
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

fn no_uring(dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    refuse_io_uring()?;
    let uring = EngineConfig {
        workers: 1,
        io: IoMode::Uring,
        ..EngineConfig::default()
    };
    match Engine::open(dir, uring) {
        Ok(_) => println!("URING_OK"),
        Err(e) => println!("URING_ERR {e}"),
    }
    let auto = EngineConfig {
        workers: 1,
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir, auto.clone())?;
    println!(
        "BACKEND {}",
        engine.stats()?.first().map_or("", |s| s.backend)
    );
    for i in 0..500u32 {
        engine.put(format!("k{i:04}").as_bytes(), &i.to_le_bytes())?;
    }
    engine.close();
    let engine = Engine::open(dir, auto)?;
    let ok = (0..500u32).all(|i| {
        engine.get(format!("k{i:04}").as_bytes()).ok() == Some(Some(i.to_le_bytes().to_vec()))
    });
    if ok {
        println!("READ_BACK");
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("crash") => {
            let dir = args.get(2).ok_or("missing DIR")?;
            let seed = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
            crash(dir, seed, mode(args.get(4))?)
        }
        Some("fsize") => fsize(args.get(2).ok_or("missing DIR")?, mode(args.get(3))?),
        Some("no-uring") => no_uring(args.get(2).ok_or("missing DIR")?),
        _ => Err(
            "usage: engine-crash-child crash DIR SEED MODE | fsize DIR MODE | no-uring DIR".into(),
        ),
    }
}
