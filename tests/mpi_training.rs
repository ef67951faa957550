//! Data-parallel training on MPI (`cargo test --release --features mpi --test mpi_training`, with Open
//! MPI's `mpirun` on the PATH; `.ci/run` installs it): `mpirun -np 2 incept train` against the same
//! command in one process, on the committed Fashion-MNIST slice, and what happens when a rank dies or
//! hangs.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempDir, rel_l2};
use incept::io::checkpoint::TensorFile;
use incept::models::{self, ModelConfig};

fn incept() -> &'static str {
    env!("CARGO_BIN_EXE_incept")
}

/// `mpirun` for 2 ranks on this machine (as root in CI, on 2 cores).
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "2", incept()]);
    c
}

/// googlenet-d2l at 32×32 on the 512 training images of the slice, batch 64: 8 steps an epoch, so 10
/// steps cross an epoch's end (rank 0 evaluates and writes the checkpoint there).
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let slice = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fashion-mnist-slice");
    let mut args: Vec<String> = ["--threads", "1", "train", "--model", "googlenet-d2l", "--resize", "32"]
        .into_iter()
        .chain(["--batch", "64", "--quiet", "--data"])
        .map(String::from)
        .collect();
    args.push(slice.display().to_string());
    args.extend(["--out".to_string(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn params(path: &Path) -> Vec<(String, Vec<f32>)> {
    let config = ModelConfig {
        in_channels: 1,
        size: [32, 32],
        classes: 10,
        aux_heads: false,
    };
    let graph = models::build("googlenet-d2l", config).unwrap();
    let values = TensorFile::read(path).unwrap().params_for(&graph, path).unwrap();
    graph.params.iter().map(|p| p.name.clone()).zip(values).collect()
}

fn run(mut command: Command) -> String {
    let out = command.output().expect("start the command");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With SGD the update is linear in the gradient, so two ranks differ from one process only by where
/// the batch's sum is split: each rank sums its 32 images, and the two halves are added (one process
/// sums all 64 in one chain). Ten steps keep every tensor within 1e-6 relative (measured: 4.6e-8, half
/// the tensors identical).
#[test]
fn two_ranks_train_as_one_process_with_sgd() {
    let dir = TempDir::new("mpi-sgd");
    let steps = ["--steps", "10", "--optimizer", "sgd", "--lr", "0.05"];
    let (one, two) = (dir.join("one"), dir.join("two"));
    run({
        let mut c = Command::new(incept());
        c.args(train_args(&one, &steps));
        c
    });
    let stdout = run({
        let mut c = mpirun();
        c.args(train_args(&two, &steps));
        c
    });
    assert!(stdout.contains("on 2 ranks"), "{stdout}");
    // Rank 0 alone prints: one line per epoch.
    assert_eq!(stdout.matches("epoch 1,").count(), 1, "{stdout}");
    let (a, b) = (
        params(&one.join("checkpoint.safetensors")),
        params(&two.join("checkpoint.safetensors")),
    );
    let mut worst = (0f64, String::new());
    let mut identical = 0;
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        identical += usize::from(x == y);
        let rel = rel_l2(y, x);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    eprintln!(
        "after 10 SGD steps: {identical} of {} tensors identical, worst {:.1e} ({})",
        a.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 <= 1e-6, "{} differs by {:.2e}", worst.1, worst.0);
}

/// Starts a 2-rank run of many steps and waits until rank 0 has logged a step; returns the child and
/// rank 1's process id.
fn start_long_run(out: &Path, timeout: &str) -> (Child, u32) {
    let log = out.join("steps.jsonl");
    std::fs::create_dir_all(out).unwrap();
    let child = mpirun()
        .args(train_args(out, &["--steps", "100000", "--collective-timeout", timeout]))
        .arg("--step-log")
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mpirun");
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(true, |s| s.lines().count() < 2) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no step logged in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, rank_pid(out, 1))
}

/// The process of rank `rank` among the ones training into `out` (Open MPI puts the rank in each
/// process's environment).
fn rank_pid(out: &Path, rank: usize) -> u32 {
    let marker = out.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let is_rank = environ
            .split(|&b| b == 0)
            .any(|v| v == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes());
        if is_rank && String::from_utf8_lossy(&cmdline).contains(&marker) {
            return pid;
        }
    }
    panic!("no process of rank {rank} trains into {marker}");
}

/// Waits for `child` to end, at most `limit`; returns its stderr and how long it took.
fn finish(mut child: Child, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the run did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a run that lost a rank must fail");
    (
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
        started.elapsed(),
    )
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

/// A rank that dies: mpirun names it and stops the other.
#[test]
fn a_killed_rank_stops_the_run_with_its_name() {
    let dir = TempDir::new("mpi-kill");
    let out: PathBuf = dir.join("run");
    let (child, rank1) = start_long_run(&out, "60");
    signal(rank1, "-KILL");
    let (messages, took) = finish(child, Duration::from_secs(60));
    eprintln!("ended {took:?} after rank 1 was killed:\n{messages}");
    assert!(
        messages.contains("rank 1") && messages.contains("exited on signal 9"),
        "{messages}"
    );
}

/// A rank that stops answering (here: stopped by SIGSTOP): rank 0 gives up at the collective timeout
/// with an error, and every rank ends.
#[test]
fn a_hung_rank_ends_the_run_at_the_collective_timeout() {
    let dir = TempDir::new("mpi-hang");
    let out: PathBuf = dir.join("run");
    let (child, rank1) = start_long_run(&out, "3");
    signal(rank1, "-STOP");
    let (messages, took) = finish(child, Duration::from_secs(60));
    eprintln!("ended {took:?} after rank 1 was stopped:\n{messages}");
    assert!(
        messages.contains("rank 0 of 2") && messages.contains("did not complete within 3 s"),
        "{messages}"
    );
    assert!(took >= Duration::from_secs(3), "ended before the timeout: {took:?}");
}
