//! Training progress for people and for logs: a bar when stdout is a terminal (with the `cli` feature,
//! which brings indicatif), otherwise a plain line after the first step and then every few seconds
//! (step, epoch, running loss and accuracy, img/s and the whole run's time left), so a log shows the run
//! is alive and when it will end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Where a run stands after a step, as [`Progress::step`] shows it.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    /// Steps taken in the whole run, resumed steps included.
    pub global_step: u64,
    /// The epoch under way, from 0.
    pub epoch: usize,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Running mean loss and accuracy over this epoch.
    pub loss: f64,
    /// See `loss`.
    pub accuracy: f64,
    /// Training images per second over this epoch.
    pub images_per_second: f64,
}

enum Display {
    Hidden,
    #[cfg(feature = "cli")]
    Bar(indicatif::ProgressBar),
    Lines {
        every: Duration,
        last: Option<Instant>,
    },
}

/// A run's progress display.
pub struct Progress {
    display: Display,
    epochs: usize,
    batches_per_epoch: usize,
    /// Steps the whole run will take.
    total_steps: u64,
    /// The step this process started at, and when: the rate for the time left.
    first_step: u64,
    started: Instant,
}

impl Progress {
    /// A bar on a terminal, plain lines every `every` otherwise, nothing unless `show`. The run takes
    /// `total_steps` steps in all and this process starts after `first_step` of them.
    pub fn new(
        show: bool,
        every: Duration,
        epochs: usize,
        batches_per_epoch: usize,
        total_steps: u64,
        first_step: u64,
    ) -> Progress {
        let display = match (show, std::io::stdout().is_terminal()) {
            (false, _) => Display::Hidden,
            #[cfg(feature = "cli")]
            (true, true) => Display::Bar(indicatif::ProgressBar::hidden()),
            (true, _) => Display::Lines { every, last: None },
        };
        Progress {
            display,
            epochs,
            batches_per_epoch,
            total_steps,
            first_step,
            started: Instant::now(),
        }
    }

    /// Starts epoch `epoch` (from 0) at batch `batch`.
    pub fn start_epoch(&mut self, epoch: usize, batch: usize) {
        #[cfg(not(feature = "cli"))]
        let _ = (epoch, batch);
        #[cfg(feature = "cli")]
        if let Display::Bar(bar) = &mut self.display {
            let new = indicatif::ProgressBar::new(self.batches_per_epoch as u64);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "epoch {}/{} {{bar:30}} {{pos}}/{{len}} [{{elapsed_precise}}] {{msg}}",
                epoch + 1,
                self.epochs
            ))
            .expect("a valid progress template");
            new.set_style(style);
            new.set_position(batch as u64);
            *bar = new;
        }
    }

    /// Shows `s`: the bar moves; a line is printed after this process's first step and then whenever
    /// `every` has passed.
    pub fn step(&mut self, s: &Status) {
        let left = self.time_left(s.global_step);
        let figures = format!(
            "loss {:.4} acc {:.3} {:.1} img/s, run {} left",
            s.loss,
            s.accuracy,
            s.images_per_second,
            clock(left)
        );
        match &mut self.display {
            Display::Hidden => {}
            #[cfg(feature = "cli")]
            Display::Bar(bar) => {
                bar.set_position(s.batch as u64);
                bar.set_message(figures);
            }
            Display::Lines { every, last } => {
                if last.is_none_or(|t| t.elapsed() >= *every) {
                    *last = Some(Instant::now());
                    println!(
                        "step {}/{} (epoch {}/{}, batch {}/{}): {figures}",
                        s.global_step,
                        self.total_steps,
                        s.epoch + 1,
                        self.epochs,
                        s.batch,
                        self.batches_per_epoch
                    );
                }
            }
        }
    }

    /// Clears the bar at the end of an epoch (lines need nothing).
    pub fn finish_epoch(&mut self) {
        #[cfg(feature = "cli")]
        if let Display::Bar(bar) = &self.display {
            bar.finish_and_clear();
        }
    }

    /// Leaves the bar as it is, when the run fails.
    pub fn abandon(&mut self) {
        #[cfg(feature = "cli")]
        if let Display::Bar(bar) = &self.display {
            bar.abandon();
        }
    }

    /// The whole run's time left at this process's rate so far.
    fn time_left(&self, global_step: u64) -> Option<Duration> {
        let done = global_step.saturating_sub(self.first_step);
        if done == 0 {
            return None;
        }
        let per_step = self.started.elapsed().as_secs_f64() / done as f64;
        let left = self.total_steps.saturating_sub(global_step) as f64 * per_step;
        Some(Duration::from_secs_f64(left))
    }
}

/// `h:mm:ss`, or `?` before there is a rate.
fn clock(d: Option<Duration>) -> String {
    match d {
        Some(d) => {
            let s = d.as_secs();
            format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        }
        None => "?".to_string(),
    }
}
